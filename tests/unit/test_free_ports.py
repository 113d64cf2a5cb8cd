"""The ports tests and `make cluster`'s tools hand to servers that start later: free,
never handed out twice, and out of the range outgoing connections take theirs from."""

from __future__ import annotations

import socket

from tools.processes import _ephemeral_start, free_port, free_port_run


def test_a_run_of_ports_is_free_and_below_the_ephemeral_range() -> None:
    base = free_port_run(5)

    assert base + 5 <= _ephemeral_start()
    for port in range(base, base + 5):
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))


def test_no_port_is_handed_out_twice_before_its_server_binds_it() -> None:
    runs = [range(base, base + 4) for base in (free_port_run(4) for _ in range(200))]
    singles = [free_port() for _ in range(200)]

    ports = [port for run in runs for port in run] + singles
    assert len(set(ports)) == len(ports)
