"""User photos: checked by their content, stored under the media directory, served
at /media/ (with `nosniff`, like every answer: `gateway.http_guards`).

A photo is what Pillow decodes it to be, whatever type its sender declared: HTML
labelled image/png is refused, and a JPEG labelled PNG is stored as the JPEG it is,
so the file's name, and the type it is served with, always match its bytes.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile

MEDIA_URL = "/media"
# Pillow's format names, and the extension each is stored (and served) with.
PHOTO_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp"}
# Larger images are refused before decoding: a small file can declare a huge canvas.
MAX_PIXELS = 40_000_000


class PhotoError(ValueError):
    pass


class PhotoStore:
    def __init__(self, media_dir: str, max_bytes: int) -> None:
        self.root = Path(media_dir)
        self.max_bytes = max_bytes

    async def save(self, upload: UploadFile) -> str:
        """Store an uploaded photo; return its URL path. Raise PhotoError if unfit."""
        content = await upload.read(self.max_bytes + 1)
        if len(content) > self.max_bytes:
            raise PhotoError(f"At most {self.max_bytes} bytes.")
        if not content:
            raise PhotoError("The file is empty.")
        extension = await asyncio.to_thread(photo_extension, content)
        name = f"photos/{uuid.uuid4().hex}{extension}"
        target = self.root / name
        await asyncio.to_thread(_write, target, content)
        return f"{MEDIA_URL}/{name}"

    async def delete(self, url: str) -> None:
        """Remove a stored photo, given the URL path `save` returned."""
        name = url.removeprefix(f"{MEDIA_URL}/")
        await asyncio.to_thread(_remove, self.root / name)


def photo_extension(content: bytes) -> str:
    """The extension of the image `content` holds; PhotoError unless it is a whole
    JPEG, PNG, GIF or WebP image."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            image_format, pixels = image.format, image.width * image.height
            if image_format in PHOTO_FORMATS and pixels <= MAX_PIXELS:
                # verify() reads the whole file: a truncated or corrupt image fails here.
                image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        image_format, pixels = None, 0
    if image_format not in PHOTO_FORMATS:
        raise PhotoError("Upload a photo: a JPEG, PNG, GIF or WebP image. This file is none.")
    if pixels > MAX_PIXELS:
        raise PhotoError(f"A photo may have at most {MAX_PIXELS} pixels.")
    return PHOTO_FORMATS[image_format]


def _remove(target: Path) -> None:
    target.unlink(missing_ok=True)


def _write(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
