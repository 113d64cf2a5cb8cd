"""Private RabbitMQ nodes on this machine: one alone, or a cluster of several.

`make cluster` runs the system on a three-node cluster of them, and the fault tests
break them (kill -9, stop, restart) instead of the machine's shared broker. A
private node is a separately named node (`<name>-<n>@localhost`) with its own AMQP
and distribution ports on 127.0.0.1, its own data, logs and empty plugin list, all
in one directory removed at the end. Nothing under /etc/rabbitmq is read: the
machine's env file names the shared node and its config a listener on 5672. The
nodes of one cluster share a private epmd (on a port of their own, so they find
each other and nobody else) and one Erlang cookie (HOME is the cluster's
directory); the first node boots alone and the others join it with
`rabbitmqctl join_cluster`. Run as root, the nodes, epmd and rabbitmqctl run as
the `rabbitmq` system user, which owns the directory.

    python -m tools.local_cluster start    # three nodes on 5701-5703; prints TAXI_AMQP_URL
    python -m tools.local_cluster stop     # stops them and removes their data
    python -m tools.local_cluster run -- COMMAND ...   # start, run COMMAND, stop
    python -m tools.local_cluster kill 2   # kill -9 node 2; `restart 2` boots it again

`run` is what `make cluster` uses: COMMAND (honcho with two gateways and the
workers) gets TAXI_AMQP_URL naming every node; when it ends (Ctrl-C, or
`make cluster-stop`, which signals `run`), the nodes are stopped and removed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import glob
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.settings import Settings, SettingsError
from tools.foreground import run_in_foreground
from tools.preflight import port_taken
from tools.private_servers import (
    SERVICE_TIMEOUT_SECONDS,
    Owner,
    PrivateServer,
    as_owner,
    port_open,
    process_alive,
    run_command,
    tail,
    wait_gone,
    wait_until,
)
from tools.processes import free_port, free_port_run

# Generous: a cold start of RabbitMQ on a slow machine with both cores busy takes tens
# of seconds. Every wait is on a condition; these deadlines only end a hopeless wait.
# Each node's open-files limit (or as near as the hard limit allows). Erlang sizes its
# port table from it: too low and the node stalls under load (every connection is a
# descriptor), unbounded (some containers) and start-up crawls.
RABBITMQ_OPEN_FILES = 20_000
RABBITMQ_HOME = Path("/usr/lib/rabbitmq")
RABBITMQ_USER = "rabbitmq"
# rabbitmqctl's own Erlang node listens on one of this many ports from `ctl_port`.
CTL_PORT_RANGE = 10
# RabbitMQ's own convention (5672, 25672, 35672): a node's distribution port is its
# AMQP port + 20000, and rabbitmqctl's ports are from its AMQP port + 30000.
DIST_PORT_OFFSET = 20_000
CTL_PORT_OFFSET = 30_000
# `make cluster`'s defaults, moved with --amqp-port and --epmd-port.
DEFAULT_NODES = 3
DEFAULT_AMQP_PORT = 5701
DEFAULT_EPMD_PORT = 4370
STATE_FILE = "cluster.json"


@dataclass(frozen=True)
class NodePorts:
    amqp: int
    dist: int


@dataclass(frozen=True)
class ClusterPorts:
    """Every port a cluster listens on, on 127.0.0.1."""

    nodes: tuple[NodePorts, ...]
    epmd: int
    ctl: int  # rabbitmqctl's first port, of CTL_PORT_RANGE

    @classmethod
    def from_base(cls, size: int, amqp_port: int, epmd_port: int) -> ClusterPorts:
        """Node n (from 0) on amqp_port + n, its distribution on that + 20000, the
        CLI's from amqp_port + 30000: RabbitMQ's own 5672/25672/35672 pattern."""
        return cls(
            tuple(NodePorts(amqp_port + n, amqp_port + n + DIST_PORT_OFFSET) for n in range(size)),
            epmd_port,
            amqp_port + CTL_PORT_OFFSET,
        )

    @classmethod
    def free(cls, size: int) -> ClusterPorts:
        """Ports free now, for a cluster of the tests'."""
        return cls(
            tuple(NodePorts(free_port(), free_port()) for _ in range(size)),
            free_port(),
            free_port_run(CTL_PORT_RANGE),
        )

    def described(self) -> list[tuple[int, str]]:
        """(port, whose) for each port the nodes and epmd listen on."""
        described = [(self.epmd, "the cluster's epmd")]
        for n, node in enumerate(self.nodes, 1):
            described += [
                (node.amqp, f"RabbitMQ node {n}'s AMQP port"),
                (node.dist, f"RabbitMQ node {n}'s distribution port"),
            ]
        return described


