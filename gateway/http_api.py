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
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.media import PhotoError, PhotoStore
from gateway.passwords import Passwords
from gateway.signup import validate_sign_up
from gateway.tokens import TokenError, TokenService
from gateway.users import UsernameTaken, UserRepository

MAX_JSON_BODY_BYTES = 64 * 1024


class BadRequest(Exception):
    def __init__(self, body: dict[str, Any], status_code: int = 400) -> None:
        self.body = body
        self.status_code = status_code


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class AuthApi:
    def __init__(
        self,
        users: UserRepository,
        tokens: TokenService,
        photos: PhotoStore,
        passwords: Passwords,
    ) -> None:
        self._users = users
        self._passwords = passwords
        self._tokens = tokens
        self._photos = photos

    def routes(self) -> list[Route]:
        return [
            Route("/api/sign_up/", self.sign_up, methods=["POST"]),
            Route("/api/log_in/", self.log_in, methods=["POST"]),
            Route("/api/token/refresh/", self.refresh, methods=["POST"]),
        ]

    async def sign_up(self, request: Request) -> Response:
        # Room for the photo and the form's other fields.
        fields = await read_fields(request, self._photos.max_bytes + MAX_JSON_BODY_BYTES)
        sign_up = validate_sign_up(fields)
        photo = fields.get("photo")
        errors = sign_up if isinstance(sign_up, dict) else {}
        if photo not in (None, "") and not isinstance(photo, UploadFile):
            errors.setdefault("photo", []).append("Upload a file, as multipart/form-data.")
        if errors or isinstance(sign_up, dict):
            return OrjsonResponse(errors, status_code=400)
        photo_url = None
        if isinstance(photo, UploadFile) and photo.filename:
            try:
                photo_url = await self._photos.save(photo)
            except PhotoError as exc:
                return OrjsonResponse({"photo": [str(exc)]}, status_code=400)
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
            return OrjsonResponse(
                {"username": ["A user with that username already exists."]}, status_code=400
            )
        return OrjsonResponse(user.public(), status_code=201)

    async def log_in(self, request: Request) -> Response:
        fields = await read_fields(request)
        errors = required_strings(fields, "username", "password")
        if errors:
            return OrjsonResponse(errors, status_code=400)
        username = fields["username"].strip()
        # Postgres text cannot hold NUL, so no stored username contains one.
        found = None if "\x00" in username else await self._users.find_with_password_hash(username)
        user, password_hash = found if found else (None, None)
        if not await self._passwords.verify(password_hash, fields["password"]):
            user = None
        if user is None or not user.is_active:
            return OrjsonResponse(
                {"detail": "No active account found with the given credentials"}, status_code=401
            )
        return OrjsonResponse(self._tokens.issue_pair(user))

    async def refresh(self, request: Request) -> Response:
        fields = await read_fields(request)
        errors = required_strings(fields, "refresh")
        if errors:
            return OrjsonResponse(errors, status_code=400)
        try:
            claims = self._tokens.verify(fields["refresh"], "refresh")
        except TokenError as exc:
            return token_not_valid(str(exc))
        # A fresh access token reflects the user as they are now, and not at all
        # if they were deactivated since logging in.
        user = await self._users.active(claims.user_id)
        if user is None:
            return token_not_valid("user not found or inactive")
        return OrjsonResponse({"access": self._tokens.issue(user, "access")})


def token_not_valid(reason: str) -> Response:
    return OrjsonResponse({"detail": reason, "code": "token_not_valid"}, status_code=401)


async def read_fields(
    request: Request, max_form_bytes: int = MAX_JSON_BODY_BYTES
) -> dict[str, Any]:
    """The body as a dict, from JSON, a urlencoded form or multipart (files included).

    A body larger than its limit is refused with 413 before it is read, or as soon
    as it grows past the limit: nobody can fill the server's memory or disk.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    is_form = content_type in ("application/x-www-form-urlencoded", "multipart/form-data")
    limit = max_form_bytes if is_form else MAX_JSON_BODY_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest({"detail": f"body is larger than {limit} bytes"}, 413)
    if is_form:
        try:
            form = await request.form(max_files=1, max_fields=20)
        except (HTTPException, MultiPartException) as exc:
            detail = exc.detail if isinstance(exc, HTTPException) else exc.message
            raise BadRequest({"detail": detail}) from None
        return dict(form.items())
    if content_type in ("application/json", ""):
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_JSON_BODY_BYTES:
                raise BadRequest(
                    {"detail": f"body is larger than {MAX_JSON_BODY_BYTES} bytes"}, 413
                )
        try:
            fields = orjson.loads(bytes(body) or b"{}")
        except orjson.JSONDecodeError as exc:
            raise BadRequest({"detail": f"body is not valid JSON: {exc}"}) from None
        if not isinstance(fields, dict):
            raise BadRequest({"detail": "body must be a JSON object"})
        return fields
    raise BadRequest(
        {"detail": f"unsupported content type {content_type!r}; send JSON or a form"}, 415
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


async def bad_request_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return OrjsonResponse(exc.body, status_code=exc.status_code)
