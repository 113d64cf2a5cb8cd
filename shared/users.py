"""Users as the rest of the system sees them (never with their password hash)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Group = Literal["rider", "driver"]
GROUPS: tuple[Group, ...] = ("rider", "driver")


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    first_name: str
    last_name: str
    group: str
    photo: str | None
    is_active: bool = True

    def public(self) -> dict[str, Any]:
        """The course's user object, as it appears in tokens and trip payloads."""
        return {
            "id": self.id,
            "username": self.username,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "group": self.group,
            "photo": self.photo,
        }

    @property
    def is_driver(self) -> bool:
        return self.group == "driver"
