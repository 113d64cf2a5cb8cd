"""Session ids without I/O: tokens name their session family (`sid`), commands carry the
session of the token they were sent with, and which sockets an ended session closes
(`gateway.live.revocations.ends`). The database side is tested end to end
(tests/e2e/test_sessions_end_everywhere.py)."""

from __future__ import annotations

import time
import uuid
from typing import Any, cast

import jwt
import orjson
import pytest

from gateway.live.outgoing import Outgoing
from gateway.live.revocations import ends
from gateway.tokens import TokenError, TokenService
from shared.commands import CREATE_TRIP, InvalidCommand, decode_command, new_command
from shared.users import User

SECRET = "unit-test-secret-long-enough-for-hs256-and-for-the-hs512-test-too"
ANN = User(
    id=7, username="ann@example.com", first_name="Ann", last_name="Lee", group="rider", photo=None
)
FAMILY = uuid.uuid4()
ADDRESSES = {"pick_up_address": "A", "drop_off_address": "B"}


def service() -> TokenService:
    return TokenService(SECRET, 3600, 86400)


def test_both_tokens_of_a_pair_name_their_session() -> None:
    tokens = service()
    pair = tokens.issue_pair(ANN, uuid.uuid4().hex, FAMILY)

    assert tokens.verify(pair["access"], "access").session == FAMILY
    assert tokens.verify(pair["refresh"], "refresh").session == FAMILY


def test_a_token_without_a_session_is_still_valid_and_names_none() -> None:
    tokens = service()

    assert tokens.verify(tokens.issue(ANN, "access"), "access").session is None


@pytest.mark.parametrize("sid", ["not-a-uuid", 42, ["x"]])
def test_a_token_whose_sid_names_no_session_is_refused(sid: Any) -> None:
    now = time.time()
    payload = {
        **ANN.public(),
        "token_type": "access",
        "exp": int(now) + 60,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "sid": sid,
    }

    with pytest.raises(TokenError, match="'sid' names no session"):
        service().verify(jwt.encode(payload, SECRET, algorithm="HS256"), "access")


def test_a_command_carries_its_session_through_the_broker() -> None:
    command = new_command(CREATE_TRIP, ANN.id, "rider", ADDRESSES, issued_at=1234.5, session=FAMILY)

    decoded = decode_command(command.encode())

    assert decoded == command
    assert (decoded.issued_at, decoded.session) == (1234.5, FAMILY)


def test_a_command_from_a_gateway_that_names_no_session_decodes_without_one() -> None:
    body = orjson.loads(new_command(CREATE_TRIP, ANN.id, "rider", ADDRESSES).encode())
    del body["issued_at"], body["session"]

    decoded = decode_command(orjson.dumps(body))

    assert (decoded.issued_at, decoded.session) == (None, None)


@pytest.mark.parametrize(
    "changes", [{"session": "nope"}, {"session": 5}, {"issued_at": "soon"}, {"issued_at": True}]
)
def test_a_command_with_a_malformed_session_is_invalid(changes: dict[str, Any]) -> None:
    body = {**orjson.loads(new_command(CREATE_TRIP, ANN.id, "rider", ADDRESSES).encode())}
    body.update(changes)

    with pytest.raises(InvalidCommand):
        decode_command(orjson.dumps(body))


async def _history(after: int, upto: int | None = None) -> list[Any]:
    return []


def socket(issued_at: float, session: uuid.UUID | None) -> Outgoing:
    async def send(text: str) -> None:
        pass

    return Outgoing(
        ANN.id,
        send,
        cast(Any, _history),
        sent_up_to=0,
        slow_seconds=10,
        issued_at=issued_at,
        session=session,
    )


def test_an_ended_family_closes_the_sockets_of_that_family_only() -> None:
    assert ends(socket(100.0, FAMILY), FAMILY, ended_at=50.0)
    assert not ends(socket(100.0, uuid.uuid4()), FAMILY, ended_at=200.0)


def test_an_end_of_all_sessions_closes_the_sockets_opened_with_older_tokens() -> None:
    assert ends(socket(100.0, FAMILY), None, ended_at=200.0)
    assert not ends(socket(300.0, FAMILY), None, ended_at=200.0)


def test_a_socket_of_a_token_without_a_session_closes_for_any_later_end_of_its_user() -> None:
    assert ends(socket(100.0, None), FAMILY, ended_at=200.0)
    assert not ends(socket(300.0, None), FAMILY, ended_at=200.0)
