"""Another revision of the code, checked out beside this one for a side-by-side run.

`--compare-with REV` runs the same scenario against this working tree and against
REV: REV is checked out as a temporary `git worktree` outside the repository
(removed afterwards), and its gateway and workers run from there on this venv's
Python, against a database migrated by REV's own migrations.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str, cwd: Path = PROJECT_ROOT) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def this_tree_label() -> str:
    """This working tree's commit, marked `+changes` when it has uncommitted ones."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (SystemExit, OSError):
        return "this tree"
    return f"{head}+changes" if dirty else head


@dataclass
class Worktree:
    """`git worktree add --detach <tmp> <revision>` for the length of a `with` block."""

    revision: str
    path: Path | None = None
    commit: str = ""

    @property
    def label(self) -> str:
        return self.commit[:7]

    def __enter__(self) -> Worktree:
        self.commit = _git("rev-parse", "--verify", f"{self.revision}^{{commit}}")
        parent = Path(tempfile.mkdtemp(prefix=f"taxi-bench-{self.commit[:7]}-"))
        self.path = parent / "code"
        _git("worktree", "add", "--detach", str(self.path), self.commit)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.path is None:
            return
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(self.path)],
            cwd=PROJECT_ROOT,
            capture_output=True,
            timeout=120,
            check=False,
        )
        subprocess.run(
            ["git", "worktree", "prune"], cwd=PROJECT_ROOT, capture_output=True, timeout=60
        )
        # The worktree's parent folder (and anything a run left in it) goes too.
        shutil.rmtree(self.path.parent, ignore_errors=True)
