"""A test that fails, runs out of time or is stopped with Ctrl-C still removes what it
started: here a pytest run of its own whose test starts a private RabbitMQ node (with
its epmd and data folder) and a gateway on it, the way the fault tests do, and then
fails on purpose, hangs until pytest-timeout stops it, or is interrupted. Afterwards
no process it started runs and the node's data folder is gone.

Every process the inner run starts inherits a mark in its environment (RabbitMQ nodes
and epmd too): tests/leftovers.py finds what is left by it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.leftovers import kill_marked, marked_processes
from tests.ops.terminal import ctrl_c_as_in_a_terminal

# Booting a private node on a busy machine, then stopping it and the gateway.
RUN_SECONDS = 300

INNER_TEST = """
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tools.local_cluster import LocalCluster
from tools.processes import start_gateway
from shared.settings import Settings

READY = Path(os.environ["LEFTOVER_READY_FILE"])


@pytest.fixture
def running(tmp_path):
    with LocalCluster(1) as node:
        settings = replace(Settings.from_env(), amqp_url=node.amqp_url)
        gateway, _ = start_gateway(settings, tmp_path)
        try:
            yield node
        finally:
            gateway.stop()


# Out of time while the test itself runs (the fixture's start may take longer).
@pytest.mark.timeout(5 if os.environ["LEFTOVER_HOW"] == "times out" else 0, func_only=True)
def test_it(running):
    READY.write_text(str(running.base))
    how = os.environ["LEFTOVER_HOW"]
    if how == "fails":
        assert False, "failing on purpose"
    time.sleep(3600)  # until pytest-timeout stops it, or Ctrl-C
"""


def remove_data(ready: Path) -> None:
    """Remove the node's folder, if the inner run got as far as naming it."""
    if ready.exists():
        shutil.rmtree(ready.read_text(), ignore_errors=True)


@pytest.mark.timeout(RUN_SECONDS + 60)
@pytest.mark.parametrize("how", ["fails", "times out", "ctrl-c"])
def test_a_test_that_fails_times_out_or_is_interrupted_leaves_nothing_behind(
    how: str, settings: Settings, tmp_path: Path, project_root: Path
) -> None:
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    ready = tmp_path / "ready"
    mark = f"taxi-leftover-check-{uuid.uuid4().hex}"
    arguments = ["-p", "no:cacheprovider", "-q", f"--rootdir={tmp_path}", "-k", "test_it"]
    log = tmp_path / "inner.log"
    with log.open("wb") as output:
        inner = subprocess.Popen(
            [sys.executable, "-m", "pytest", *arguments, str(tmp_path / "test_inner.py")],
            cwd=tmp_path,
            env={
                **os.environ,
                **settings.to_env(),
                "PYTHONPATH": str(project_root),
                "LEFTOVER_HOW": how,
                "LEFTOVER_READY_FILE": str(ready),
                "TAXI_LEFTOVER_MARK": mark,
            },
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=ctrl_c_as_in_a_terminal,
        )
    try:
        if how == "ctrl-c":
            deadline = time.monotonic() + RUN_SECONDS
            while not ready.exists():  # the node and the gateway run: the test is under way
                assert inner.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            assert marked_processes(mark), "nothing was started"
            os.killpg(inner.pid, signal.SIGINT)  # Ctrl-C in its terminal
        status = inner.wait(RUN_SECONDS)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(inner.pid, signal.SIGKILL)
        # Whatever the inner run left is found now and then removed, so that a failure
        # here leaves no node behind to slow the tests after it.
        left = kill_marked(mark)
        data_left = ready.exists() and Path(ready.read_text()).exists()
        remove_data(ready)
    output = log.read_text()
    assert ready.exists(), output  # the test got as far as running it all
    assert status != 0, output
    expected = {
        "fails": "failing on purpose",
        "times out": "Timeout",
        "ctrl-c": "KeyboardInterrupt",
    }
    assert expected[how] in output, output
    assert left == [], output
    assert not data_left, "the node's data folder was left"
