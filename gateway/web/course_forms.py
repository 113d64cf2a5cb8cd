"""The course's dialect over HTTP (PROTOCOL D4): the error bodies the testdriven.io
course's own React client (`taxi-react-app`, `client/`, v4.0.0) reads. Its frames on the
socket are `gateway.live.course_frames`. Pure functions, no I/O.

The course's client posts its sign-up (multipart form data) and its log-in with
axios, whose every request says `Accept: application/json, text/plain, */*`; our own
clients and curl say otherwise. For such a request, the error answers of those two
forms are what its forms read: `{"<field>": ["message", ...]}` like Django REST
framework's, non-field messages under `__all__` (the log-in form shows those).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

# axios's default Accept header (axios 0.x and 1.x), which every request of the
# course's client carries.
AXIOS_ACCEPT: Final = ("application/json", "text/plain", "*/*")
# The course's forms that read error bodies.
COURSE_FORMS: Final = frozenset({"/api/sign_up/", "/api/log_in/"})
# Where the course's forms show a message that names no field (its log-in form does).
NON_FIELD: Final = "__all__"


def speaks_course_forms(path: str, accept: str | None) -> bool:
    """Whether an error answer to this request goes in the course's form dialect: one
    of the course's forms, posted by an axios client."""
    if path not in COURSE_FORMS or not accept:
        return False
    return tuple(part.strip() for part in accept.split(",")) == AXIOS_ACCEPT


def course_form_errors(
    detail: str, fields: Mapping[str, Sequence[str]] | None, *, photo_too_large: bool = False
) -> dict[str, list[str]]:
    """An error body as the course's forms read it: each field's messages, or the
    detail under `__all__` (or under `photo`, for a sign-up form too large to take,
    which only its photo can make so)."""
    if fields:
        return {name: list(messages) for name, messages in fields.items()}
    return {"photo" if photo_too_large else NON_FIELD: [detail]}