class Epmd:
    """The Erlang port mapper of one private cluster, on its own port on 127.0.0.1."""

    def __init__(self, port: int, base: Path, owner: Owner | None, pid: int | None = None):
        self.port = port
        self.base = base
        self.owner = owner
        self.pid = pid
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return process_alive(self.pid, f"-port {self.port}")

    def start(self) -> None:
        if self.running:
            return
        self._process = subprocess.Popen(
            [_erlang_tool("epmd"), "-port", str(self.port), "-address", "127.0.0.1"],
            cwd=self.base,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            **as_owner(self.owner),
        )
        self.pid = self._process.pid
        wait_until(lambda: port_open(self.port), f"epmd on port {self.port}")

    def stop(self) -> None:
        if self._process is not None:
            _end(self._process)
        elif self.pid is not None and self.running:
            os.kill(self.pid, signal.SIGTERM)
            if not wait_gone(self.pid, f"-port {self.port}", 10):
                os.kill(self.pid, signal.SIGKILL)


class RabbitNode:
    """One private RabbitMQ node: `name@localhost`, its data and log under `base`, its
    Erlang cookie in `home`, registered with the epmd on `epmd_port`."""

    def __init__(
        self,
        name: str,
        base: Path,
        home: Path,
        ports: NodePorts,
        epmd_port: int,
        ctl_port: int,
        owner: Owner | None,
        open_files: int = RABBITMQ_OPEN_FILES,
    ) -> None:
        self.node = f"{name}@localhost"
        self.base = base
        self.home = home
        self.port = ports.amqp
        self.dist_port = ports.dist
        self.epmd_port = epmd_port
        self.ctl_port = ctl_port
        self.owner = owner
        self.open_files = open_files
        self.log = base / "server.log"
        self.pid_file = base / "node.pid"
        self._server: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int | None:
        """The Erlang VM's process id, as the node wrote it at boot."""
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None

    @property
    def node_running(self) -> bool:
        """Whether the Erlang VM of this node runs (serving or not)."""
        if self._server is not None:
            return self._server.poll() is None
        return process_alive(self.pid, self._marker)

    @property
    def _marker(self) -> str:
        """What tells this node's Erlang VM from any other process: its pid file, named
        in its environment (the node's name is not on its command line)."""
        return f"RABBITMQ_PID_FILE={self.pid_file}"

    def write_files(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq-env.conf").write_text(
            "# Empty: the machine's rabbitmq-env.conf names the shared node.\n"
        )
        (self.base / "rabbitmq.conf").write_text(
            "# A private node (tools/local_cluster.py); its listener comes from\n"
            "# RABBITMQ_NODE_IP_ADDRESS and RABBITMQ_NODE_PORT.\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")

    def boot(self, wait: bool = True) -> None:
        """Start the node's Erlang VM in a session of its own (a Ctrl-C in the terminal
        does not reach it); with `wait`, return once it serves."""
        self.pid_file.unlink(missing_ok=True)
        server = RABBITMQ_HOME / "bin" / "rabbitmq-server"
        limit = _open_files_limit(self.open_files)
        with self.log.open("ab") as log:
            self._server = subprocess.Popen(
                ["/bin/sh", "-c", f'ulimit -n {limit} && exec "{server}"'],
                env=self._env(),
                cwd=self.base,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **as_owner(self.owner),
            )
        if wait:
            self.wait_until_serving()

    def wait_until_serving(self) -> None:
        # The listener opens last in the boot; await_startup then confirms the node.
        wait_until(lambda: port_open(self.port), f"RabbitMQ node {self.node} up", self.died)
        self.ctl("await_startup", "--timeout", str(SERVICE_TIMEOUT_SECONDS))

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup", "--timeout", str(SERVICE_TIMEOUT_SECONDS))
        wait_until(lambda: port_open(self.port), f"port {self.port} open", self.died)

    def stop_app(self) -> None:
        """Stop serving; the Erlang node stays up, as in a broker restart."""
        self.ctl("stop_app")
        wait_until(lambda: not port_open(self.port), f"port {self.port} closed")

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM, as a crash would; `boot` starts it again."""
        pid = self.pid
        if pid is None or not self.node_running:
            raise RuntimeError(f"RabbitMQ node {self.node} is not running")
        os.kill(pid, signal.SIGKILL)
        if self._server is not None:
            self._server.wait(SERVICE_TIMEOUT_SECONDS)
        wait_until(lambda: not port_open(self.port), f"port {self.port} closed")

    def shutdown(self) -> None:
        """Stop the Erlang VM: SIGTERM (a clean stop), SIGKILL if it takes too long."""
        pid = self.pid
        marker = self._marker
        if pid is not None and process_alive(pid, marker):
            os.kill(pid, signal.SIGTERM)
            if not wait_gone(pid, marker, 30):
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid, marker, 10)
        if self._server is not None:
            _end(self._server)

    def died(self) -> str | None:
        if self.node_running:
            return None
        return tail(self.log)

    def ctl(self, *args: str) -> str:
        """rabbitmqctl against this node only: its name, its epmd port and its cookie."""
        rabbitmqctl = str(RABBITMQ_HOME / "bin" / "rabbitmqctl")
        return run_command(
            [rabbitmqctl, "-n", self.node, "-q", *args],
            env=self._env(),
            cwd=self.base,
            **as_owner(self.owner),
        )

    def _env(self) -> dict[str, str]:
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("RABBITMQ_", "ERL_")) and name not in ("HOME", "LOGNAME")
        }
        return {
            **inherited,
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_port + CTL_PORT_RANGE - 1),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
        }


class LocalCluster(PrivateServer):
    """`size` private nodes `<name>-1@localhost` ... clustered with `join_cluster`, in
    `base` (a new temporary directory unless given), removed with their data on exit.

    `kill(n)` crashes node n (kill -9); `restart(n)` boots it again on its data, and it
    rejoins the cluster by itself, as a real node coming back would.
    """

    def __init__(
        self,
        size: int = DEFAULT_NODES,
        ports: ClusterPorts | None = None,
        base: Path | None = None,
        name: str | None = None,
        open_files: int = RABBITMQ_OPEN_FILES,
    ) -> None:
        self.ports = ports or ClusterPorts.free(size)
        if len(self.ports.nodes) != size:
            raise ValueError(f"{size} nodes but ports for {len(self.ports.nodes)}")
        self.name = name or f"taxi-test-{secrets.token_hex(4)}"
        if base is None:
            base = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.base = base
        self.owner = Owner.named(RABBITMQ_USER)
        self.epmd = Epmd(self.ports.epmd, self.base, self.owner)
        self.supervisor_pid: int | None = None
        self.nodes = [
            RabbitNode(
                self.node_name(n),
                self.base / f"node-{n + 1}",
                self.base,
                node_ports,
                self.ports.epmd,
                self.ports.ctl,
                self.owner,
                open_files,
            )
            for n, node_ports in enumerate(self.ports.nodes)
        ]

    def node_name(self, index: int) -> str:
        return f"{self.name}-{index + 1}"

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def amqp_url(self) -> str:
        """Every node, comma-separated, as TAXI_AMQP_URL takes them."""
        return ",".join(self.urls)

    # Start and stop

    def start(self) -> None:
        """Boot every node at once, join the others to the first, and return when the
        cluster runs on all of them."""
        self.base.mkdir(parents=True, exist_ok=True)
        cookie = self.base / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20).upper())
            cookie.chmod(0o400)
        for node in self.nodes:
            node.write_files()
        if self.owner is not None:
            self.owner.give(self.base)
        self.save()
        self.epmd.start()
        self.save()
        try:
            self._boot_and_join()
        except (RuntimeError, subprocess.TimeoutExpired) as failed:
            raise RuntimeError(f"{failed}\n{self.diagnosis()}") from failed

    def _boot_and_join(self) -> None:
        for node in self.nodes:
            node.boot(wait=False)
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(RabbitNode.wait_until_serving, self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
        self.wait_until_clustered()

    def diagnosis(self, tail_lines: int = 15) -> str:
        """What a failed start leaves to go on: whether the cluster's epmd still runs
        and which nodes it knows, and each node's state and the end of its logs."""
        lines = [f"epmd on port {self.epmd.port}: {'runs' if self.epmd.running else 'gone'}"]
        with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
            epmd = _erlang_tool("epmd")
            lines.append(run_command([epmd, "-port", str(self.epmd.port), "-names"]).strip())
        for node in self.nodes:
            state = "runs" if node.node_running else "not running"
            lines.append(f"{node.node} (AMQP {node.port}, distribution {node.dist_port}): {state}")
            for log in [node.log, *sorted((node.base / "log").glob("*.log"))]:
                lines.append(f"-- {log}:\n{tail(log, tail_lines)}")
        return "\n".join(lines)

    def remove(self) -> None:
        """Stop every node and epmd, and delete the data."""
        try:
            with concurrent.futures.ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
                list(pool.map(RabbitNode.shutdown, self.nodes))
            self.epmd.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        """Boot node `index` again on its data; return once it is back in the cluster
        and every quorum queue has it as a member online again: only then may another
        node go without the queues losing their majority."""
        self.nodes[index].boot()
        self.wait_until_clustered()
        wait_until(self.quorum_queues_whole, "every quorum queue with all its members online")

    def quorum_queues_whole(self) -> bool:
        """Whether every quorum queue has all of its members online."""
        for node in self.nodes:
            if node.node_running and port_open(node.port):
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, ValueError):
                    queues = json.loads(
                        node.ctl(
                            "list_queues",
                            "name",
                            "type",
                            "members",
                            "online",
                            "--formatter",
                            "json",
                        )
                    )
                    return all(
                        set(queue.get("online") or []) == set(queue.get("members") or [])
                        for queue in queues
                        if queue.get("type") == "quorum"
                    )
        return False

    def running_nodes(self) -> set[str]:
        """The nodes the cluster counts as running, as a running member reports them."""
        for node in self.nodes:
            if node.node_running and port_open(node.port):
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    status = json.loads(node.ctl("cluster_status", "--formatter", "json"))
                    return set(status.get("running_nodes", []))
        return set()

    def wait_until_clustered(self) -> None:
        wanted = {node.node for node in self.nodes}
        wait_until(
            lambda: self.running_nodes() == wanted,
            f"RabbitMQ cluster {', '.join(sorted(wanted))} all running",
        )

    # A cluster started by one process and stopped by another (`start`, then `stop`).

    def save(self) -> None:
        state = {
            "name": self.name,
            "nodes": [[p.amqp, p.dist] for p in self.ports.nodes],
            "epmd": self.ports.epmd,
            "ctl": self.ports.ctl,
            "epmd_pid": self.epmd.pid,
            "supervisor_pid": self.supervisor_pid,
        }
        (self.base / STATE_FILE).write_text(json.dumps(state))

    @classmethod
    def load(cls, base: Path) -> LocalCluster | None:
        """The cluster whose state is in `base`, or None if there is none."""
        try:
            state = json.loads((base / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        ports = ClusterPorts(
            tuple(NodePorts(amqp, dist) for amqp, dist in state["nodes"]),
            state["epmd"],
            state["ctl"],
        )
        cluster = cls(len(ports.nodes), ports, base, state["name"])
        cluster.epmd.pid = state.get("epmd_pid")
        cluster.supervisor_pid = state.get("supervisor_pid")
        return cluster


class PrivateRabbitMQ(LocalCluster):
    """One private node, `taxi-test-<random>-1@localhost`, on free ports, for the tests
    that stop or kill the broker under the system."""

    def __init__(self) -> None:
        super().__init__(size=1)

    @property
    def node(self) -> str:
        return self.nodes[0].node

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def log(self) -> Path:
        return self.nodes[0].log

    @property
    def node_running(self) -> bool:
        return self.nodes[0].node_running

    def start(self) -> None:
        """Serve again: start the application if the node runs, else boot the node."""
        if self.node_running:
            self.nodes[0].start_app()
        else:
            super().start()

    def stop(self) -> None:
        """Stop serving (`stop_app`); the Erlang node stays up, as in a broker restart."""
        self.nodes[0].stop_app()

    def kill(self, index: int = 0) -> None:
        """SIGKILL the node's Erlang VM, as a crash would; `start` boots it again."""
        self.nodes[index].kill()


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
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


def _open_files_limit(wanted: int) -> int:
    """`wanted`, or as near as this process's hard limit allows."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)


# The command line: `make cluster` and `make cluster-stop`.


def default_dir(amqp_port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"taxi-cluster-{amqp_port}"


def system_ports(settings: Settings, workers: int) -> list[tuple[int, str, str]]:
    """(port, whose, the setting that moves it) for the processes `make cluster` starts:
    gateway 1 on TAXI_PORT with its metrics on TAXI_METRICS_PORT, the workers' metrics
    on the ports after it (as `make run`), gateway 2 on TAXI_PORT + 1 with its metrics
    after the workers'."""
    return [
        (settings.port, "gateway 1's", "TAXI_PORT"),
        (settings.port + 1, "gateway 2's", "TAXI_PORT"),
        (settings.metrics_port, "gateway 1's metrics", "TAXI_METRICS_PORT"),
        *(
            (settings.metrics_port + n, f"worker {n}'s metrics", "TAXI_METRICS_PORT")
            for n in range(1, workers + 1)
        ),
        (settings.metrics_port + workers + 1, "gateway 2's metrics", "TAXI_METRICS_PORT"),
    ]


def taken_port(
    ports: ClusterPorts, settings: Settings | None = None, workers: int = 0
) -> str | None:
    """One line about the first port the cluster (and, given `settings`, the processes
    `make cluster` starts on it) needs that something else holds."""
    wanted = [
        (port, whose, "CLUSTER_EPMD_PORT" if "epmd" in whose else "CLUSTER_AMQP_PORT", "127.0.0.1")
        for port, whose in ports.described()
    ]
    if settings is not None:
        wanted = [
            (port, whose, setting, settings.host)
            for port, whose, setting in system_ports(settings, workers)
        ] + wanted
    for port, whose, setting, host in wanted:
        if not 0 < port < 65536:
            return f"port {port} ({whose} port) is not a port: set {setting} to move it"
        if port_taken(host, port):
            return f"port {port} on {host} ({whose} port) is taken: set {setting} to move it"
    return None


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"configuration error: {exc}")


def check(args: argparse.Namespace, *, system: bool) -> None:
    """Before anything starts: RabbitMQ installed, the ports free, and with `system`
    (the gateways and workers too) their ports free and Patroni and etcd installed."""
    if not (RABBITMQ_HOME / "bin" / "rabbitmq-server").exists():
        sys.exit(f"no RabbitMQ under {RABBITMQ_HOME}: apt-get install rabbitmq-server")
    ports = ClusterPorts.from_base(args.nodes, args.amqp_port, args.epmd_port)
    settings = _settings() if system else None
    if problem := taken_port(ports, settings, args.workers):
        sys.exit(problem)
    if settings is not None:
        from tools import local_postgres  # it imports this module

        local_postgres.check()


def start(args: argparse.Namespace, supervisor_pid: int | None = None) -> LocalCluster:
    base = Path(args.dir) if args.dir else default_dir(args.amqp_port)
    if (existing := LocalCluster.load(base)) is not None and any(
        node.node_running for node in existing.nodes
    ):
        sys.exit(f"a cluster runs from {base} already: `make cluster-stop` first")
    shutil.rmtree(base, ignore_errors=True)  # what a crashed run left
    base.mkdir(parents=True)
    cluster = LocalCluster(
        args.nodes,
        ClusterPorts.from_base(args.nodes, args.amqp_port, args.epmd_port),
        base,
        name=f"taxi-cluster-{args.amqp_port}",
    )
    cluster.supervisor_pid = supervisor_pid
    print(f"starting {args.nodes} RabbitMQ nodes in {base}", flush=True)
    started = time.monotonic()
    try:
        cluster.start()
    except BaseException:
        cluster.remove()
        raise
    for node in cluster.nodes:
        print(f"  {node.node}: {node.url} (log {node.log})", flush=True)
    print(
        f"cluster of {args.nodes} running after {time.monotonic() - started:.0f}s\n"
        f"TAXI_AMQP_URL={cluster.amqp_url}",
        flush=True,
    )
    return cluster


def stop(args: argparse.Namespace) -> None:
    base = Path(args.dir) if args.dir else default_dir(args.amqp_port)
    cluster = LocalCluster.load(base)
    if cluster is None:
        print(f"no cluster in {base}")
        shutil.rmtree(base, ignore_errors=True)
        return
    supervisor = cluster.supervisor_pid
    if supervisor is not None and process_alive(supervisor, "tools.local_cluster"):
        # `make cluster` runs: it stops its processes, then the nodes, and cleans up.
        os.kill(supervisor, signal.SIGTERM)
        if wait_gone(supervisor, "tools.local_cluster", 60) and not base.exists():
            print(f"stopped the cluster of {base}")
            return
    cluster.remove()
    print(f"stopped the cluster of {base} and removed its data")


def kill_or_restart(args: argparse.Namespace) -> None:
    """Crash one node (kill -9) or boot it again, to watch the system ride it out."""
    base = Path(args.dir) if args.dir else default_dir(args.amqp_port)
    cluster = LocalCluster.load(base)
    if cluster is None:
        sys.exit(f"no cluster in {base}: `make cluster` first")
    if args.node is None or not 1 <= args.node <= len(cluster.nodes):
        sys.exit(f"{args.action}: name a node, 1 to {len(cluster.nodes)}")
    node = cluster.nodes[args.node - 1]
    started = time.monotonic()
    if args.action == "kill":
        node.kill()
        print(f"killed {node.node} (kill -9)")
    else:
        if node.node_running:
            sys.exit(f"{node.node} runs already")
        cluster.restart(args.node - 1)
        print(f"{node.node} back in the cluster after {time.monotonic() - started:.0f}s")


def run(args: argparse.Namespace) -> int:
    """Start the cluster, run the command on it, and remove the cluster when it ends."""
    command: list[str] = args.command
    if not command:
        sys.exit("run: give the command to run on the cluster after --")
    settings = _settings()
    cluster = start(args, supervisor_pid=os.getpid())
    env = {
        **os.environ,
        "TAXI_AMQP_URL": cluster.amqp_url,
        "TAXI_PORT": str(settings.port),
        "TAXI_METRICS_PORT": str(settings.metrics_port),
        "CLUSTER_GATEWAY2_PORT": str(settings.port + 1),
        "CLUSTER_GATEWAY2_METRICS_PORT": str(settings.metrics_port + args.workers + 1),
    }
    # Ctrl-C and `make cluster-stop` (SIGTERM to this process) reach the command, which
    # stops its processes; a stop so asked for is status 0 (tools.foreground).
    from tools import local_postgres  # it imports this module

    postgres = None
    try:
        postgres = local_postgres.start_for_cluster(cluster.base, settings.database_name)
        env["TAXI_DATABASE_URL"] = postgres.url(settings.database_name)
        status = run_in_foreground(command, env=env)
    finally:
        if postgres is not None:
            print("stopping the Postgres cluster", flush=True)
            postgres.remove()
        print("stopping the RabbitMQ cluster", flush=True)
        cluster.remove()
        print(f"cluster stopped; {cluster.base} removed", flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.local_cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("start", "stop", "run", "check", "kill", "restart"))
    parser.add_argument("node", nargs="?", type=int, help="kill/restart: the node, from 1")
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES)
    parser.add_argument(
        "--amqp-port",
        type=int,
        default=DEFAULT_AMQP_PORT,
        help="node n's AMQP port is this + n - 1, its distribution port that + 20000",
    )
    parser.add_argument("--epmd-port", type=int, default=DEFAULT_EPMD_PORT)
    parser.add_argument(
        "--workers", type=int, default=3, help="run/check: the workers whose ports to check"
    )
    parser.add_argument("--dir", help="where the nodes keep their data (default: a temp dir)")
    parser.epilog = "run: the command to run on the cluster follows --"
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.command = command
    if args.action == "check":
        check(args, system=True)
    elif args.action == "start":
        check(args, system=False)
        start(args)
    elif args.action == "stop":
        stop(args)
        from tools import local_postgres  # it imports this module

        local_postgres.stop_for_cluster(Path(args.dir) if args.dir else default_dir(args.amqp_port))
    elif args.action in ("kill", "restart"):
        kill_or_restart(args)
    else:
        check(args, system=True)
        sys.exit(run(args))


if __name__ == "__main__":
    main()
