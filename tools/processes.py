"""Starting the system's own processes on this machine: the gateway over uvicorn and
dispatcher workers, each a `python -m` child with given settings and its own log.

The benchmark (`bench/`) and the end-to-end, fault and browser tests start their
systems through this one module.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from shared.settings import Settings

READY_TIMEOUT_SECONDS = 30
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Where runs of ports for later are taken from, up to the ephemeral range: above the
# well-known services' ports.
LISTEN_PORTS_FROM = 10_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_port_run(count: int, *, for_later: bool = False) -> int:
    """A port p such that p, p + 1, ..., p + count - 1 are all free (workers count up so).

    `for_later` takes them from below the kernel's ephemeral range, for servers that
    bind them minutes later (`make cluster` boots that long): on Linux bind(0) gives
    odd ports and outgoing connections try even ones first, so a single free port is
    seldom taken meanwhile, but a run holds even ports any connection may take."""
    while True:
        base = _below_ephemeral_range(count) if for_later else free_port()
        if base + count > 65536:
            continue
        try:
            with contextlib.ExitStack() as held:
                for offset in range(count):
                    probe = held.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base


def ephemeral_start() -> int:
    """The first port of the range the kernel gives outgoing connections theirs from."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _below_ephemeral_range(count: int) -> int:
    start = ephemeral_start()
    if start - count <= LISTEN_PORTS_FROM:
        return free_port()  # no room below it on this machine
    return random.randrange(LISTEN_PORTS_FROM, start - count)


def answers_ok(url: str) -> bool:
    """Whether a GET of `url` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class ServiceProcess:
    """A `python -m <module>` child with the test run's settings; its output goes to a log."""

    def __init__(
        self,
        module: str,
        settings: Settings,
        log_path: Path,
        *args: str,
        ready_url: str | None = None,
    ) -> None:
        self.module = module
        self.settings = settings
        self.log_path = log_path
        # What answers 200 once the process serves (its /readyz), if it has one.
        self.ready_url = ready_url
        self._args = args
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self._args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def poll(self) -> int | None:
        assert self._process is not None
        return self._process.poll()

    def signal(self, signum: int) -> None:
        assert self._process is not None
        self._process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self._process is not None
        return self._process.wait(timeout)

    def stop(self, timeout: float = 15) -> int | None:
        if self._process is None or self._process.poll() is not None:
            return self._process.returncode if self._process else None
        self._process.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str) -> None:
        """Wait until the child logs `text`; fail with the log if it dies or never does."""
        self.wait_until(lambda: text in self.log(), f"never logged {text!r}")

    def wait_until_ready(self, url: str | None = None) -> None:
        """Poll the readiness URL (`url`, or the process's own) until it answers 200;
        fail with the log if the child dies."""
        ready_url = url or self.ready_url
        assert ready_url is not None, f"{self.module}: no readiness URL"
        self.wait_until(lambda: answers_ok(ready_url), f"not ready after {READY_TIMEOUT_SECONDS}s")

    def wait_until(self, condition: Callable[[], bool], failure: str) -> None:
        """Poll `condition` until it holds; fail with `failure` and the log if the child
        dies or it does not hold within READY_TIMEOUT_SECONDS."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if condition():
                return
            if self.poll() is not None:
                raise RuntimeError(f"{self.module} exited early:\n{self.log()}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.module} {failure}:\n{self.log()}")


def start_gateway(
    settings: Settings, log_dir: Path, port: int | None = None, *, metrics_port: int | None = None
) -> tuple[ServiceProcess, str]:
    """A gateway on `port` (or a free one), ready once its /readyz answers 200; its
    metrics on `metrics_port`, or a free one, so that many gateways share a host.
    The process's `settings` name both ports."""
    process = gateway_process(settings, log_dir, port, metrics_port=metrics_port).start()
    process.wait_until_ready()
    return process, gateway_url(process)


def gateway_process(
    settings: Settings, log_dir: Path, port: int | None = None, *, metrics_port: int | None = None
) -> ServiceProcess:
    """The gateway `start_gateway` starts, not started yet: whoever must stop it
    whatever happens (a run stopped with Ctrl-C) keeps it before it waits for it."""
    port = port or free_port()
    if metrics_port is None:
        metrics_port = free_port()
        while metrics_port == port:
            metrics_port = free_port()
    return ServiceProcess(
        "gateway",
        replace(settings, port=port, metrics_port=metrics_port),
        log_dir / f"gateway-{port}.log",
        ready_url=readiness_url(port),
    )


def readiness_url(port: int) -> str:
    """A process's /readyz on this host: a gateway's on its HTTP port, a worker's on its
    metrics port."""
    return f"http://127.0.0.1:{port}/readyz"


def gateway_url(gateway: ServiceProcess) -> str:
    """Where a gateway started here serves HTTP and its sockets."""
    return f"http://127.0.0.1:{gateway.settings.port}"


def metrics_url(gateway: ServiceProcess) -> str:
    """Where a gateway started here serves its Prometheus metrics."""
    return f"http://127.0.0.1:{gateway.settings.metrics_port}/metrics"


def start_dispatcher(
    settings: Settings, log_path: Path, *args: str, metrics_port: int | None = None
) -> ServiceProcess:
    """A worker, ready once its /readyz (on its metrics port) answers 200."""
    process = dispatcher_process(settings, log_path, *args, metrics_port=metrics_port).start()
    process.wait_until_ready()
    return process


def dispatcher_process(
    settings: Settings, log_path: Path, *args: str, metrics_port: int | None = None
) -> ServiceProcess:
    """The worker `start_dispatcher` starts, not started yet (see `gateway_process`)."""
    port = metrics_port or free_port()
    return ServiceProcess(
        "dispatcher",
        settings,
        log_path,
        *args,
        "--metrics-port",
        str(port),
        ready_url=readiness_url(port),
    )
