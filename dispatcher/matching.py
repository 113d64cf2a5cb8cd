"""The matched policy's pairing (PROTOCOL D2): waiting requests and free drivers, paired
so that the total straight-line pick-up distance is smallest. Pure: no I/O, no clock.

Each request comes with its candidates, the free drivers within its radius and their
distance to its pick-up point (the nearest few, from the worker's index: a pair that
is no candidate is not allowed). Among all the pairings that serve as many requests
as can be served, the one of least total distance is an optimal assignment; SciPy's
`linear_sum_assignment` (a Jonker-Volgenant solver, well tested and fast: a few
milliseconds for hundreds of requests) finds it. Not allowed pairs cost more than
every allowed pairing together, so the solver never trades a served request for a
shorter total.

Nearest-first, each request in turn taking its nearest candidate still free, is what
rings amount to when requests compete; `nearest_first` is here to be compared with.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
from scipy.optimize import linear_sum_assignment

Request = TypeVar("Request", bound=Hashable)
# Per request: (driver id, distance in metres) of each driver it may be paired with.
Candidates = Mapping[Request, Sequence[tuple[int, float]]]


def pair(candidates: Candidates[Request]) -> list[tuple[Request, int, float]]:
    """The pairs (request, driver, distance) of an optimal pairing: as many requests
    served as there can be, then the smallest total distance; each request and each
    driver in one pair at most. Ordered as the requests are."""
    requests = [request for request, found in candidates.items() if found]
    if not requests:
        return []
    drivers = sorted({driver for request in requests for driver, _ in candidates[request]})
    column = {driver: index for index, driver in enumerate(drivers)}
    longest = max(distance for request in requests for _, distance in candidates[request])
    # More than any pairing of allowed pairs costs in all (one such pair per request,
    # at most), so that each forbidden pair in a solution costs more than it can save.
    forbidden = (longest + 1.0) * (min(len(requests), len(drivers)) + 1)
    cost = np.full((len(requests), len(drivers)), forbidden)
    for row, request in enumerate(requests):
        for driver, distance in candidates[request]:
            cost[row, column[driver]] = min(cost[row, column[driver]], distance)
    rows, columns = linear_sum_assignment(cost)
    return [
        (requests[row], drivers[col], float(cost[row, col]))
        for row, col in zip(rows.tolist(), columns.tolist(), strict=True)
        if cost[row, col] < forbidden
    ]


def nearest_first(candidates: Candidates[Request]) -> list[tuple[Request, int, float]]:
    """Each request in the order given takes its nearest candidate not taken before it
    (ties by driver id): the pairing that serving requests one by one comes to."""
    taken: set[int] = set()
    pairs = []
    for request, found in candidates.items():
        free = [(distance, driver) for driver, distance in found if driver not in taken]
        if free:
            distance, driver = min(free)
            taken.add(driver)
            pairs.append((request, driver, distance))
    return pairs
