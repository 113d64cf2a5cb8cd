"""Every HTTP error the gateway answers, in one shape (PROTOCOL C4):

    {"detail": "<what was wrong, in plain words>", "code": "<a stable code>"}

and, for a request whose fields were wrong, `"fields": {"<name>": ["<message>"]}`
naming each one. Handlers raise `ApiError`; the app turns it, and Starlette's own
404 and 405, into that body, so no error leaves in another shape.

The one exception is the course's client (`gateway.web.course_forms`): the errors of
its sign-up and log-in forms come as those forms read them, `{"<field>": [...]}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.responses import OrjsonResponse
from gateway.web.course_forms import course_form_errors, speaks_course_forms
from shared.wire import ErrorCode

FieldErrors = Mapping[str, Sequence[str]]


class HttpCode:
    """Codes of HTTP errors beside those frames share (`shared.wire.ErrorCode`)."""

    NOT_AUTHENTICATED = "not_authenticated"
    TOKEN_NOT_VALID = "token_not_valid"
    INVALID_CREDENTIALS = "invalid_credentials"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"


class ApiError(Exception):
    """An HTTP error answer: its status, code, plain-words detail and bad fields."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        fields: FieldErrors | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.fields = fields
        self.headers = headers

    def response(self, *, course_form: bool = False) -> Response:
        """The answer; in the course's form dialect if `course_form`
        (`speaks_course_forms` of the request)."""
        body: dict[str, Any]
        if course_form:
            body = course_form_errors(
                self.detail,
                self.fields,
                photo_too_large=self.code == HttpCode.PAYLOAD_TOO_LARGE,
            )
        else:
            body = {"detail": self.detail, "code": self.code}
            if self.fields is not None:
                body["fields"] = {name: list(messages) for name, messages in self.fields.items()}
        return OrjsonResponse(body, status_code=self.status, headers=self.headers)

    def response_to(self, request: Request) -> Response:
        return self.response(
            course_form=speaks_course_forms(request.url.path, request.headers.get("accept"))
        )


def invalid_fields(fields: FieldErrors) -> ApiError:
    """400 naming every field that was wrong."""
    return ApiError(
        400,
        ErrorCode.INVALID_DATA,
        f"check these fields: {', '.join(fields)}",
        fields=fields,
    )


def token_not_valid(reason: str) -> ApiError:
    return ApiError(401, HttpCode.TOKEN_NOT_VALID, reason)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response_to(request)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such path, a method the path does not take)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return ApiError(404, ErrorCode.NOT_FOUND, f"nothing here: {request.url.path}").response_to(
            request
        )
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return ApiError(
            405,
            HttpCode.METHOD_NOT_ALLOWED,
            f"{request.method} is not allowed here; allowed: {allowed}",
            headers={"Allow": allowed},
        ).response_to(request)
    return ApiError(exc.status_code, f"http_{exc.status_code}", str(exc.detail)).response_to(
        request
    )
