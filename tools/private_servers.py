"""What a private server that a run starts for itself needs, whatever it is (RabbitMQ
nodes, Postgres with Patroni): whom it runs as, waiting for it, and telling whether
its process is still the one that was started (`tools.local_cluster`,
`tools.local_postgres`)."""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

# Generous: a cold start of RabbitMQ on a slow machine with both cores busy takes tens
# of seconds. Every wait is on a condition; these deadlines only end a hopeless wait.

SERVICE_TIMEOUT_SECONDS = 180
POLL_SECONDS = 0.2


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def wait_until(
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


def run_command(command: list[str], **kwargs: Any) -> str:
    """Run to the end; its output, or RuntimeError with the output if it failed."""
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


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class PrivateServer:
    """A throwaway server of its own: started on entry, and stopped and removed with
    its data on exit, even when starting it failed halfway."""

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


@dataclass(frozen=True)
class Owner:
    """The user the private nodes run as: `rabbitmq` when we are root, else ourselves."""

    uid: int
    gid: int

    @classmethod
    def named(cls, user_name: str) -> Owner | None:
        """The system user a server runs as when started by root (None otherwise, or
        when there is no such user: then it runs as whoever started it)."""
        if os.geteuid() != 0:
            return None
        try:
            user = pwd.getpwnam(user_name)
        except KeyError:
            return None  # no such user: root it is
        return cls(user.pw_uid, user.pw_gid)

    def popen_args(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def give(self, path: Path) -> None:
        """Hand `path` and everything under it to this user."""
        os.chown(path, self.uid, self.gid)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)


def as_owner(owner: Owner | None) -> dict[str, Any]:
    return owner.popen_args() if owner is not None else {}


def process_alive(pid: int | None, marker: str) -> bool:
    """Whether `pid` runs, and is the process we mean (its command line or environment
    holds `marker`): a pid read from a file may have been given to another process since."""
    if pid is None:
        return False
    proc = Path(f"/proc/{pid}")
    try:
        if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        described = b" ".join(
            proc.joinpath(part).read_bytes().replace(b"\0", b" ") for part in ("cmdline", "environ")
        )
    except (OSError, IndexError):
        return False
    return marker.encode() in described


def wait_gone(pid: int, marker: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while process_alive(pid, marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True
