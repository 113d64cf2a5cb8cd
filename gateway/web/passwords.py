"""Password hashing with Argon2id, off the event loop (a standard hash costs tens of ms).

`TAXI_PASSWORD_HASHING=fast` trades strength for speed, for test and benchmark
runs that sign up thousands of users; production refuses it. Hashes carry their
own parameters, so a password hashed under either profile verifies under both.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

PROFILES = {
    "standard": PasswordHasher(),
    "fast": PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
}


class Passwords:
    def __init__(self, profile: str = "standard") -> None:
        self._hasher = PROFILES[profile]
        # Verifying against this keeps a log-in for an unknown username as slow as
        # one for a known username, so response times do not reveal who exists.
        self._unknown_user_hash = self._hasher.hash("no such user")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        def verify() -> bool:
            try:
                return self._hasher.verify(password_hash or self._unknown_user_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        matches = await asyncio.to_thread(verify)
        return matches and password_hash is not None
