"""User photos: checked by their content, re-encoded, stored under the media
directory, served at /media/ (with `nosniff`, like every answer: `gateway.web.http_guards`).

A photo is what Pillow decodes it to be, whatever type its sender declared: HTML
labelled image/png is refused. What is stored is never the uploaded file itself but
a new image made from its pixels alone: no EXIF (GPS positions, camera serials), no
XMP, no comments or text chunks survive, at most `MAX_SIDE` pixels on its longer
side, turned upright as its EXIF orientation said. A JPEG or WebP photo is stored as
a JPEG or WebP, a PNG as a PNG, a GIF as a PNG of its first frame; the file's name
and the type it is served with always match its bytes.

The pixel count is read from the image's header, before anything is decoded: a
37 KB PNG may declare a 40-megapixel canvas, which decoded takes 160 MB. More than
`max_pixels` is refused. Decoding runs in threads, at most `DECODERS` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError
from starlette.datastructures import UploadFile

MEDIA_URL = "/media"
# Pillow's format names, and the format (with its extension) each is stored as.
PHOTO_FORMATS = {
    "JPEG": ("JPEG", ".jpg"),
    "PNG": ("PNG", ".png"),
    "GIF": ("PNG", ".png"),
    "WEBP": ("WEBP", ".webp"),
}
# The longer side of a stored photo, at most: an avatar, not a print.
MAX_SIDE = 1024
QUALITY = 85
# Photos decoded at once: each may take up to max_pixels * 4 bytes while it is.
DECODERS = max(1, min(4, os.cpu_count() or 1))


class PhotoError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Photo:
    """A photo ready to store: its re-encoded bytes and their extension."""

    content: bytes
    extension: str


class PhotoStore:
    def __init__(self, media_dir: str, max_bytes: int, max_pixels: int) -> None:
        self.root = Path(media_dir)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._decoders = asyncio.Semaphore(DECODERS)

    async def prepare(self, upload: UploadFile) -> Photo:
        """The upload, checked and re-encoded; PhotoError if it is unfit."""
        content = await upload.read(self.max_bytes + 1)
        if len(content) > self.max_bytes:
            raise PhotoError(f"At most {self.max_bytes} bytes.")
        if not content:
            raise PhotoError("The file is empty.")
        async with self._decoders:
            return await asyncio.to_thread(reencode, content, self.max_pixels)

    async def store(self, photo: Photo) -> str:
        """Store a prepared photo; return its URL path."""
        name = f"photos/{uuid.uuid4().hex}{photo.extension}"
        await asyncio.to_thread(_write, self.root / name, photo.content)
        return f"{MEDIA_URL}/{name}"

    async def delete(self, url: str) -> None:
        """Remove a stored photo, given the URL path `store` returned."""
        name = url.removeprefix(f"{MEDIA_URL}/")
        await asyncio.to_thread(_remove, self.root / name)


def too_many_pixels(max_pixels: int) -> PhotoError:
    return PhotoError(
        f"A photo may have at most {max_pixels:,} pixels (TAXI_PHOTO_MAX_PIXELS); "
        "this one has more. Send a smaller one."
    )


NOT_A_PHOTO = "Upload a photo: a JPEG, PNG, GIF or WebP image. This file is none."


def reencode(content: bytes, max_pixels: int) -> Photo:
    """A new image from `content`'s pixels only (its first frame, upright, at most
    MAX_SIDE on a side), encoded afresh; PhotoError unless `content` is a whole JPEG,
    PNG, GIF or WebP image of at most `max_pixels` pixels."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            # Image.open reads the header only: the size is known, nothing decoded yet.
            if image.format not in PHOTO_FORMATS:
                raise PhotoError(NOT_A_PHOTO)
            if image.width * image.height > max_pixels:
                raise too_many_pixels(max_pixels)
            stored_as, extension = PHOTO_FORMATS[image.format]
            # A JPEG can be decoded at 1/2, 1/4 or 1/8 scale: never more than needed.
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))
            image.load()  # a truncated or corrupt image fails here
            upright = ImageOps.exif_transpose(image) or image
            pixels = _in_srgb(upright)
    except Image.DecompressionBombError:
        raise too_many_pixels(max_pixels) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, PhotoError):
            raise
        raise PhotoError(NOT_A_PHOTO) from None
    pixels.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    has_alpha = pixels.mode == "RGBA" and stored_as != "JPEG"
    mode = "RGBA" if has_alpha else "RGB"
    pixels = pixels.convert(mode)
    # Made from the raw pixels: nothing of the upload's metadata (`info`) comes along.
    clean = Image.frombytes(mode, pixels.size, pixels.tobytes())
    out = io.BytesIO()
    if stored_as == "PNG":
        clean.save(out, format="PNG", optimize=True)
    else:
        clean.save(out, format=stored_as, quality=QUALITY)
    return Photo(out.getvalue(), extension)


def _in_srgb(image: Image.Image) -> Image.Image:
    """The image as RGB or RGBA pixels, converted to sRGB if it carried a colour
    profile (so that dropping the profile does not change its colours)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    converted = image.convert("RGBA" if has_alpha else "RGB")
    profile = image.info.get("icc_profile")
    if profile:
        # An unreadable profile: the pixels as they are.
        with contextlib.suppress(ImageCms.PyCMSError, OSError, ValueError):
            converted = (
                ImageCms.profileToProfile(
                    converted,
                    ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                    ImageCms.createProfile("sRGB"),
                    outputMode=converted.mode,
                )
                or converted
            )
    return converted


def _remove(target: Path) -> None:
    target.unlink(missing_ok=True)


def _write(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
