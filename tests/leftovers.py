"""What a run that was told to clean up left running.

A test gives the run a mark in its environment (TAXI_LEFTOVER_MARK, any unique
string); every process the run starts inherits it (RabbitMQ nodes and epmd too), so
what is left is found however deep it was started and whatever process group or
session it moved to.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def marked_processes(mark: str) -> list[str]:
    """The processes whose environment carries `mark`, still running: "pid: command"."""
    return [f"{pid}: {command}" for pid, command in _marked(mark).items()]


def kill_marked(mark: str) -> list[str]:
    """The marked processes still running, each SIGKILLed once listed: a test that finds
    some fails, and leaves none behind to slow the tests after it."""
    marked = _marked(mark)
    for pid in marked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return [f"{pid}: {command}" for pid, command in marked.items()]


def _marked(mark: str) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            with contextlib.suppress(OSError):
                if mark.encode() in (entry / "environ").read_bytes():
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                    found[int(entry.name)] = cmdline.decode(errors="replace")[:200]
    return found
