"""Sessions that can end.

A log-in starts a family of refresh tokens. Each refresh marks the token it used as
spent and gives the next one of the family with the new access token; using a spent
token again ends the whole family, since a stolen token and its owner cannot both
go on. A log-out ends the caller's family. Deactivating a user or changing their
password ends every session they have: a trigger stamps `users.sessions_revoked_at`,
tokens issued before it are refused from then on (`UserRepository.active`), and
their open sockets are closed (`gateway.revocations`). An access token is not
looked up here: it stays valid until it expires, unless the user's sessions end.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from gateway.errors import token_not_valid
from gateway.tokens import TokenClaims, TokenError, TokenService
from gateway.users import UserRepository
from shared.db import Database
from shared.users import User

ENDED = "this session has ended (logged out, or its refresh token was used twice); log in again"
REUSED = "this refresh token was used before, so the session is ended for safety; log in again"
INACTIVE = "this account does not exist or is no longer active"


class Sessions:
    def __init__(self, database: Database, tokens: TokenService, users: UserRepository) -> None:
        self._database = database
        self._tokens = tokens
        self._users = users

    async def log_in(self, user: User) -> dict[str, str]:
        """A new session: its first refresh token and an access token."""
        jti = uuid.uuid4()
        await self._database.pool.execute(
            "INSERT INTO refresh_tokens (jti, family, user_id, expires) VALUES ($1, $2, $3, $4)",
            jti,
            uuid.uuid4(),
            user.id,
            self._expiry(),
        )
        return self._tokens.issue_pair(user, jti.hex)

    async def refresh(self, token: str) -> dict[str, str]:
        """The session's next refresh token and a new access token."""
        claims = self._verify(token)
        user = await self._users.active(claims.user_id, claims.issued_at)
        if user is None:
            raise token_not_valid(INACTIVE)
        next_jti = uuid.uuid4()
        async with self._database.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT family, used FROM refresh_tokens WHERE jti = $1 FOR UPDATE",
                _jti(claims.jti),
            )
            if row is None:
                raise token_not_valid(ENDED)
            if row["used"]:
                await conn.execute("DELETE FROM refresh_tokens WHERE family = $1", row["family"])
                reused = True
            else:
                reused = False
                await conn.execute(
                    "UPDATE refresh_tokens SET used = true WHERE jti = $1", _jti(claims.jti)
                )
                await conn.execute(
                    """
                    INSERT INTO refresh_tokens (jti, family, user_id, expires)
                    VALUES ($1, $2, $3, $4)
                    """,
                    next_jti,
                    row["family"],
                    user.id,
                    self._expiry(),
                )
        # Raised once the family's end is committed, not rolled back with the error.
        if reused:
            raise token_not_valid(REUSED)
        return self._tokens.issue_pair(user, next_jti.hex)

    async def log_out(self, token: str) -> None:
        """End the session the refresh token belongs to (again is fine: it is ended)."""
        claims = self._verify(token)
        await self._database.pool.execute(
            """
            DELETE FROM refresh_tokens
            WHERE family = (SELECT family FROM refresh_tokens WHERE jti = $1)
            """,
            _jti(claims.jti),
        )

    def _verify(self, token: str) -> TokenClaims:
        try:
            return self._tokens.verify(token, "refresh")
        except TokenError as exc:
            raise token_not_valid(str(exc)) from None

    def _expiry(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._tokens.lifetime("refresh"))


def _jti(raw: str) -> uuid.UUID | None:
    """The token's id as stored; a refresh token from before sessions had ids is none."""
    try:
        return uuid.UUID(hex=raw)
    except ValueError:
        return None
