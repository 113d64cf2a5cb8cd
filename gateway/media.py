"""User photos: stored under the media directory, served at /media/."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from starlette.datastructures import UploadFile

MEDIA_URL = "/media"
PHOTO_TYPES = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
}


class PhotoError(ValueError):
    pass


class PhotoStore:
    def __init__(self, media_dir: str, max_bytes: int) -> None:
        self.root = Path(media_dir)
        self.max_bytes = max_bytes

    async def save(self, upload: UploadFile) -> str:
        """Store an uploaded photo; return its URL path. Raise PhotoError if unfit."""
        extension = PHOTO_TYPES.get(upload.content_type or "")
        if extension is None:
            raise PhotoError(f"Upload an image ({', '.join(PHOTO_TYPES)}).")
        content = await upload.read(self.max_bytes + 1)
        if len(content) > self.max_bytes:
            raise PhotoError(f"At most {self.max_bytes} bytes.")
        if not content:
            raise PhotoError("The file is empty.")
        name = f"photos/{uuid.uuid4().hex}{extension}"
        target = self.root / name
        await asyncio.to_thread(_write, target, content)
        return f"{MEDIA_URL}/{name}"

    async def delete(self, url: str) -> None:
        """Remove a stored photo, given the URL path `save` returned."""
        name = url.removeprefix(f"{MEDIA_URL}/")
        await asyncio.to_thread(_remove, self.root / name)


def _remove(target: Path) -> None:
    target.unlink(missing_ok=True)


def _write(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
