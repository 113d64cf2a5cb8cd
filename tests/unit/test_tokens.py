"""TokenService: the access/refresh pair and what `verify` refuses, without any I/O."""

from __future__ import annotations

import base64
import time
from typing import Any

import jwt
import orjson
import pytest

from gateway.tokens import TokenError, TokenService
from shared.users import User

SECRET = "unit-test-secret-long-enough-for-hs256-and-for-the-hs512-test-too"
ACCESS_SECONDS = 3600
REFRESH_SECONDS = 86400
ANN = User(
    id=7,
    username="ann@example.com",
    first_name="Ann",
    last_name="Lee",
    group="rider",
    photo="/media/photos/ann.png",
)
CLAIMS = {"id", "username", "first_name", "last_name", "group", "photo"}
CLAIMS |= {"token_type", "exp", "iat", "jti"}


def service(clock: Any = time.time, secret: str = SECRET) -> TokenService:
    return TokenService(secret, ACCESS_SECONDS, REFRESH_SECONDS, clock=clock)


def payload_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, SECRET, algorithms=["HS256"]))


def valid_payload(**changes: Any) -> dict[str, Any]:
    """A payload like the service's own access token, to alter one claim at a time."""
    now = int(time.time())
    payload = {
        **ANN.public(),
        "token_type": "access",
        "exp": now + 600,
        "iat": now,
        "jti": "0123456789abcdef",
    }
    payload.update(changes)
    return payload


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_issue_pair_carries_the_user_and_the_token_claims() -> None:
    now = int(time.time())
    pair = service(clock=lambda: now).issue_pair(ANN)

    assert set(pair) == {"access", "refresh"}
    for token_type, lifetime in (("access", ACCESS_SECONDS), ("refresh", REFRESH_SECONDS)):
        payload = payload_of(pair[token_type])
        assert set(payload) == CLAIMS
        assert payload["token_type"] == token_type
        assert payload["id"] == 7
        assert payload["username"] == "ann@example.com"
        assert payload["first_name"] == "Ann"
        assert payload["last_name"] == "Lee"
        assert payload["group"] == "rider"
        assert payload["photo"] == "/media/photos/ann.png"
        assert payload["iat"] == now
        assert payload["exp"] == now + lifetime
        assert isinstance(payload["jti"], str)
        assert payload["jti"]


def test_the_token_is_hs256() -> None:
    token = service().issue(ANN, "access")

    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_a_user_without_a_photo_has_a_null_photo_claim() -> None:
    driver = User(id=8, username="d@x.com", first_name="", last_name="", group="driver", photo=None)

    payload = payload_of(service().issue(driver, "access"))

    assert payload["photo"] is None
    assert payload["group"] == "driver"


def test_the_activity_flag_is_not_a_claim() -> None:
    payload = payload_of(service().issue(ANN, "access"))

    assert "is_active" not in payload


def test_every_token_has_its_own_jti() -> None:
    tokens = service()
    pair = tokens.issue_pair(ANN)
    again = tokens.issue_pair(ANN)

    jtis = {payload_of(token)["jti"] for token in (*pair.values(), *again.values())}
    assert len(jtis) == 4


def test_verify_accepts_an_access_token_as_access() -> None:
    tokens = service()
    token = tokens.issue(ANN, "access")

    claims = tokens.verify(token, "access")

    assert claims.user_id == 7
    assert claims.username == "ann@example.com"
    assert claims.group == "rider"
    assert claims.token_type == "access"
    assert claims.jti == payload_of(token)["jti"]


def test_verify_accepts_a_refresh_token_as_refresh() -> None:
    tokens = service()

    claims = tokens.verify(tokens.issue(ANN, "refresh"), "refresh")

    assert claims.user_id == 7
    assert claims.token_type == "refresh"


def test_a_refresh_token_is_not_an_access_token() -> None:
    tokens = service()

    with pytest.raises(TokenError, match="send an access token"):
        tokens.verify(tokens.issue(ANN, "refresh"), "access")


def test_an_access_token_is_not_a_refresh_token() -> None:
    tokens = service()

    with pytest.raises(TokenError, match="send a refresh token"):
        tokens.verify(tokens.issue(ANN, "access"), "refresh")


