"""JSON Web Tokens: the course's access/refresh pair, HS256 with the algorithm pinned.

Access and refresh tokens carry a `token_type` claim and are never accepted in
each other's place. Every token must carry `exp`, `iat` and `jti`. Tokens issued
within a session also carry its family as `sid` (`shared.sessions`): when the
family ends, every token of it is refused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from shared.sessions import session_id
from shared.users import User

ALGORITHM = "HS256"
TokenType = Literal["access", "refresh"]
REQUIRED_CLAIMS = ["exp", "iat", "jti", "token_type", "id"]


class TokenError(Exception):
    """The token cannot be trusted; the message says why, without echoing it."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: int
    username: str
    group: str
    token_type: str
    jti: str
    # When it was issued, in seconds since the epoch (to the microsecond): a token
    # issued before the user's sessions were ended is refused.
    issued_at: float = 0.0
    # The session family it was issued from (`sid`); None for a token from before
    # tokens named theirs.
    session: uuid.UUID | None = None


class TokenService:
    def __init__(
        self,
        secret: str,
        access_seconds: int,
        refresh_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._lifetimes: dict[TokenType, int] = {
            "access": access_seconds,
            "refresh": refresh_seconds,
        }
        self._clock = clock

    def issue_pair(
        self, user: User, refresh_jti: str | None = None, session: uuid.UUID | None = None
    ) -> dict[str, str]:
        return {
            "refresh": self.issue(user, "refresh", refresh_jti, session),
            "access": self.issue(user, "access", session=session),
        }

    def lifetime(self, token_type: TokenType) -> int:
        return self._lifetimes[token_type]

    def issue(
        self,
        user: User,
        token_type: TokenType,
        jti: str | None = None,
        session: uuid.UUID | None = None,
    ) -> str:
        now = self._clock()
        payload: dict[str, Any] = {
            "token_type": token_type,
            "exp": int(now) + self._lifetimes[token_type],
            # A NumericDate may have a fraction: a token issued in the same second as,
            # but after, a revocation of the user's sessions stays valid.
            "iat": round(now, 6),
            "jti": jti or uuid.uuid4().hex,
            **user.public(),
        }
        if session is not None:
            payload["sid"] = session.hex
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str, expected_type: TokenType) -> TokenClaims:
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("this token has expired; log in again") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("this token is not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"this token is invalid: it lacks the claim {exc.claim!r}") from None
        except jwt.InvalidAlgorithmError:
            raise TokenError(
                "this token is invalid: it is signed in a way this service does not accept"
            ) from None
        except jwt.InvalidSignatureError:
            raise TokenError(
                "this token is invalid: it was not issued here, or it was altered"
            ) from None
        except jwt.InvalidTokenError:
            raise TokenError("this token is invalid: it is not one this service issued") from None
        if payload["token_type"] != expected_type:
            raise TokenError(
                f"this is {_a(str(payload['token_type']))} token; send {_a(expected_type)} token"
            )
        user_id = payload["id"]
        if not isinstance(user_id, int) or isinstance(user_id, bool):
            raise TokenError("this token is invalid: its 'id' names no user")
        try:
            session = session_id(payload.get("sid"))
        except ValueError:
            raise TokenError("this token is invalid: its 'sid' names no session") from None
        return TokenClaims(
            user_id=user_id,
            username=str(payload.get("username", "")),
            group=str(payload.get("group", "")),
            token_type=payload["token_type"],
            jti=str(payload["jti"]),
            issued_at=float(payload["iat"]),
            session=session,
        )


def _a(token_type: str) -> str:
    """The token type with its article: an access token, a refresh token."""
    return f"an {token_type}" if token_type[:1] in "aeiou" else f"a {token_type}"
