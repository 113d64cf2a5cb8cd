"""Validation of a sign-up, as a pure function: fields in, a clean sign-up or field errors out.

User names are NFKC-normalised (so one name typed in two Unicode forms is one user),
then must be 3 to 150 letters and digits (of any script, as Django's user names) and
`@`, `.`, `_`, `+`, `-` only, and, if they hold an `@`, an e-mail address: no spaces,
markup, quotes, control, zero-width or direction-changing characters anywhere. They
are compared without regard to case and by their confusable skeleton
(`shared.user_names`): a look-alike of a taken name is taken. Passwords, as
Django's validators have them: at least 8 characters, not all digits, and not one
of the 30,000 most common passwords (zxcvbn's list).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from zxcvbn.frequency_lists import FREQUENCY_LISTS

from shared.user_names import normalized
from shared.users import GROUPS

MAX_NAME_LENGTH = 150
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

FieldErrors = dict[str, list[str]]

# After NFKC, every character is a letter or digit (str.isalnum: any script) or one
# of these; a name with an `@` is an e-mail address (something@domain.tld).
NAME_PUNCTUATION = frozenset("@._+-")
MIN_USERNAME_LENGTH = 3
EMAIL = re.compile(r"[^@]+@[^@.]+(\.[^@.]+)+")
USERNAME_RULE = (
    "Use an e-mail address, or 3 to 150 letters, digits and . _ + - "
    "(no spaces, markup, symbols or invisible characters)."
)
TAKEN = "A user with that username already exists."


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

    username = normalized_username(text("username", required=True))
    if not username and "username" not in errors:
        errors["username"] = ["This field is required."]
    elif username and not is_acceptable_username(username):
        errors.setdefault("username", []).append(USERNAME_RULE)
    first_name = text("first_name", required=False)
    last_name = text("last_name", required=False)
    group = text("group", required=True)
    password1 = text("password1", required=True, max_length=MAX_PASSWORD_LENGTH)
    password2 = text("password2", required=True, max_length=MAX_PASSWORD_LENGTH)

    if group and group not in GROUPS:
        errors.setdefault("group", []).append(f"Must be one of: {', '.join(GROUPS)}.")
    errors_of_password = password_problems(password1) if password1 else []
    if errors_of_password:
        errors.setdefault("password1", []).extend(errors_of_password)
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


def normalized_username(raw: str) -> str:
    """The user name as it is stored and looked up: NFKC, without outer whitespace."""
    return normalized(raw)


def is_acceptable_username(username: str) -> bool:
    if not MIN_USERNAME_LENGTH <= len(username) <= MAX_NAME_LENGTH:
        return False
    if not all(char.isalnum() or char in NAME_PUNCTUATION for char in username):
        return False
    return "@" not in username or bool(EMAIL.fullmatch(username))


def password_problems(password: str) -> list[str]:
    problems = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(f"Must be at least {MIN_PASSWORD_LENGTH} characters.")
    if password.isdigit():
        problems.append("Must not be all digits.")
    if password.lower().strip() in _common_passwords():
        problems.append("This password is too common; choose one that is hard to guess.")
    return problems


@cache
def _common_passwords() -> frozenset[str]:
    return frozenset(FREQUENCY_LISTS["passwords"])