def test_an_unknown_token_type_is_refused() -> None:
    token = jwt.encode(valid_payload(token_type="admin"), SECRET, algorithm="HS256")

    with pytest.raises(TokenError):
        service().verify(token, "access")


@pytest.mark.parametrize(
    ("token_type", "issued_seconds_ago"),
    [("access", 7200), ("refresh", REFRESH_SECONDS + 7200)],
)
def test_an_expired_token_is_refused(token_type: Any, issued_seconds_ago: int) -> None:
    token = service(clock=lambda: time.time() - issued_seconds_ago).issue(ANN, token_type)

    with pytest.raises(TokenError, match="expired"):
        service().verify(token, token_type)


def test_a_refresh_token_outlives_an_access_token() -> None:
    two_hours_ago = service(clock=lambda: time.time() - 7200)

    claims = service().verify(two_hours_ago.issue(ANN, "refresh"), "refresh")

    assert claims.user_id == 7


def test_a_token_issued_in_the_future_is_refused() -> None:
    # PyJWT refuses an `iat` later than now (ImmatureSignatureError).
    in_two_hours = service(clock=lambda: time.time() + 7200)

    with pytest.raises(TokenError, match="not valid yet"):
        service().verify(in_two_hours.issue(ANN, "access"), "access")


def test_a_token_not_valid_before_a_later_time_is_refused() -> None:
    token = jwt.encode(valid_payload(nbf=int(time.time()) + 3600), SECRET, algorithm="HS256")

    with pytest.raises(TokenError, match="not valid yet"):
        service().verify(token, "access")


def test_a_token_signed_with_another_secret_is_refused() -> None:
    forged = service(secret="another-secret-that-is-long-enough-to-sign").issue(ANN, "access")

    with pytest.raises(TokenError, match="invalid"):
        service().verify(forged, "access")


def test_a_token_whose_payload_was_changed_is_refused() -> None:
    header, _, signature = service().issue(ANN, "access").split(".")
    promoted = b64(orjson.dumps(valid_payload(id=1, group="driver")))

    with pytest.raises(TokenError, match="invalid"):
        service().verify(f"{header}.{promoted}.{signature}", "access")


def test_an_unsigned_alg_none_token_is_refused() -> None:
    unsigned = jwt.encode(valid_payload(), None, algorithm="none")

    with pytest.raises(TokenError, match="invalid"):
        service().verify(unsigned, "access")


def test_a_handmade_alg_none_token_is_refused() -> None:
    for alg in ("none", "None", "NONE"):
        header = b64(orjson.dumps({"alg": alg, "typ": "JWT"}))
        payload = b64(orjson.dumps(valid_payload()))

        with pytest.raises(TokenError, match="invalid"):
            service().verify(f"{header}.{payload}.", "access")


def test_an_hs512_token_with_the_same_secret_is_refused() -> None:
    """The algorithm is pinned to HS256: the header's `alg` does not choose it."""
    token = jwt.encode(valid_payload(), SECRET, algorithm="HS512")
    assert jwt.decode(token, SECRET, algorithms=["HS512"])["id"] == 7

    with pytest.raises(TokenError, match="invalid"):
        service().verify(token, "access")


@pytest.mark.parametrize("claim", ["exp", "iat", "jti", "token_type", "id"])
def test_a_token_missing_a_required_claim_is_refused(claim: str) -> None:
    payload = valid_payload()
    del payload[claim]
    token = jwt.encode(payload, SECRET, algorithm="HS256")

    with pytest.raises(TokenError, match=claim):
        service().verify(token, "access")


@pytest.mark.parametrize("user_id", ["7", 7.0, True, [7], {"id": 7}])
def test_a_token_whose_id_is_not_an_integer_is_refused(user_id: Any) -> None:
    token = jwt.encode(valid_payload(id=user_id), SECRET, algorithm="HS256")

    with pytest.raises(TokenError, match="id"):
        service().verify(token, "access")


@pytest.mark.parametrize(
    "garbage", ["", "not-a-token", "abc.def.ghi", "abc.def.ghi.jkl", "\U0001f695.\U0001f695.x"]
)
def test_garbage_is_refused_without_echoing_it(garbage: str) -> None:
    with pytest.raises(TokenError, match="invalid") as refused:
        service().verify(garbage, "access")

    assert not garbage or garbage not in str(refused.value)
