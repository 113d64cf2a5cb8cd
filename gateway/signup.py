"""Validation of a sign-up, as a pure function: fields in, a clean sign-up or field errors out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.users import GROUPS

MAX_NAME_LENGTH = 150
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

FieldErrors = dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class SignUp:
    username: str
    password: str
    first_name: str
    last_name: str
    group: str


def validate_sign_up(fields: Mapping[str, Any]) -> SignUp | FieldErrors:
    errors: FieldErrors = {}

    def text(name: str, *, required: bool, max_length: int = MAX_NAME_LENGTH) -> str:
        value = fields.get(name)
        if value is None or value == "":
            if required:
                errors.setdefault(name, []).append("This field is required.")
            return ""
        if not isinstance(value, str):
            errors.setdefault(name, []).append("Must be a string.")
            return ""
        if len(value) > max_length:
            errors.setdefault(name, []).append(f"At most {max_length} characters.")
        if "\x00" in value:
            errors.setdefault(name, []).append("Must not contain NUL characters.")
        return value

    username = text("username", required=True).strip()
    if not username and "username" not in errors:
        errors["username"] = ["This field is required."]
    first_name = text("first_name", required=False)
    last_name = text("last_name", required=False)
    group = text("group", required=True)
    password1 = text("password1", required=True, max_length=MAX_PASSWORD_LENGTH)
    password2 = text("password2", required=True, max_length=MAX_PASSWORD_LENGTH)

    if group and group not in GROUPS:
        errors.setdefault("group", []).append(f"Must be one of: {', '.join(GROUPS)}.")
    if password1 and len(password1) < MIN_PASSWORD_LENGTH:
        errors.setdefault("password1", []).append(
            f"Must be at least {MIN_PASSWORD_LENGTH} characters."
        )
    if password1 and password2 and password1 != password2:
        errors.setdefault("password2", []).append("Passwords must match.")

    if errors:
        return errors
    return SignUp(
        username=username,
        password=password1,
        first_name=first_name,
        last_name=last_name,
        group=group,
    )
