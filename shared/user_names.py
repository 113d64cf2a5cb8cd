"""User names compared by their confusable skeleton (Unicode TS #39, section 4).

Two names are one name when their skeletons are equal: `paypal` spelt with a
Cyrillic a (U+0430) or a Greek omicron (U+03BF) is `paypal`, and so are `rn` and `m`,
`0` and `O`, `1` and `l`. A skeleton is for comparing only, never for showing.

    skeleton(X) = NFD(prototypes(NFD(X)))

with the comparison made without regard to case, as user names always were: the
mapped name is lower-cased and mapped again (`0` maps to `O`, which must meet the
`o` of `bob`; `I` maps to `l` before lower-casing could make it an `i`).

The mapping of each character to its prototype is Unicode's confusables.txt, as the
`confusable-homoglyphs` package ships it (kept up to date with Unicode's releases).
That package stores the file's pairs in both directions (each character with the
characters it is confusable with); the direction is recovered here: in each group of
confusable characters the prototype is the one every other is paired with (the
file's prototypes are never themselves mapped), the multi-character one if there is
one (`m` -> `rn`), and in a pair the one that appears inside a multi-character
prototype, else the lower code point (the skeleton is used only to compare, so any
fixed choice gives the same answers). Checked against Unicode 13's confusables.txt:
every character both list maps to the same prototype.

The skeleton is stored in `users.username_skeleton` (unique); `shared.migrate` fills
it in for users who signed up before it existed.
"""

from __future__ import annotations

import json
import unicodedata
from collections import defaultdict
from functools import cache
from importlib.resources import files

# Direction marks the package keeps around right-to-left characters.
_DIRECTION_MARKS = dict.fromkeys(map(ord, "\u200e\u200f"))


def normalized(raw: str) -> str:
    """The user name as it is stored and looked up: NFKC, without outer whitespace."""
    return unicodedata.normalize("NFKC", raw).strip()


def skeleton(name: str) -> str:
    """The key two user names share when a person could take one for the other."""
    # Mapped before it is lower-cased (a capital I is a prototype's l; lower-cased
    # first it would be an i), then lower-cased, which may give a character that maps
    # again: repeated to a fixed point.
    key = unicodedata.normalize("NFKC", name)
    for _ in range(4):
        mapped = _map(key).lower()
        if mapped == key:
            break
        key = mapped
    return key


def _map(text: str) -> str:
    prototypes = _prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join(prototypes.get(char, char) for char in decomposed))


@cache
def _prototypes() -> dict[str, str]:
    """Each confusable character, and the prototype it maps to."""
    raw = json.loads(files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8"))
    pairs: defaultdict[str, set[str]] = defaultdict(set)
    for key, entries in raw.items():
        one = key.translate(_DIRECTION_MARKS)
        for entry in entries:
            other = entry["c"].translate(_DIRECTION_MARKS)
            if one and other and one != other:
                pairs[one].add(other)
                pairs[other].add(one)
    in_sequences = {char for node in pairs if len(node) > 1 for char in node}
    prototypes: dict[str, str] = {}
    seen: set[str] = set()
    for start in pairs:
        if start in seen:
            continue
        group, stack = [], [start]
        seen.add(start)
        while stack:
            node = stack.pop()
            group.append(node)
            for other in pairs[node]:
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        prototype = _prototype_of(group, pairs, in_sequences)
        for node in group:
            if len(node) == 1 and node != prototype:
                prototypes[node] = prototype
    return prototypes


def _prototype_of(
    group: list[str], pairs: defaultdict[str, set[str]], in_sequences: set[str]
) -> str:
    sequences = [node for node in group if len(node) > 1]
    if sequences:
        return sequences[0]
    if len(group) > 2:
        centre = [node for node in group if len(pairs[node]) == len(group) - 1]
        if len(centre) == 1:
            return centre[0]
    inside = [node for node in group if node in in_sequences]
    return inside[0] if len(inside) == 1 else min(group)
