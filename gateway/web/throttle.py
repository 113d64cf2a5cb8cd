"""Throttling of log-in and sign-up (PROTOCOL D1, "HTTP abuse").

- Log-in: once one user name, or one client address, has had `login_attempts` failed
  log-ins within `window_seconds`, further log-ins for it answer 429, the right
  password included, until the oldest of those failures leaves the window.
- Sign-up: once one client address has made `signup_attempts` sign-ups (successful or
  not: each costs a password hash and maybe a photo's decoding) within the window.

The counts live in Postgres (`http_attempts`), not in each gateway: with several
gateways behind a load balancer, per-process counts would give an attacker the limit
once per gateway, and a restarted gateway would forget them. A log-in's cost is an
Argon2 hash; one small indexed write and read beside it are cheap. An attempt is
recorded before the password is checked, under a per-key advisory lock, so a burst of
concurrent guesses counts exactly; a log-in that succeeds takes its record back.

A client address is the peer's, or what a proxy uvicorn trusts says it is (uvicorn's
`--forwarded-allow-ips`, 127.0.0.1 by default). An IPv6 address counts by its /64
network, the block one subscriber is given. Keys are stored as SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Sequence

from starlette.requests import Request

from gateway.web.errors import ApiError
from shared.db import Database
from shared.wire import ErrorCode


class Throttle:
    def __init__(
        self,
        database: Database,
        *,
        login_attempts: int,
        signup_attempts: int,
        window_seconds: int,
    ) -> None:
        self._database = database
        self._login_attempts = login_attempts
        self._signup_attempts = signup_attempts
        self._window = window_seconds

    async def log_in(self, username: str, request: Request) -> list[int]:
        """Record a log-in attempt for this user name from this client; raise a 429
        ApiError if either has failed too often. Pass the result to `succeeded` when
        the log-in succeeds: otherwise it counts as a failure."""
        try:
            return await self._attempt(
                [f"log-in name {username.lower()}", f"log-in address {client_key(request)}"],
                self._login_attempts,
            )
        except _Throttled as exc:
            raise rate_limited(
                "too many failed log-ins for this user name or from this address", exc.seconds
            ) from None

    async def sign_up(self, request: Request) -> None:
        """Record a sign-up from this client; raise a 429 ApiError past the limit."""
        try:
            await self._attempt([f"sign-up address {client_key(request)}"], self._signup_attempts)
        except _Throttled as exc:
            raise rate_limited("too many sign-ups from this address", exc.seconds) from None

    async def succeeded(self, attempt: Sequence[int]) -> None:
        """A log-in succeeded: it is not a failure."""
        await self._database.pool.execute(
            "DELETE FROM http_attempts WHERE id = ANY($1::bigint[])", list(attempt)
        )

    async def _attempt(self, keys: list[str], limit: int) -> list[int]:
        digests = sorted({hashlib.sha256(key.encode()).hexdigest() for key in keys})
        async with self._database.pool.acquire() as conn, conn.transaction():
            # In one order everywhere, so two attempts never wait on each other's locks.
            for digest in digests:
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", digest)
            counted = await conn.fetch(
                """
                SELECT count(*) AS n,
                       array_agg(extract(epoch FROM at - clock_timestamp())
                                 ORDER BY at) AS ages
                FROM http_attempts
                WHERE key = ANY($1::text[])
                  AND at > clock_timestamp() - make_interval(secs => $2)
                GROUP BY key
                """,
                digests,
                self._window,
            )
            wait = 0.0
            for row in counted:
                if row["n"] >= limit:
                    # Allowed again once all but limit - 1 of them have left the window.
                    oldest_that_must_go = float(row["ages"][row["n"] - limit])
                    wait = max(wait, self._window + oldest_that_must_go)
            if wait > 0:
                raise _Throttled(max(1, math.ceil(wait)))
            rows = await conn.fetch(
                "INSERT INTO http_attempts (key) SELECT unnest($1::text[]) RETURNING id",
                digests,
            )
            await conn.execute(
                """
                DELETE FROM http_attempts
                WHERE at < clock_timestamp() - make_interval(secs => $1)
                """,
                self._window,
            )
        return [row["id"] for row in rows]


class _Throttled(Exception):
    def __init__(self, seconds: int) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def rate_limited(what: str, seconds: int) -> ApiError:
    return ApiError(
        429,
        ErrorCode.RATE_LIMITED,
        f"{what}; try again in {seconds} seconds",
        headers={"Retry-After": str(seconds)},
    )


def client_key(request: Request) -> str:
    """The client's address as throttling counts it: IPv4 as it is, IPv6 by its /64."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
