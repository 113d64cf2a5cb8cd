"""Starting `make` as an operator's terminal does: in a session of its own whose
controlling terminal is a pseudo-terminal, so that Ctrl-C is the terminal's own
(the character typed, the kernel signalling the terminal's foreground group)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import signal
import subprocess
import termios
from dataclasses import dataclass
from pathlib import Path

CTRL_C = b"\x03"


@dataclass
class InTerminal:
    process: subprocess.Popen[bytes]
    terminal: int  # the pseudo-terminal's controlling side

    def ctrl_c(self) -> None:
        os.write(self.terminal, CTRL_C)

    def left(self) -> list[int]:
        """The processes still in its session (the command's own process groups too)."""
        return session_processes(self.process.pid)

    def kill(self) -> None:
        """Kill every process of its session, whatever process group it moved to."""
        for pid in self.left():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(30)

    def close(self) -> None:
        os.close(self.terminal)


def session_processes(session: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry)) == session:
                    pids.append(int(entry))
    return pids


def ctrl_c_as_in_a_terminal() -> None:
    """In a child before exec: SIGINT's default action, as a terminal's processes get
    it, whatever this run inherited. A shell that starts a job in the background
    without job control ignores SIGINT in it, ignored signals pass across exec, and
    Python then installs no KeyboardInterrupt handler: a Ctrl-C would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _take_terminal() -> None:
    # In the child, after setsid: standard input becomes the controlling terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    ctrl_c_as_in_a_terminal()


def start_in_terminal(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> InTerminal:
    """Run `command` with a terminal on its standard input, its output into `log`."""
    controller, terminal = pty.openpty()
    try:
        with log.open("wb") as output:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=terminal,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_take_terminal,
            )
    finally:
        os.close(terminal)
    return InTerminal(process, controller)
