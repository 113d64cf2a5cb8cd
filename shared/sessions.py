"""Whether a token's session is still live: the one check the WebSocket handshake, the
HTTP API, a refresh and the dispatcher (for every command) make.

A token speaks for its user while the user exists and is active, and:
- it was not issued before the user's sessions all ended (`users.sessions_revoked_at`:
  a deactivation or a password change), and
- its session family (the `sid` claim; a command carries it from the socket's token)
  has not ended (a row of `session_ends`: a log-out, or a refresh token used twice).
A token from before tokens carried `sid` cannot say which family it belongs to, so it
counts as belonging to every session of its user that ended after it was issued: any
log-out or reuse of its user refuses it. Such tokens are at most one access-token
lifetime old, so the rule matters only just after an upgrade.

It is one query, the same one that loads the user: no extra round trip (the dispatcher
runs it in the statement that records the command: `dispatcher.repository.admit`).
"""

from __future__ import annotations

import uuid

import asyncpg
from asyncpg.pool import Pool

from shared.db import Connection
from shared.users import USER_COLUMNS, User, user_from_row

# Parameters: $1 the user's id, $2 when the token was issued, $3 its session family.
LIVE_USER = f"""
    SELECT {USER_COLUMNS} FROM users u
    WHERE u.id = $1 AND u.is_active
      AND ($2::float8 IS NULL OR u.sessions_revoked_at IS NULL
           OR u.sessions_revoked_at <= to_timestamp($2::float8))
      AND NOT EXISTS (
          SELECT 1 FROM session_ends e
          WHERE ($3::uuid IS NOT NULL AND e.family = $3::uuid)
             OR ($3::uuid IS NULL AND $2::float8 IS NOT NULL
                 AND e.user_id = $1 AND e.ended_at > to_timestamp($2::float8)))
"""


async def live_user(
    executor: Connection | Pool,
    user_id: int,
    issued_at: float | None,
    session: uuid.UUID | None,
    *,
    lock: bool = False,
) -> User | None:
    """The user a token (issued at `issued_at`, seconds since the epoch, in session
    family `session`) may still speak for, or None. With `lock`, the user's row is held
    (FOR SHARE) until the caller's transaction ends: a transaction that is ending the
    user's sessions is waited for, and one that starts later waits for the caller."""
    query = f"{LIVE_USER} FOR SHARE OF u" if lock else LIVE_USER
    row: asyncpg.Record | None = await executor.fetchrow(query, user_id, issued_at, session)
    return user_from_row(row) if row else None


def session_id(raw: object) -> uuid.UUID | None:
    """A token's `sid` claim as the family it names; None if it has none (older tokens)."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ValueError("sid is not a session id")
    return uuid.UUID(hex=raw)
