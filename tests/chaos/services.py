"""Throwaway Postgres and RabbitMQ servers for the fault tests that stop them, and a
read-only look at the machine's shared ones to prove the suite left those alone.

A fault test never stops, kills or restarts the shared Postgres or RabbitMQ: other
runs and other people use them. It breaks a private server instead, which the test
session starts on free ports with a data directory of its own and removes at the end:
`PrivatePostgres` (initdb and pg_ctl) and `PrivateRabbitMQ` (a separately named node
with its own ports, Erlang cookie, epmd and data directory; nothing of
/etc/rabbitmq is read). Every stop is paired with a start in a `finally`, so a
failing test still leaves the private server serving for the tests after it.

`shared_server_identities` says which process serves the shared Postgres and
RabbitMQ, and since when; tests/conftest.py compares it at the start and the end of
the run and fails the run if either changed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import psycopg

from shared.processes import free_port, free_port_run

# Generous: a cold start of RabbitMQ on a slow machine with both cores busy takes tens
# of seconds. Every wait is on a condition; these deadlines only end a hopeless wait.
SERVICE_TIMEOUT_SECONDS = 180
POLL_SECONDS = 0.2
# Erlang sizes its port table from the open-files limit: too low and the node stalls
# under load, unbounded (some containers) and start-up crawls.
RABBITMQ_OPEN_FILES = 65536
RABBITMQ_HOME = Path("/usr/lib/rabbitmq")
LOCAL_HOSTS = (None, "", "127.0.0.1", "localhost", "::1")


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def _wait_until(
    condition: Callable[[], bool], what: str, alive: Callable[[], str | None] | None = None
) -> None:
    """Poll `condition` until it holds; fail at the deadline, or at once if `alive`
    reports (with its log) that the server process died."""
    deadline = time.monotonic() + SERVICE_TIMEOUT_SECONDS
    while not condition():
        died = alive() if alive is not None else None
        if died is not None:
            raise RuntimeError(f"{what}: the server exited\n{died}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {SERVICE_TIMEOUT_SECONDS}s")
        time.sleep(POLL_SECONDS)


def _run(command: list[str], **kwargs: Any) -> str:
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=SERVICE_TIMEOUT_SECONDS,
        check=False,
        **kwargs,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stdout}{result.stderr}")
    return str(result.stdout)


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class PrivateServer:
    """A throwaway server of the test session's own: started on entry, and stopped and
    removed with its data on exit, even when starting it failed halfway."""

    def start(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()


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
        _wait_until(self.is_ready, f"private Postgres on port {self.port} ready")

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(SERVICE_TIMEOUT_SECONDS))
        _wait_until(lambda: not _port_open(self.port), f"port {self.port} closed")

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
            _run(list(command), cwd=self.base, env=env)
        else:
            _run(
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


class PrivateRabbitMQ(PrivateServer):
    """A RabbitMQ node of its own, `taxi-test-<random>@localhost`: its own AMQP,
    distribution and epmd ports on 127.0.0.1, its own Erlang cookie (HOME is its
    directory), data, logs and an empty plugin list, all in a temporary directory
    removed on exit. Nothing under /etc/rabbitmq is read: the machine's env file
    names the shared node and its config a listener on 5672."""

    def __init__(self) -> None:
        self.node = f"taxi-test-{secrets.token_hex(4)}@localhost"
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="taxi-test-rabbitmq-"))
        self.log = self.base / "server.log"
        self.pid_file = self.base / "node.pid"
        self._epmd_port = free_port()
        self._dist_port = free_port()
        self._ctl_ports = free_port_run(10)
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._write_files()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        """Serve again: start the application if the node runs, else boot the node."""
        if self.node_running:
            self._ctl("start_app")
            self._ctl("await_startup", "--timeout", str(SERVICE_TIMEOUT_SECONDS))
            _wait_until(lambda: _port_open(self.port), f"port {self.port} open", self._died)
        else:
            self._boot()

    def stop(self) -> None:
        """Stop serving (`stop_app`); the Erlang node stays up, as in a broker restart."""
        self._ctl("stop_app")
        _wait_until(lambda: not _port_open(self.port), f"port {self.port} closed")

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM, as a crash would; `start` boots it again."""
        os.kill(int(self.pid_file.read_text().strip()), signal.SIGKILL)
        assert self._server is not None
        self._server.wait(SERVICE_TIMEOUT_SECONDS)

    @property
    def node_running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    def remove(self) -> None:
        try:
            if self.node_running:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self._ctl("stop", str(self.pid_file))
                self._end(self._server)
            self._end(self._epmd)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def _boot(self) -> None:
        if self._epmd is None or self._epmd.poll() is not None:
            self._epmd = subprocess.Popen(
                [_erlang_tool("epmd"), "-port", str(self._epmd_port), "-address", "127.0.0.1"],
                env=self._env(),
                cwd=self.base,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = RABBITMQ_HOME / "bin" / "rabbitmq-server"
        with self.log.open("ab") as log:
            self._server = subprocess.Popen(
                ["/bin/sh", "-c", f'ulimit -n {_open_files_limit()} && exec "{server}"'],
                env=self._env(),
                cwd=self.base,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # The listener opens last in the boot; await_startup then confirms the node.
        _wait_until(lambda: _port_open(self.port), f"RabbitMQ node {self.node} up", self._died)
        self._ctl("await_startup", "--timeout", str(SERVICE_TIMEOUT_SECONDS))

    def _died(self) -> str | None:
        if self.node_running:
            return None
        return _tail(self.log)

    def _ctl(self, *args: str) -> str:
        """rabbitmqctl against this node only: its name, its epmd port and its cookie."""
        rabbitmqctl = str(RABBITMQ_HOME / "bin" / "rabbitmqctl")
        return _run([rabbitmqctl, "-n", self.node, "-q", *args], env=self._env(), cwd=self.base)

    def _env(self) -> dict[str, str]:
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("RABBITMQ_", "ERL_"))
        }
        return {
            **inherited,
            "HOME": str(self.base),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self._ctl_ports),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self._ctl_ports + 9),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_PORT": str(self._epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
        }

    def _write_files(self) -> None:
        (self.base / "rabbitmq-env.conf").write_text(
            "# Empty: the machine's rabbitmq-env.conf names the shared node.\n"
        )
        (self.base / "rabbitmq.conf").write_text(
            "# A private node of the fault tests (tests/chaos/services.py); listener from\n"
            "# RABBITMQ_NODE_IP_ADDRESS and RABBITMQ_NODE_PORT.\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        cookie = self.base / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)

    @staticmethod
    def _end(process: subprocess.Popen[bytes] | None) -> None:
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(SERVICE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(SERVICE_TIMEOUT_SECONDS)


def _erlang_tool(name: str) -> str:
    found = shutil.which(name) or next(iter(glob.glob(f"/usr/lib/erlang/erts-*/bin/{name}")), None)
    if found is None:
        raise RuntimeError(f"no {name} found (is Erlang installed?)")
    return found


def _open_files_limit() -> int:
    """RABBITMQ_OPEN_FILES, or as near as this process's hard limit allows."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return RABBITMQ_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, RABBITMQ_OPEN_FILES)


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
