"""`python -m tools.foreground -- COMMAND...`: run a command that an operator stops with
Ctrl-C (honcho under `make run`, the cluster under `make cluster`), so that stopping it
is no failure.

The command gets a process group of its own and, when started from a terminal, the
terminal's foreground: Ctrl-C then reaches the command alone, not `make`, which would
otherwise report "*** [run] Interrupt" and exit as if killed. SIGINT, SIGTERM or SIGHUP
sent to this process (a `kill`, a process group signalled without a terminal) is passed
on to the command's group. When the command stops because it was asked to (a signal
reached it: honcho then exits 130 or 143), this exits 0; any other status is passed on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

# What a supervisor that was asked to stop exits with: 128 + SIGINT or SIGTERM, or killed
# by one of them.
_STOPPED_ON_REQUEST = frozenset(
    {128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM}
)
_PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_in_foreground(command: Sequence[str], **popen: Any) -> int:
    """Run `command` as described above; return 0 after a requested stop, else its status."""
    terminal = _controlling_terminal()
    child = subprocess.Popen(list(command), process_group=0, **popen)
    asked_to_stop = False

    def pass_on(signum: int, frame: FrameType | None) -> None:
        nonlocal asked_to_stop
        asked_to_stop = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    previous = {signum: signal.signal(signum, pass_on) for signum in _PASSED_ON}
    handed_over = terminal is not None and _hand_terminal(terminal, child.pid)
    try:
        while True:
            with contextlib.suppress(InterruptedError):
                status = child.wait()
                break
    finally:
        if handed_over and terminal is not None:
            _hand_terminal(terminal, os.getpgrp())
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if status in _STOPPED_ON_REQUEST or (asked_to_stop and status < 0):
        return 0
    return status


def _controlling_terminal() -> int | None:
    """Our standard input, when it is the terminal whose foreground we are."""
    try:
        if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
            return 0
    except OSError:
        pass
    return None


def _hand_terminal(terminal: int, process_group: int) -> bool:
    """Make `process_group` the terminal's foreground (as a shell does for a job)."""
    # A background group that sets the foreground is sent SIGTTOU (on the way back).
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(terminal, process_group)
        return True
    except OSError:
        return False
    finally:
        signal.signal(signal.SIGTTOU, previous)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit("usage: python -m tools.foreground -- COMMAND...")
    sys.exit(run_in_foreground(args))


if __name__ == "__main__":
    main()
