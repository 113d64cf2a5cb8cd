"""The confusable skeleton of user names (Unicode TS #39) and which names are names."""

from __future__ import annotations

import pytest

from gateway.web.signup import is_acceptable_username
from shared.user_names import skeleton


@pytest.mark.parametrize(
    ("name", "look_alike"),
    [
        ("paypal", "p\u0430ypal"),  # Cyrillic a
        ("PayPal", "p\u0430yp\u0430l"),  # and another case
        ("bob@example.org", "b\u03bfb@example.org"),  # Greek omicron
        ("kate", "\u212aate"),  # Kelvin sign
        ("modern", "rnodern"),
        ("bob", "B0B"),
        ("ann1", "annl"),
        ("Ian", "lan"),  # a capital I is a prototype's l
        ("caf\u00e9", "cafe\u0301"),
        ("ann", "\uff41\uff4e\uff4e"),  # full-width letters
    ],
)
def test_look_alikes_share_a_skeleton(name: str, look_alike: str) -> None:
    assert skeleton(name) == skeleton(look_alike)


@pytest.mark.parametrize(
    ("name", "other"), [("ann", "anna"), ("bob", "rob"), ("paypal", "paypa1x"), ("ian", "lan")]
)
def test_different_names_keep_different_skeletons(name: str, other: str) -> None:
    assert skeleton(name) != skeleton(other)


def test_a_skeleton_is_its_own_skeleton() -> None:
    for name in ("P\u0430yPal", "B0B@example.org", "modern", "\u212aate"):
        assert skeleton(skeleton(name)) == skeleton(name)


@pytest.mark.parametrize(
    "name",
    [
        "<img/src=x/onerror=alert(1)>@example.com",
        'a"b@example.com',
        "ann'--@example.com",
        "ann;drop@example.com",
        "ann/../x",
        "ann@@example.com",
        "ann@example",
        "ab",
        "x" * 151,
    ],
)
def test_markup_symbols_and_shapeless_names_are_refused(name: str) -> None:
    assert not is_acceptable_username(name)


@pytest.mark.parametrize(
    "name",
    ["ann@example.com", "dan_7", "Ann.Rider+taxi@example.co.uk", "zo\u00eb", "\u674e\u5c0f\u9f99"],
)
def test_letters_of_any_script_digits_and_the_five_marks_are_accepted(name: str) -> None:
    assert is_acceptable_username(name)
