"""The ports the tests hand to servers that bind them later: free when handed out,
and, for runs of them kept minutes before use, out of the range the kernel gives
outgoing connections theirs from."""

from __future__ import annotations

import socket

from tools.processes import ephemeral_start, free_port_run


def test_a_run_for_later_is_free_and_below_the_ephemeral_range() -> None:
    base = free_port_run(5, for_later=True)

    assert base + 5 <= ephemeral_start()
    for port in range(base, base + 5):
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
