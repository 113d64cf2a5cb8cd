"""The users table: the SQL the gateway needs to sign users up and authenticate them."""

from __future__ import annotations

import uuid

import asyncpg

from shared.db import Database
from shared.sessions import live_user
from shared.user_names import skeleton
from shared.users import USER_COLUMNS as _COLUMNS
from shared.users import User, user_from_row


class UsernameTaken(Exception):
    pass


class UserRepository:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def create(
        self,
        *,
        username: str,
        password_hash: str,
        first_name: str,
        last_name: str,
        group: str,
        photo: str | None,
    ) -> User:
        try:
            row = await self._database.pool.fetchrow(
                f"""
                INSERT INTO users
                    (username, password_hash, first_name, last_name, user_group, photo,
                     username_skeleton)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                RETURNING {_COLUMNS}
                """,
                username,
                password_hash,
                first_name,
                last_name,
                group,
                photo,
                skeleton(username),
            )
        except asyncpg.UniqueViolationError:
            raise UsernameTaken(username) from None
        assert row is not None
        return user_from_row(row)

    async def active(
        self, user_id: int, issued_at: float | None = None, session: uuid.UUID | None = None
    ) -> User | None:
        """The user, if they exist and are active: whom a valid token may still speak
        for, unless it was issued (`issued_at`, seconds since the epoch) before their
        sessions were ended, or its session family (`session`) has ended
        (`shared.sessions`). One query."""
        return await live_user(self._database.pool, user_id, issued_at, session)

    async def find_with_password_hash(self, username: str) -> tuple[User, str] | None:
        row = await self._database.pool.fetchrow(
            f"SELECT {_COLUMNS}, password_hash FROM users WHERE lower(username) = lower($1)",
            username,
        )
        return (user_from_row(row), row["password_hash"]) if row else None

    async def is_taken(self, username: str) -> bool:
        """Whether a user has this name, in any case, or one that looks like it (the
        same confusable skeleton: `shared.user_names`)."""
        return bool(
            await self._database.pool.fetchval(
                """
                SELECT EXISTS (
                    SELECT 1 FROM users
                    WHERE username_skeleton = $2 OR lower(username) = lower($1)
                )
                """,
                username,
                skeleton(username),
            )
        )
