"""reencode: a photo is stored as a new image of its pixels alone, at most 1024 on a
side, and one that declares more pixels than allowed is refused before decoding."""

from __future__ import annotations

import io

import pytest
from PIL import Image, PngImagePlugin

from gateway.web.media import MAX_SIDE, PhotoError, reencode

GPS_IFD = 0x8825
ORIENTATION = 0x0112
MAX_PIXELS = 24_000_000


def encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def jpeg_with_gps(size: tuple[int, int] = (64, 48), orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x010F] = "Camera maker"
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (52.0, 22.0, 12.0), 3: "E", 4: (4.0, 53.0, 2.0)})
    return encoded(Image.new("RGB", size, (200, 30, 30)), "JPEG", exif=exif.tobytes())


def test_no_exif_or_gps_survives() -> None:
    content = jpeg_with_gps()
    assert Image.open(io.BytesIO(content)).getexif().get_ifd(GPS_IFD)  # the test's premise

    photo = reencode(content, MAX_PIXELS)

    stored = Image.open(io.BytesIO(photo.content))
    assert photo.extension == ".jpg" and stored.format == "JPEG"
    assert not stored.getexif()
    assert b"Exif" not in photo.content
    assert "exif" not in stored.info and "icc_profile" not in stored.info


def test_the_photo_is_turned_upright_as_its_exif_said() -> None:
    photo = reencode(jpeg_with_gps((60, 20), orientation=6), MAX_PIXELS)  # rotated 90 degrees

    assert Image.open(io.BytesIO(photo.content)).size == (20, 60)


def test_png_text_chunks_do_not_survive_and_transparency_does() -> None:
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "home: 52.37N 4.89E")
    content = encoded(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG", pnginfo=text)

    photo = reencode(content, MAX_PIXELS)

    stored = Image.open(io.BytesIO(photo.content))
    assert (photo.extension, stored.format, stored.mode) == (".png", "PNG", "RGBA")
    assert b"52.37N" not in photo.content
    assert "Comment" not in stored.info


@pytest.mark.parametrize(
    ("size", "expected"), [((3000, 1500), (1024, 512)), ((300, 2048), (150, 1024))]
)
def test_a_large_photo_is_shrunk_to_1024_on_its_longer_side(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    photo = reencode(encoded(Image.new("RGB", size, (10, 120, 200)), "PNG"), MAX_PIXELS)

    assert Image.open(io.BytesIO(photo.content)).size == expected
    assert max(expected) == MAX_SIDE


def test_a_small_photo_keeps_its_size() -> None:
    photo = reencode(encoded(Image.new("RGB", (40, 30)), "WEBP"), MAX_PIXELS)

    stored = Image.open(io.BytesIO(photo.content))
    assert (photo.extension, stored.format, stored.size) == (".webp", "WEBP", (40, 30))


def test_a_gif_is_stored_as_a_png_of_its_first_frame() -> None:
    frames = [Image.new("P", (16, 16), colour) for colour in (1, 2)]
    content = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])

    photo = reencode(content, MAX_PIXELS)

    stored = Image.open(io.BytesIO(photo.content))
    assert (photo.extension, stored.format, getattr(stored, "n_frames", 1)) == (".png", "PNG", 1)


def test_a_small_file_declaring_too_many_pixels_is_refused_naming_the_limit() -> None:
    # 40 megapixels of one colour: a few dozen KB on the wire.
    bomb = encoded(Image.new("1", (8000, 5000)), "PNG", optimize=True)
    assert len(bomb) < 100_000

    with pytest.raises(PhotoError) as refused:
        reencode(bomb, MAX_PIXELS)

    assert "24,000,000 pixels" in str(refused.value)
    assert "TAXI_PHOTO_MAX_PIXELS" in str(refused.value)


def test_pixels_at_the_limit_are_accepted() -> None:
    photo = reencode(encoded(Image.new("RGB", (100, 50)), "PNG"), max_pixels=5000)

    assert Image.open(io.BytesIO(photo.content)).size == (100, 50)


@pytest.mark.parametrize(
    "content",
    [
        b"<html><script>alert(1)</script></html>",
        b"\x89PNG\r\n\x1a\n but not really",
        encoded(Image.new("RGB", (64, 64)), "PNG")[:60],  # cut short
        encoded(Image.new("RGB", (8, 8)), "BMP"),  # an image, but not a photo format
    ],
)
def test_what_is_not_a_whole_photo_is_refused(content: bytes) -> None:
    with pytest.raises(PhotoError, match="JPEG, PNG, GIF or WebP"):
        reencode(content, MAX_PIXELS)
