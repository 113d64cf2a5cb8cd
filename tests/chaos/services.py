"""Throwaway Postgres and RabbitMQ servers for the fault tests that stop them, and a
read-only look at the machine's shared ones to prove the suite left those alone.

A fault test never stops, kills or restarts the shared Postgres or RabbitMQ: other
runs and other people use them. It breaks a private server instead, which the test
session starts on free ports with a data directory of its own and removes at the end:
`PrivatePostgres` (initdb and pg_ctl) and `PrivateRabbitMQ` (a separately named node
with its own ports, Erlang cookie, epmd and data directory; nothing of
/etc/rabbitmq is read). The private RabbitMQ nodes, alone or as the cluster of
tests/chaos/test_cluster.py, are `make cluster`'s own (tools/local_cluster.py).
Every stop is paired with a start in a `finally`, so a failing test still leaves
the private server serving for the tests after it.

`shared_server_identities` says which process serves the shared Postgres and
RabbitMQ, and since when; tests/conftest.py compares it at the start and the end of
the run and fails the run if either changed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from tools.local_cluster import LocalCluster, PrivateRabbitMQ
from tools.private_servers import (
    SERVICE_TIMEOUT_SECONDS,
    PrivateServer,
    port_open,
    run_command,
    wait_until,
)
from tools.processes import free_port

__all__ = [
    "LocalCluster",
    "PrivatePostgres",
    "PrivateRabbitMQ",
    "postgres_stopped",
    "rabbitmq_stopped",
    "shared_server_identities",
]

LOCAL_HOSTS = (None, "", "127.0.0.1", "localhost", "::1")


class PrivatePostgres(PrivateServer):
    """A Postgres cluster of its own: initdb into a temporary directory, served by
    pg_ctl on a free port on 127.0.0.1 only, trust authentication, removed on exit.

    initdb and postgres refuse to run as root: as root, they run as the `postgres`
    system user, which owns the directory."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="taxi-test-postgres-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self._bin = _postgres_bindir()
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self._initialised = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        if not self._initialised:
            self._initdb()
        self._pg_ctl("start", "-w", "-t", str(SERVICE_TIMEOUT_SECONDS), "-l", str(self.log))
        wait_until(self.is_ready, f"private Postgres on port {self.port} ready")

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(SERVICE_TIMEOUT_SECONDS))
        wait_until(lambda: not port_open(self.port), f"port {self.port} closed")

    def is_ready(self) -> bool:
        probe = [str(self._bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(probe, check=False, timeout=30).returncode == 0

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        try:
            if self.running:
                self._pg_ctl("stop", "-m", "immediate", "-w", "-t", str(SERVICE_TIMEOUT_SECONDS))
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def _initdb(self) -> None:
        if self._user is not None:
            os.chown(self.base, self._user.pw_uid, self._user.pw_gid)
        self._as_owner(
            str(self._bin / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            # Throwaway data: losing it to a power cut is fine, waiting on disks is not.
            "fsync": "off",
            "shared_buffers": "32MB",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# A private server of the fault tests (tests/chaos/services.py)\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self._initialised = True

    def _pg_ctl(self, *args: str) -> None:
        self._as_owner(str(self._bin / "pg_ctl"), "--pgdata", str(self.data), *args)

    def _as_owner(self, *command: str) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.base)}
        if self._user is None:
            run_command(list(command), cwd=self.base, env=env)
        else:
            run_command(
                list(command),
                cwd=self.base,
                env=env,
                user=self._user.pw_uid,
                group=self._user.pw_gid,
                extra_groups=[],
            )


def _postgres_bindir() -> Path:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        if (Path(found) / "initdb").exists():
            return Path(found)
    installed = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if not installed:
        raise RuntimeError("no Postgres server binaries (initdb) under /usr/lib/postgresql")
    return Path(installed[-1]).parent


@contextlib.contextmanager
def rabbitmq_stopped(rabbitmq: PrivateRabbitMQ) -> Iterator[None]:
    rabbitmq.stop()
    try:
        yield
    finally:
        rabbitmq.start()


@contextlib.contextmanager
def postgres_stopped(postgres: PrivatePostgres) -> Iterator[None]:
    postgres.stop()
    try:
        yield
    finally:
        postgres.start()


def shared_server_identities(database_url: str, amqp_url: str) -> dict[str, str | None]:
    """Which process serves the shared Postgres and RabbitMQ, and since when; None for
    one that is not running. Only reads /proc: a restart, even a RabbitMQ
    `stop_app`/`start_app` that keeps its Erlang VM, opens a new listening socket.
    A Postgres on another machine is told by its start time, a RabbitMQ there not at all."""
    identities: dict[str, str | None] = {}
    for url, default_port in ((database_url, 5432), (amqp_url, 5672)):
        parts = urlsplit(url)
        port = parts.port or default_port
        name = f"{'Postgres' if default_port == 5432 else 'RabbitMQ'} at {parts.hostname}:{port}"
        if parts.hostname in LOCAL_HOSTS:
            identities[name] = _listener_identity(port)
        elif default_port == 5432:
            identities[name] = _postmaster_start_time(url)
        else:
            identities[name] = "on another machine: not checked"
    return identities


def _postmaster_start_time(database_url: str) -> str | None:
    try:
        with psycopg.connect(database_url, connect_timeout=10) as conn:
            row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    except psycopg.Error:
        return None
    return f"postmaster started {row[0]}" if row else None


def _listener_identity(port: int) -> str | None:
    """The process listening on `port` on this machine, when it started, and its
    listening sockets; None if nothing listens there."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    return (
        f"process {_socket_owner(inodes) or '(not visible)'}, listening socket(s) {sorted(inodes)}"
    )


def _listening_inodes(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    found.add(inode)
    return found


def _socket_owner(inodes: set[str]) -> str | None:
    """'<pid> started at <boot tick>' of the oldest process holding one of the sockets
    (children may inherit a listener; the one that opened it is the oldest)."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders: list[tuple[int, str]] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone, or not ours to look at
            if not wanted.isdisjoint(_open_files(proc)):
                start_tick = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[19])
                holders.append((start_tick, proc.name))
    if not holders:
        return None
    start_tick, pid = min(holders)
    return f"{pid} started at tick {start_tick}"


def _open_files(proc: Path) -> set[str]:
    """What the process's descriptors point at; one closed meanwhile is skipped."""
    targets = set()
    for fd in (proc / "fd").iterdir():
        with contextlib.suppress(OSError):
            targets.add(os.readlink(fd))
    return targets
