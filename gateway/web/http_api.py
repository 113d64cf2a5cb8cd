"""The HTTP API of PROTOCOL.md part A: sign up, log in, refresh a token.

Handlers only translate: read the body, validate, call the repository or the
token service, and answer with the course's JSON shapes and status codes.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.responses import OrjsonResponse
from gateway.users import UsernameTaken, UserRepository
from gateway.web.errors import ApiError, HttpCode, invalid_fields
from gateway.web.media import Photo, PhotoError, PhotoStore
from gateway.web.passwords import Passwords
from gateway.web.sessions import Sessions
from gateway.web.signup import TAKEN, normalized_username, validate_sign_up
from gateway.web.throttle import Throttle
from shared.wire import ErrorCode

# At most one photo and this many form fields in a sign-up.
MAX_FORM_FIELDS = 20
# The largest body of any request but a sign-up (which carries a photo).
MAX_JSON_BODY_BYTES = 64 * 1024


class AuthApi:
    def __init__(
        self,
        users: UserRepository,
        sessions: Sessions,
        photos: PhotoStore,
        passwords: Passwords,
        throttle: Throttle,
    ) -> None:
        self._users = users
        self._passwords = passwords
        self._sessions = sessions
        self._photos = photos
        self._throttle = throttle

    def routes(self) -> list[Route]:
        return [
            Route("/api/sign_up/", self.sign_up, methods=["POST"]),
            Route("/api/log_in/", self.log_in, methods=["POST"]),
            Route("/api/token/refresh/", self.refresh, methods=["POST"]),
            Route("/api/log_out/", self.log_out, methods=["POST"]),
        ]

    async def sign_up(self, request: Request) -> Response:
        """Every bad field is named at once: a taken user name and an unfit photo too."""
        # Counted before the body is read: a refused client sends its photo for nothing.
        await self._throttle.sign_up(request)
        fields = await read_fields(request)
        sign_up = validate_sign_up(fields)
        photo = fields.get("photo")
        errors = sign_up if isinstance(sign_up, dict) else {}
        username = fields.get("username")
        if (
            isinstance(username, str)
            and "username" not in errors
            and await self._users.is_taken(normalized_username(username))
        ):
            errors["username"] = [TAKEN]
        prepared: Photo | None = None
        if photo not in (None, "") and not isinstance(photo, UploadFile):
            errors.setdefault("photo", []).append("Upload a file, as multipart/form-data.")
        elif isinstance(photo, UploadFile) and photo.filename:
            try:
                prepared = await self._photos.prepare(photo)
            except PhotoError as exc:
                errors.setdefault("photo", []).append(str(exc))
        if errors or isinstance(sign_up, dict):
            raise invalid_fields(errors)
        photo_url = await self._photos.store(prepared) if prepared else None
        try:
            user = await self._users.create(
                username=sign_up.username,
                password_hash=await self._passwords.hash(sign_up.password),
                first_name=sign_up.first_name,
                last_name=sign_up.last_name,
                group=sign_up.group,
                photo=photo_url,
            )
        except UsernameTaken:
            if photo_url is not None:
                await self._photos.delete(photo_url)
            # A look-alike signed up between the check above and this insert.
            raise invalid_fields({"username": [TAKEN]}) from None
        return OrjsonResponse(user.public(), status_code=201)

    async def log_in(self, request: Request) -> Response:
        fields = await read_fields(request)
        errors = required_strings(fields, "username", "password")
        if errors:
            raise invalid_fields(errors)
        username = normalized_username(fields["username"])
        # Recorded as a failure until it succeeds; 429 past the limit (`gateway.web.throttle`).
        attempt = await self._throttle.log_in(username, request)
        # Postgres text cannot hold NUL, so no stored username contains one.
        found = None if "\x00" in username else await self._users.find_with_password_hash(username)
        user, password_hash = found if found else (None, None)
        if not await self._passwords.verify(password_hash, fields["password"]):
            user = None
        if user is None or not user.is_active:
            raise ApiError(
                401,
                HttpCode.INVALID_CREDENTIALS,
                "no active account has this username and password",
            )
        await self._throttle.succeeded(attempt)
        return OrjsonResponse(await self._sessions.log_in(user))

    async def refresh(self, request: Request) -> Response:
        """A new access token, and the session's next refresh token (the one sent is
        spent: sending it again ends the session)."""
        fields = await read_fields(request)
        errors = required_strings(fields, "refresh")
        if errors:
            raise invalid_fields(errors)
        return OrjsonResponse(await self._sessions.refresh(fields["refresh"]))

    async def log_out(self, request: Request) -> Response:
        """End the session of the refresh token sent."""
        fields = await read_fields(request)
        errors = required_strings(fields, "refresh")
        if errors:
            raise invalid_fields(errors)
        await self._sessions.log_out(fields["refresh"])
        return Response(status_code=204)


async def read_fields(request: Request) -> dict[str, Any]:
    """The body as a dict, from JSON, a urlencoded form or multipart (files included).
    Its size was capped as it streamed in (`gateway.limits`)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
        except (HTTPException, MultiPartException):
            raise ApiError(
                400,
                ErrorCode.INVALID_DATA,
                f"the form could not be read: send at most one file and {MAX_FORM_FIELDS} "
                "fields, encoded as its content type says",
            ) from None
        return dict(form.items())
    if content_type in ("application/json", ""):
        try:
            fields = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            raise ApiError(
                400, ErrorCode.INVALID_JSON, "the body is not valid JSON (UTF-8, one object)"
            ) from None
        if not isinstance(fields, dict):
            raise ApiError(400, ErrorCode.INVALID_DATA, "the body must be a JSON object")
        return fields
    raise ApiError(
        415,
        HttpCode.UNSUPPORTED_MEDIA_TYPE,
        f"content type {content_type!r} is not accepted; send JSON or a form",
    )


def required_strings(fields: dict[str, Any], *names: str) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for name in names:
        value = fields.get(name)
        if not isinstance(value, str) or not value:
            errors[name] = [
                "This field is required." if value in (None, "") else "Must be a string."
            ]
    return errors
