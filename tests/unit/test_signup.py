"""validate_sign_up: a clean SignUp, or errors keyed by the field they concern."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.web.signup import SignUp, validate_sign_up


def form(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "username": "ann@example.com",
        "first_name": "Ann",
        "last_name": "Lee",
        "password1": "pAssw0rd!",
        "password2": "pAssw0rd!",
        "group": "rider",
    }
    fields.update(changes)
    return {name: value for name, value in fields.items() if value is not ...}


def errors_of(fields: dict[str, Any]) -> dict[str, list[str]]:
    result = validate_sign_up(fields)
    assert isinstance(result, dict), result
    assert result, "an error dict is never empty"
    assert all(isinstance(m, str) and m for messages in result.values() for m in messages)
    return result


def test_valid_input_returns_a_sign_up() -> None:
    assert validate_sign_up(form()) == SignUp(
        username="ann@example.com",
        password="pAssw0rd!",
        first_name="Ann",
        last_name="Lee",
        group="rider",
    )


def test_a_driver_can_sign_up() -> None:
    result = validate_sign_up(form(group="driver"))

    assert isinstance(result, SignUp)
    assert result.group == "driver"


def test_names_are_optional() -> None:
    result = validate_sign_up(form(first_name=..., last_name=""))

    assert isinstance(result, SignUp)
    assert (result.first_name, result.last_name) == ("", "")


def test_the_username_is_trimmed() -> None:
    result = validate_sign_up(form(username="  ann@example.com \n"))

    assert isinstance(result, SignUp)
    assert result.username == "ann@example.com"


def test_the_password_is_kept_as_typed() -> None:
    result = validate_sign_up(form(password1=" pAssw0rd! ", password2=" pAssw0rd! "))

    assert isinstance(result, SignUp)
    assert result.password == " pAssw0rd! "


def test_unknown_fields_are_ignored() -> None:
    assert isinstance(validate_sign_up(form(is_staff=True, id=1)), SignUp)


@pytest.mark.parametrize("field", ["username", "password1", "password2", "group"])
@pytest.mark.parametrize("missing", [..., None, ""])
def test_a_missing_required_field_is_named(field: str, missing: Any) -> None:
    errors = errors_of(form(**{field: missing}))

    assert set(errors) == {field}
    assert errors[field] == ["This field is required."]


def test_every_missing_field_is_named_at_once() -> None:
    errors = errors_of({})

    assert set(errors) == {"username", "password1", "password2", "group"}


def test_mismatched_passwords_are_a_password2_error() -> None:
    errors = errors_of(form(password2="pAssw0rd?"))

    assert set(errors) == {"password2"}
    assert "match" in errors["password2"][0]


def test_passwords_differing_only_in_case_do_not_match() -> None:
    assert set(errors_of(form(password2="PASSW0RD!"))) == {"password2"}


@pytest.mark.parametrize("password", ["a", "1234567", "pAssw0r"])
def test_a_short_password_is_refused(password: str) -> None:
    errors = errors_of(form(password1=password, password2=password))

    assert set(errors) == {"password1"}
    assert "8" in errors["password1"][0]


def test_eight_characters_are_enough() -> None:
    assert isinstance(validate_sign_up(form(password1="k3y-tram", password2="k3y-tram")), SignUp)


def test_a_short_and_mismatched_password_gets_both_errors() -> None:
    errors = errors_of(form(password1="short", password2="other"))

    assert set(errors) == {"password1", "password2"}


@pytest.mark.parametrize("group", ["admin", "Rider", "DRIVER", "riders", " rider"])
def test_a_bad_group_is_refused(group: str) -> None:
    errors = errors_of(form(group=group))

    assert set(errors) == {"group"}
    assert "rider" in errors["group"][0]
    assert "driver" in errors["group"][0]


@pytest.mark.parametrize(
    "field", ["username", "first_name", "last_name", "password1", "password2", "group"]
)
@pytest.mark.parametrize("value", [123, 1.5, True, False, 0, ["ann"], {"a": 1}])
def test_a_value_that_is_not_a_string_is_refused(field: str, value: Any) -> None:
    changes = {field: value}
    if field.startswith("password"):
        changes = {"password1": value, "password2": value}

    errors = errors_of(form(**changes))

    assert field in errors
    assert "Must be a string." in errors[field]


@pytest.mark.parametrize("field", ["username", "first_name", "last_name"])
def test_a_nul_character_in_a_name_is_refused(field: str) -> None:
    errors = errors_of(form(**{field: "ann\x00lee"}))

    assert set(errors) == {field}
    assert "NUL" in errors[field][0]


def test_a_nul_character_in_the_password_is_refused() -> None:
    errors = errors_of(form(password1="pAssw0rd!\x00", password2="pAssw0rd!\x00"))

    assert "password1" in errors
    assert "password2" in errors


@pytest.mark.parametrize("field", ["username", "first_name", "last_name"])
def test_an_overlong_name_is_refused(field: str) -> None:
    errors = errors_of(form(**{field: "a" * 151}))

    assert set(errors) == {field}
    assert "150" in errors[field][0]


@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("username", "a" * 144 + "@x.org"),
        ("first_name", "é" * 150),
        ("last_name", "é" * 150),
    ],
)
def test_a_name_of_150_characters_is_accepted(field: str, name: str) -> None:
    result = validate_sign_up(form(**{field: name}))

    assert isinstance(result, SignUp)
    assert getattr(result, field) == name


def test_an_overlong_password_is_refused() -> None:
    password = "p" * 1025

    errors = errors_of(form(password1=password, password2=password))

    assert "password1" in errors
    assert "password2" in errors


def test_errors_in_several_fields_are_reported_together() -> None:
    errors = errors_of(
        {
            "username": "",
            "first_name": 5,
            "last_name": "x" * 200,
            "password1": "short",
            "password2": "different",
            "group": "admin",
        }
    )

    assert set(errors) == {"username", "first_name", "last_name", "password1", "password2", "group"}


@pytest.mark.parametrize("username", [" ", "   ", "\t\n"])
def test_a_blank_username_is_missing(username: str) -> None:
    errors = errors_of(form(username=username))

    assert set(errors) == {"username"}


@pytest.mark.parametrize(
    "username",
    [
        "ann\n@example.com",  # a newline
        "ann\u200b@example.com",  # zero-width space
        "\u202eann@example.com",  # right-to-left override
        "ann @example.com",  # a space
        "not-an-e-mail but words",
        "a",  # too short for a plain name
        "ann@localhost",  # no domain
    ],
)
def test_a_user_name_with_invisible_characters_or_no_shape_is_refused(username: str) -> None:
    errors = errors_of(form(username=username))

    assert set(errors) == {"username"}
    assert "e-mail address" in errors["username"][0]


@pytest.mark.parametrize("username", ["ann@example.com", "Ann.Rider+taxi@example.co.uk", "dan_7"])
def test_e_mail_addresses_and_plain_names_are_accepted(username: str) -> None:
    assert isinstance(validate_sign_up(form(username=username)), SignUp)


def test_one_name_in_two_unicode_forms_is_one_name() -> None:
    composed = validate_sign_up(form(username="caf\u00e9@x.com"))
    decomposed = validate_sign_up(form(username="cafe\u0301@x.com"))

    assert isinstance(composed, SignUp) and isinstance(decomposed, SignUp)
    assert composed.username == decomposed.username == "caf\u00e9@x.com"


@pytest.mark.parametrize(
    ("password", "says"),
    [
        ("password", "too common"),
        ("Password", "too common"),
        ("12345678", "all digits"),
        ("9876543210123", "all digits"),
        ("qwertyuiop", "too common"),
    ],
)
def test_common_or_all_digit_passwords_are_refused(password: str, says: str) -> None:
    errors = errors_of(form(password1=password, password2=password))

    assert set(errors) == {"password1"}
    assert any(says in message for message in errors["password1"])
