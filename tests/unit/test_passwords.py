"""Password hashing: both profiles verify what they hash, and each other's hashes."""

from __future__ import annotations

import pytest

from gateway.web.passwords import PROFILES, Passwords


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_a_hash_verifies_its_password_and_nothing_else(profile: str) -> None:
    passwords = Passwords(profile)
    hashed = await passwords.hash("pAssw0rd!")
    assert "pAssw0rd!" not in hashed
    assert await passwords.verify(hashed, "pAssw0rd!")
    assert not await passwords.verify(hashed, "pAssw0rd?")


async def test_hashes_of_either_profile_verify_under_the_other() -> None:
    fast, standard = Passwords("fast"), Passwords("standard")
    assert await standard.verify(await fast.hash("secret-1"), "secret-1")
    assert await fast.verify(await standard.hash("secret-2"), "secret-2")


async def test_an_unknown_user_or_a_broken_hash_never_verifies() -> None:
    passwords = Passwords("fast")
    assert not await passwords.verify(None, "no such user")
    assert not await passwords.verify("not a hash", "anything")
