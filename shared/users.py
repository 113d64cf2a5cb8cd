"""Users as the rest of the system sees them (never with their password hash)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

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


# The columns `user_from_row` reads, for SELECTs of the users table.
USER_COLUMNS = "id, username, first_name, last_name, user_group, photo, is_active"


def user_from_row(row: asyncpg.Record, prefix: str = "") -> User:
    return User(
        id=row[f"{prefix}id"],
        username=row[f"{prefix}username"],
        first_name=row[f"{prefix}first_name"],
        last_name=row[f"{prefix}last_name"],
        group=row[f"{prefix}user_group"],
        photo=row[f"{prefix}photo"],
        is_active=row[f"{prefix}is_active"],
    )
