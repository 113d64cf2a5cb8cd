"""Sessions that can end.

A log-in starts a family of refresh tokens. Each refresh marks the token it used as
spent and gives the next one of the family with the new access token; using a spent
token again ends the whole family, since a stolen token and its owner cannot both
go on. A log-out ends the caller's family. Deactivating a user or changing their
password ends every session they have: a trigger stamps `users.sessions_revoked_at`.

Every token names its family (`sid`). An ended family is a row of `session_ends`
(the same table the trigger writes the user-wide ends to): from its commit on, every
token of the family is refused (`shared.sessions.live_user`, in the lookup of the
user that the handshake, the HTTP API and the dispatcher make anyway), and its open
sockets are closed (`gateway.live.revocations`).

A refresh holds the user's row (FOR SHARE) from its check until its new tokens are
issued and committed. A transaction ending the user's sessions, however long it
takes, is waited for and then refuses the refresh; one that begins after it stamps a
later moment than the tokens it issued. So no token is issued from a session while
the transaction ending it is still open, to stay valid after it commits.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from gateway.tokens import TokenClaims, TokenError, TokenService
from gateway.users import UserRepository
from gateway.web.errors import token_not_valid
from shared.db import Connection, Database
from shared.sessions import live_user
from shared.users import User

ENDED = "this session has ended (logged out, or its refresh token was used twice); log in again"
REUSED = "this refresh token was used before, so the session is ended for safety; log in again"
INACTIVE = "this account does not exist or is no longer active"

# Ending a family: its refresh tokens go, and the end is recorded for its access
# tokens (and the sockets opened with them).
_END_FAMILY = """
    WITH ended AS (DELETE FROM refresh_tokens WHERE family = $1 RETURNING user_id, family)
    INSERT INTO session_ends (user_id, family) SELECT DISTINCT user_id, family FROM ended
"""


class Sessions:
    def __init__(self, database: Database, tokens: TokenService, users: UserRepository) -> None:
        self._database = database
        self._tokens = tokens
        self._users = users

    async def log_in(self, user: User) -> dict[str, str]:
        """A new session: its first refresh token and an access token."""
        jti = uuid.uuid4()
        family = uuid.uuid4()
        await self._database.pool.execute(
            "INSERT INTO refresh_tokens (jti, family, user_id, expires) VALUES ($1, $2, $3, $4)",
            jti,
            family,
            user.id,
            self._expiry(),
        )
        return self._tokens.issue_pair(user, jti.hex, family)

    async def refresh(self, token: str) -> dict[str, str]:
        """The session's next refresh token and a new access token."""
        claims = self._verify(token)
        next_jti = uuid.uuid4()
        async with self._database.pool.acquire() as conn, conn.transaction():
            # Held until the commit: see the module's docstring.
            user = await live_user(
                conn, claims.user_id, claims.issued_at, claims.session, lock=True
            )
            if user is None:
                raise token_not_valid(await _why_refused(conn, claims))
            row = await conn.fetchrow(
                "SELECT family, used FROM refresh_tokens WHERE jti = $1 FOR UPDATE",
                _jti(claims.jti),
            )
            if row is None:
                raise token_not_valid(ENDED)
            if row["used"]:
                await conn.execute(_END_FAMILY, row["family"])
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
                tokens = self._tokens.issue_pair(user, next_jti.hex, row["family"])
        # Raised once the family's end is committed, not rolled back with the error.
        if reused:
            raise token_not_valid(REUSED)
        return tokens

    async def log_out(self, token: str) -> None:
        """End the session the refresh token belongs to (again is fine: it is ended)."""
        claims = self._verify(token)
        async with self._database.pool.acquire() as conn, conn.transaction():
            family = await conn.fetchval(
                "SELECT family FROM refresh_tokens WHERE jti = $1", _jti(claims.jti)
            )
            if family is not None:
                await conn.execute(_END_FAMILY, family)

    def _verify(self, token: str) -> TokenClaims:
        try:
            return self._tokens.verify(token, "refresh")
        except TokenError as exc:
            raise token_not_valid(str(exc)) from None

    def _expiry(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._tokens.lifetime("refresh"))


async def _why_refused(conn: Connection, claims: TokenClaims) -> str:
    """Why `live_user` refused a refresh token whose user may still be active."""
    still_active = await conn.fetchval(
        """
        SELECT true FROM users WHERE id = $1 AND is_active
          AND (sessions_revoked_at IS NULL OR sessions_revoked_at <= to_timestamp($2::float8))
        """,
        claims.user_id,
        claims.issued_at,
    )
    return ENDED if still_active else INACTIVE


def _jti(raw: str) -> uuid.UUID | None:
    """The token's id as stored; a refresh token from before sessions had ids is none."""
    try:
        return uuid.UUID(hex=raw)
    except ValueError:
        return None
