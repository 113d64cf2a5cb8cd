"""The summary of a py-spy profile: which functions hold the samples."""

from __future__ import annotations

from bench.profiles import summarise

RAW = """\
run (asyncio/runners.py:118);_receive (live/websocket.py:300);parse (websockets/frames.py:20) 6
run (asyncio/runners.py:118);_receive (live/websocket.py:301) 2
run (asyncio/runners.py:118);publish (aio_pika/exchange.py:200) 2
"""


def rows(summary: str) -> dict[str, tuple[float, float]]:
    found = {}
    for line in summary.splitlines():
        if line.startswith("| `"):
            name, with_callees, itself = (cell.strip() for cell in line.strip("|").split("|"))
            found[name.strip("`")] = (float(with_callees), float(itself))
    return found


def test_each_function_counts_its_callees_once_and_its_own_samples_apart() -> None:
    summary = summarise(RAW, "gateway")

    assert "10 samples" in summary
    assert rows(summary) == {
        "run (runners.py)": (100.0, 0.0),
        # Two lines of one function are one entry.
        "_receive (websocket.py)": (80.0, 20.0),
        "parse (frames.py)": (60.0, 60.0),
        "publish (exchange.py)": (20.0, 20.0),
    }


def test_a_function_on_a_stack_twice_counts_once() -> None:
    raw = "a (m.py:1);b (m.py:2);a (m.py:1) 4\n"

    assert rows(summarise(raw, "worker")) == {"a (m.py)": (100.0, 100.0), "b (m.py)": (100.0, 0.0)}
