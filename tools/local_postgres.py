"""A Postgres that fails over, on this machine: Patroni with a private etcd, managing a
primary and a synchronous standby of private Postgres servers.

`make cluster` starts one beside its RabbitMQ nodes (tools/local_cluster.py) and gives
every process its two servers in TAXI_DATABASE_URL, libpq style
(`postgresql://postgres@127.0.0.1:P1,127.0.0.1:P2/taxi?target_session_attrs=read-write`);
the fault test tests/chaos/test_postgres_failover.py and `make bench SCENARIO=cluster`
kill -9 its primary mid-burst. Everything (etcd's data, both data directories, Patroni's
configuration and logs) lives in one directory, removed at the end; every port is a
free one (tools.processes.free_port), on 127.0.0.1 only. Nothing of the machine's own
Postgres (its port, /etc/postgresql, its data) is touched. Run as root, Patroni (and so
Postgres) runs as the `postgres` system user, which owns the directory.

Patroni's settings (`DCS`): `synchronous_mode` so a commit is acknowledged only once the
standby has it, and `primary_start_timeout: 0` so a crashed primary is failed over at
once rather than restarted in place; `loop_wait` (how often each Patroni looks) bounds
how long that takes. `ttl` only matters when a whole node (Patroni included) dies: its
leader key then expires after `ttl` seconds.

    python -m tools.local_postgres start --dir D   # prints TAXI_DATABASE_URL
    python -m tools.local_postgres kill --dir D    # kill -9 the primary's Postgres
    python -m tools.local_postgres stop --dir D    # stops everything, removes D
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.migrate import migrate
from tools.private_servers import (
    SERVICE_TIMEOUT_SECONDS,
    Owner,
    PrivateServer,
    port_open,
    process_alive,
    tail,
    wait_until,
)
from tools.processes import free_port

# Patroni's dynamic configuration, written to etcd at bootstrap. Patroni's minimum ttl
# is 20 s; loop_wait 1 s and retry_timeout 5 s keep within ttl > loop_wait + 2 *
# retry_timeout, as its docs ask.
DCS: dict[str, Any] = {
    "ttl": 20,
    "loop_wait": 1,
    "retry_timeout": 5,
    "primary_start_timeout": 0,
    "synchronous_mode": True,
    "maximum_lag_on_failover": 1_048_576,
    "postgresql": {
        "use_pg_rewind": True,
        "parameters": {
            "max_connections": 200,
            "shared_buffers": "64MB",
            "wal_keep_size": "128MB",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "hot_standby": "on",
        },
    },
}
POSTGRES_USER = "postgres"
STATE_FILE = "postgres.json"
NODES = 2
MARKER = "taxi-local-postgres"
REQUIRED = {"patroni": "patroni", "etcd": "etcd-server", "etcdctl": "etcd-client"}


def missing_packages() -> list[str]:
    """The Debian packages whose programs are not on PATH."""
    return [package for program, package in REQUIRED.items() if shutil.which(program) is None]


def ensure_installed() -> None:
    """Patroni and etcd there, installed with apt as root; otherwise one line naming them."""
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(
            f"{', '.join(missing)} missing: the local Postgres cluster runs Patroni on etcd "
            f"(as root: apt-get install {' '.join(missing)})"
        )
    print(f"installing {' '.join(missing)} (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    # Debian starts the packaged etcd and Patroni services; ours are private.
    if missing_packages():
        sys.exit(f"{', '.join(missing_packages())} still missing after apt-get install")


def postgres_bindir() -> Path:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        sys.exit("no Postgres server under /usr/lib/postgresql: apt-get install postgresql")
    return candidates[-1].parent


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    postgres: tuple[int, ...]
    rest: tuple[int, ...]

    @classmethod
    def free(cls, nodes: int = NODES) -> Ports:
        return cls(
            free_port(),
            free_port(),
            tuple(free_port() for _ in range(nodes)),
            tuple(free_port() for _ in range(nodes)),
        )


def _owner() -> Owner | None:
    if os.geteuid() != 0:
        return None
    user = pwd.getpwnam(POSTGRES_USER)
    return Owner(user.pw_uid, user.pw_gid)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


class PostgresCluster(PrivateServer):
    """etcd and one Patroni per node in `base`; `url()` names every node."""

    def __init__(self, base: Path | None = None, ports: Ports | None = None) -> None:
        self.ports = ports or Ports.free()
        self.base = base or Path(tempfile.mkdtemp(prefix="taxi-postgres-"))
        self.scope = f"{MARKER}-{self.ports.etcd_client}"
        self.owner = _owner()
        self.etcd_pid: int | None = None
        self.patroni_pids: list[int | None] = [None] * len(self.ports.postgres)
        self._children: list[subprocess.Popen[bytes]] = []

    # Addresses

    def url(self, database: str = "taxi") -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports.postgres)
        return f"postgresql://{POSTGRES_USER}@{hosts}/{database}?target_session_attrs=read-write"

    def node_url(self, index: int, database: str = "postgres") -> str:
        return f"postgresql://{POSTGRES_USER}@127.0.0.1:{self.ports.postgres[index]}/{database}"

    def node_dir(self, index: int) -> Path:
        return self.base / f"node-{index + 1}"

    def log(self, index: int) -> Path:
        return self.node_dir(index) / "patroni.log"

    # What Patroni says

    def members(self) -> list[dict[str, Any]]:
        """Patroni's view of the cluster (GET /cluster on any node that answers)."""
        for port in self.ports.rest:
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                members = _get_json(f"http://127.0.0.1:{port}/cluster").get("members", [])
                return list(members)
        return []

    def primary(self) -> int | None:
        """The index of the node Patroni runs as the primary, if one runs."""
        for member in self.members():
            if member.get("role") == "leader" and member.get("state") == "running":
                return self._index_of(member)
        return None

    def healthy(self) -> bool:
        """A running primary and a synchronous standby streaming from it."""
        members = self.members()
        roles = {(m.get("role"), m.get("state") in ("running", "streaming")) for m in members}
        return ("leader", True) in roles and ("sync_standby", True) in roles

    def standby_of(self, primary: int) -> bool:
        """Whether every node but `primary` follows it as a synchronous standby."""
        members = self.members()
        if len(members) != len(self.ports.postgres) or self.primary() != primary:
            return False
        return all(
            m.get("role") == "sync_standby" and m.get("state") in ("running", "streaming")
            for m in members
            if self._index_of(m) != primary
        )

    def _index_of(self, member: dict[str, Any]) -> int:
        return int(str(member["name"]).rsplit("-", 1)[1]) - 1

    # Start and stop

    def start(self) -> None:
        ensure_installed()
        bindir = postgres_bindir()
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "etcd").mkdir(exist_ok=True)
        for index in range(len(self.ports.postgres)):
            self.node_dir(index).mkdir(exist_ok=True)
            self._write_config(index, bindir)
        if self.owner is not None:
            self.owner.give(self.base)
        self.save()
        self._start_etcd()
        self.save()
        for index in range(len(self.ports.postgres)):
            self.patroni_pids[index] = self._start_patroni(index)
        self.save()
        wait_until(self.healthy, "Patroni: a primary and a synchronous standby", self._died)

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        command = [
            "etcd",
            "--name",
            self.scope,
            "--data-dir",
            str(self.base / "etcd"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{self.scope}={peer}",
            "--initial-cluster-token",
            self.scope,
        ]
        log = (self.base / "etcd.log").open("ab")
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self._env(),
            **(self.owner.popen_args() if self.owner else {}),
        )
        log.close()
        self._children.append(process)
        self.etcd_pid = process.pid
        wait_until(
            lambda: port_open(self.ports.etcd_client),
            f"etcd on port {self.ports.etcd_client}",
            lambda: None if process.poll() is None else tail(self.base / "etcd.log"),
        )

    def _start_patroni(self, index: int) -> int:
        log = self.log(index).open("ab")
        process = subprocess.Popen(
            ["patroni", str(self.node_dir(index) / "patroni.yml")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.node_dir(index),
            env=self._env(),
            **(self.owner.popen_args() if self.owner else {}),
        )
        log.close()
        self._children.append(process)
        return process.pid

    def _env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.base),
            "LANG": "C.UTF-8",
            "TAXI_LOCAL_POSTGRES": self.scope,  # what process_alive looks for
        }

    def _died(self) -> str | None:
        for index, pid in enumerate(self.patroni_pids):
            if pid is not None and not process_alive(pid, self.scope):
                return f"Patroni of node {index + 1} exited:\n{tail(self.log(index))}"
        if self.etcd_pid is not None and not process_alive(self.etcd_pid, self.scope):
            return f"etcd exited:\n{tail(self.base / 'etcd.log')}"
        return None

    def _write_config(self, index: int, bindir: Path) -> None:
        node = self.node_dir(index)
        port = self.ports.postgres[index]
        rest = self.ports.rest[index]
        config = {
            "scope": self.scope,
            "name": f"{self.scope}-{index + 1}",
            "log": {"level": "INFO"},
            "restapi": {"listen": f"127.0.0.1:{rest}", "connect_address": f"127.0.0.1:{rest}"},
            "etcd3": {"hosts": [f"127.0.0.1:{self.ports.etcd_client}"]},
            "bootstrap": {
                "dcs": DCS,
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, {"auth": "trust"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{port}",
                "connect_address": f"127.0.0.1:{port}",
                "data_dir": str(node / "data"),
                "bin_dir": str(bindir),
                "pgpass": str(node / "pgpass"),
                "authentication": {
                    "superuser": {"username": POSTGRES_USER},
                    "replication": {"username": POSTGRES_USER},
                    "rewind": {"username": POSTGRES_USER},
                },
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
                "parameters": {"unix_socket_directories": str(node)},
            },
        }
        # JSON is YAML: Patroni reads it as its configuration file.
        (node / "patroni.yml").write_text(json.dumps(config, indent=2))

    def postmaster_pid(self, index: int) -> int | None:
        try:
            text = (self.node_dir(index) / "data" / "postmaster.pid").read_text()
            return int(text.split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill_primary(self) -> int:
        """kill -9 the primary's Postgres, postmaster and every backend at once, as a
        crash of the server would; Patroni, still running, fails over to the standby.
        Returns the index of the node killed."""
        primary = self.primary()
        if primary is None:
            raise RuntimeError("no primary to kill")
        postmaster = self.postmaster_pid(primary)
        if postmaster is None:
            raise RuntimeError(f"node {primary + 1} has no postmaster.pid")
        victims = [postmaster, *_children_of(postmaster)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: not port_open(self.ports.postgres[primary]),
            f"port {self.ports.postgres[primary]} closed",
        )
        return primary

    def remove(self) -> None:
        """Stop Patroni (which stops its Postgres), etcd, any Postgres left, and delete
        the directory."""
        try:
            for pid in self.patroni_pids:
                _terminate(pid, self.scope, 30)
            for index in range(len(self.ports.postgres)):
                # A postmaster.pid left by a kill -9 names a pid the machine may have
                # given to any process since; the scope in its environment (Patroni's,
                # inherited) says it is still our postmaster.
                pid = self.postmaster_pid(index)
                if pid is not None and process_alive(pid, self.scope):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGQUIT)  # immediate shutdown
                    _terminate(pid, self.scope, 10)
            _terminate(self.etcd_pid, self.scope, 10)
            for child in self._children:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(5)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def save(self) -> None:
        state = {
            "ports": asdict(self.ports),
            "etcd_pid": self.etcd_pid,
            "patroni_pids": self.patroni_pids,
        }
        (self.base / STATE_FILE).write_text(json.dumps(state))

    @classmethod
    def load(cls, base: Path) -> PostgresCluster | None:
        try:
            state = json.loads((base / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        raw = state["ports"]
        ports = Ports(
            raw["etcd_client"], raw["etcd_peer"], tuple(raw["postgres"]), tuple(raw["rest"])
        )
        cluster = cls(base, ports)
        cluster.etcd_pid = state.get("etcd_pid")
        cluster.patroni_pids = list(state.get("patroni_pids") or [])
        return cluster


def _children_of(parent: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                children.append(int(stat.parent.name))
    return children


def _terminate(pid: int | None, marker: str, seconds: float) -> None:
    """SIGTERM, then SIGKILL if it has not gone within `seconds`."""
    if pid is None or not process_alive(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while process_alive(pid, marker):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + SERVICE_TIMEOUT_SECONDS
        time.sleep(0.1)


# The hooks tools/local_cluster.py calls for `make cluster`


def cluster_dir(cluster_base: Path) -> Path:
    """Where `make cluster` keeps its Postgres cluster: beside the RabbitMQ nodes'."""
    return cluster_base.with_name(f"{cluster_base.name}-postgres")


def check() -> None:
    """Before `make cluster` starts anything: Patroni and etcd installed (or installed)."""
    ensure_installed()
    postgres_bindir()


def start_for_cluster(cluster_base: Path, database: str) -> PostgresCluster:
    base = cluster_dir(cluster_base)
    if (existing := PostgresCluster.load(base)) is not None and existing.primary() is not None:
        sys.exit(f"a Postgres cluster runs from {base} already: `make cluster-stop` first")
    if existing is not None:
        existing.remove()  # what a crashed run left
    shutil.rmtree(base, ignore_errors=True)
    print(f"starting Patroni, etcd and two Postgres servers in {base}", flush=True)
    started = time.monotonic()
    cluster = PostgresCluster(base)
    try:
        cluster.start()
    except BaseException:
        cluster.remove()
        raise
    try:
        applied = migrate(cluster.url(database))
    except BaseException:
        cluster.remove()
        raise
    print(
        f"Postgres primary and synchronous standby running after "
        f"{time.monotonic() - started:.0f}s ({applied} migration(s) applied)\n"
        f"TAXI_DATABASE_URL={cluster.url(database)}",
        flush=True,
    )
    return cluster


def stop_for_cluster(cluster_base: Path) -> None:
    base = cluster_dir(cluster_base)
    cluster = PostgresCluster.load(base)
    if cluster is not None:
        cluster.remove()
        print(f"stopped the Postgres cluster of {base} and removed its data")
    shutil.rmtree(base, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.local_postgres",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("start", "stop", "kill", "status"))
    parser.add_argument("--dir", required=True, help="where the cluster keeps everything")
    parser.add_argument("--database", default="taxi")
    args = parser.parse_args(argv)
    base = Path(args.dir)
    if args.action == "start":
        cluster = PostgresCluster(base)
        try:
            cluster.start()
        except BaseException:
            cluster.remove()
            raise
        print(f"TAXI_DATABASE_URL={cluster.url(args.database)}")
        return
    loaded = PostgresCluster.load(base)
    if loaded is None:
        sys.exit(f"no Postgres cluster in {base}")
    if args.action == "stop":
        loaded.remove()
    elif args.action == "kill":
        print(f"killed node {loaded.kill_primary() + 1} (kill -9), the primary")
    else:
        print(json.dumps(loaded.members(), indent=2))


if __name__ == "__main__":
    main()
