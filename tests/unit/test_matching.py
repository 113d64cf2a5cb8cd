"""The matched policy's pairing (dispatcher.matching): optimal where nearest-first is not,
and never worse than nearest-first on any case (a property, by hypothesis)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.matching import nearest_first, pair


def total(pairs: list[tuple[str, int, float]]) -> float:
    return sum(distance for _, _, distance in pairs)


def test_two_riders_and_two_drivers_on_a_line_are_paired_for_the_shortest_total() -> None:
    # On a line: driver 1 at 0 m, rider A at 1,000 m, driver 2 at 1,100 m, rider B at
    # 2,000 m. A asked first; nearest-first gives A driver 2 (100 m) and B driver 1
    # (2,000 m); the optimum gives A driver 1 (1,000 m) and B driver 2 (900 m).
    candidates = {"A": [(1, 1000.0), (2, 100.0)], "B": [(1, 2000.0), (2, 900.0)]}

    assert sorted(pair(candidates)) == [("A", 1, 1000.0), ("B", 2, 900.0)]
    assert sorted(nearest_first(candidates)) == [("A", 2, 100.0), ("B", 1, 2000.0)]


def test_a_request_with_no_candidate_is_left_for_the_next_round() -> None:
    assert pair({"A": [], "B": [(3, 50.0)]}) == [("B", 3, 50.0)]
    assert pair({}) == []


def test_as_many_requests_are_served_as_can_be_even_at_a_longer_total() -> None:
    # Driver 1 is nearest to both; only pairing A with driver 2 serves both.
    candidates = {"A": [(1, 10.0), (2, 5000.0)], "B": [(1, 20.0)]}

    assert sorted(pair(candidates)) == [("A", 2, 5000.0), ("B", 1, 20.0)]


def test_a_driver_named_twice_for_one_request_counts_at_the_shorter_distance() -> None:
    assert pair({"A": [(1, 900.0), (1, 300.0)]}) == [("A", 1, 300.0)]


cases = st.dictionaries(
    keys=st.text(alphabet="abcdefgh", min_size=1, max_size=2),
    values=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=12),
            st.floats(min_value=0, max_value=30_000, allow_nan=False),
        ),
        max_size=8,
    ),
    max_size=10,
)


@settings(max_examples=300, deadline=None)
@given(cases)
def test_the_pairing_is_never_worse_than_nearest_first(
    candidates: dict[str, list[tuple[int, float]]],
) -> None:
    ours = pair(candidates)
    greedy = nearest_first(candidates)

    # A pairing: each request and each driver once at most, each pair a candidate.
    assert len({r for r, _, _ in ours}) == len(ours)
    assert len({d for _, d, _ in ours}) == len(ours)
    for request, driver, distance in ours:
        assert distance == min(d for c, d in candidates[request] if c == driver)
    # Never fewer requests served; as many served, never a longer total.
    assert len(ours) >= len(greedy)
    if len(ours) == len(greedy):
        assert total(ours) <= total(greedy) + 1e-6


@settings(max_examples=100, deadline=None)
@given(cases.filter(lambda c: len(c) <= 5))
def test_the_pairing_is_optimal_as_an_exhaustive_search_finds(
    candidates: dict[str, list[tuple[int, float]]],
) -> None:
    """Against every assignment of drivers (or none) to the requests, on small cases."""
    options = {r: [None, *{d for d, _ in found}] for r, found in candidates.items()}
    best: tuple[int, float] = (0, 0.0)
    for choice in itertools.product(*options.values()):
        chosen = [d for d in choice if d is not None]
        if len(chosen) != len(set(chosen)):
            continue
        distance = sum(
            min(x for c, x in candidates[r] if c == d)
            for r, d in zip(options, choice, strict=True)
            if d is not None
        )
        if (len(chosen), -distance) > (best[0], -best[1]):
            best = (len(chosen), distance)
    ours = pair(candidates)

    assert len(ours) == best[0]
    assert total(ours) <= best[1] + 1e-6
