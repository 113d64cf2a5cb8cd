"""Tiny runs of the load generator, so the benchmark tool cannot rot unnoticed: the
traffic scenario, the same side by side with another revision, the idle one, the
city one, the cluster one and the servers one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bench.gateway_servers import SERVERS
from bench.hops import HOPS
from bench.resources import rabbitmq_queues
from shared.migrate import maintenance_url
from shared.settings import Settings
from tests.leftovers import kill_marked, marked_processes
from tests.ops.terminal import ctrl_c_as_in_a_terminal

LATENCY_FIELDS = {"count", "p50", "p90", "p99", "max"}
LATENCIES = ("offer", "notified", "assign", "full_trip")


@pytest.fixture(autouse=True)
def run_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The runs' TMPDIR, removed after each test: what a run keeps there (its processes'
    logs, its nodes' data) is the test's to see, and none of it outlives the test. Open
    to every user: the private nodes run as rabbitmq and postgres."""
    folder = Path(tempfile.mkdtemp(prefix="taxi-bench-test-"))
    folder.chmod(0o755)
    monkeypatch.setenv("TMPDIR", str(folder))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# What a run may take before it is stopped; a stopped run is given this long to stop and
# remove what it started (nodes stop cleanly, databases drop) before it is killed: a
# cluster run's four nodes, two systems and Postgres pair take minutes on a busy machine.
BENCH_SECONDS = 240
CLEAN_UP_SECONDS = 240
# A cluster run given too little time: it is stopped while it boots its nodes.
OUT_OF_TIME_SECONDS = 20


def bench(
    settings: Settings,
    project_root: Path,
    *args: str,
    seconds: float = BENCH_SECONDS,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m bench ARGS`, stopped as with Ctrl-C, however the test ends (it failed,
    its time ran out, pytest was interrupted), so that it removes what it started."""
    env = {
        **os.environ,
        "TAXI_DATABASE_URL": settings.database_url,
        "TAXI_AMQP_URL": settings.amqp_url,
        **(env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", *args],
        cwd=project_root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=ctrl_c_as_in_a_terminal,  # stopped with Ctrl-C, as in a terminal
    )
    try:
        stdout, stderr = process.communicate(timeout=seconds)
    finally:
        stop_bench(process)
    run = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def stop_bench(process: subprocess.Popen[str]) -> None:
    """Ctrl-C for a run still going, time to clean up, then kill what is left of it
    (even if the test's own time runs out meanwhile)."""
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=CLEAN_UP_SECONDS)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def worktrees(project_root: Path) -> str:
    return subprocess.run(
        ["git", "worktree", "list"], cwd=project_root, capture_output=True, text=True, check=True
    ).stdout


def test_a_smoke_run_measures_everything_and_loses_nothing(
    settings: Settings, tmp_path: Path, project_root: Path, run_tmp: Path
) -> None:
    run = bench(settings, project_root, "smoke", "--out", str(tmp_path))
    result = json.loads((tmp_path / "smoke.json").read_text())

    for name in LATENCIES:
        assert set(result["latency_ms"][name]) == LATENCY_FIELDS
        assert result["latency_ms"][name]["count"] > 0
        assert result["latency_ms"][name]["p50"] <= result["latency_ms"][name]["p99"]
    assert set(result["requests_per_second"]) == {"offered", "achieved"}
    assert set(result["offers"]) == {"expected", "received", "missing", "delivered_per_second"}
    assert {"gateway", "dispatcher-0", "dispatcher-1", "rabbitmq", "postgres"} <= set(
        result["processes"]
    )
    for usage in result["processes"].values():
        assert set(usage) == {"cpu_seconds", "cpu_percent", "peak_rss_mb"}
    assert result["processes"]["gateway"]["peak_rss_mb"] > 0
    assert "rabbitmq_memory_mb" in result
    assert "error_frames" in result and "socket_closes" in result
    assert result["timeline"]

    # The smoke load is tiny: everything must arrive, nothing twice.
    assert result["trips"]["completed"] == result["trips"]["requested"] > 0
    assert result["offers"]["missing"] == 0
    assert result["double_assignments"] == 0
    assert result["error_frames"] == {}
    assert result["socket_closes"] == 0
    assert "| offer |" in (tmp_path / "smoke.md").read_text()
    assert "offers" in run.stderr  # progress was shown while it ran
    assert list(run_tmp.iterdir()) == []  # a run that ended well leaves no logs behind


def test_a_side_by_side_run_measures_both_revisions_in_alternating_rounds(
    settings: Settings, tmp_path: Path, project_root: Path
) -> None:
    if not (project_root / ".git").exists():
        pytest.skip("--compare-with checks a revision out of the git repository")
    before = worktrees(project_root)

    # HEAD stands in for an older revision: the path is what is under test.
    bench(
        settings,
        project_root,
        *("smoke", "--compare-with", "HEAD", "--rounds", "2", "--workers", "1"),
        *("--out", str(tmp_path)),
    )
    result = json.loads((tmp_path / "smoke-compare.json").read_text())

    assert result["compare"]["order"] == ["before", "after", "after", "before"]
    assert len(result["compare"]["before"]["commit"]) == 40
    for side in ("before", "after"):
        assert result[side]["trips"]["requested"] > 0
        assert result[side]["latency_ms"]["offer"]["count"] > 0
        assert result[side]["latency_ms"]["notified"]["count"] > 0
        processes = set(result[side]["processes"])
        assert {"gateway", "dispatcher-0", "postgres", "postgres backends of this system"} <= (
            processes
        )
        assert result[side]["notifications_stored"] > 0  # HEAD keeps a notification log
    assert set(result["difference_ms"]) == set(LATENCIES)
    assert "side by side" in (tmp_path / "smoke-compare.md").read_text()
    assert worktrees(project_root) == before  # the checkout is gone again


def test_an_idle_run_measures_what_each_connection_costs(
    settings: Settings, tmp_path: Path, project_root: Path
) -> None:
    bench(
        settings,
        project_root,
        *("idle", "--connections", "20", "--seconds", "1", "--memory-samples", "1"),
        *("--workers", "1", "--out", str(tmp_path)),
    )
    result = json.loads((tmp_path / "idle.json").read_text())

    [run] = result["runs"]
    assert run["users"] == run["sockets_opened"] == 20
    assert run["sockets_failed"] == 0
    assert run["socket_closes_while_idle"] == 0
    assert run["gateway_released_all_sockets"]
    assert run["gateway"]["rss_mb"]["connected"] > 0
    queues = run["rabbitmq"]["queues"]
    if queues["connected"] is not None:  # rabbitmqctl reaches this broker
        # No queue per user: the gateway's own queue is bound to each user's key.
        assert queues["connected"]["per_user"] == queues["disconnected"]["per_user"] == 0
        assert queues["connected"]["bindings"] - queues["disconnected"]["bindings"] == 20
        assert run["rabbitmq"]["queues_left_after_clean_up"] == 0
    assert "KB per connection" in (tmp_path / "idle.md").read_text()


def test_a_servers_run_measures_the_same_app_under_every_server(
    settings: Settings, tmp_path: Path, project_root: Path
) -> None:
    bench(
        settings,
        project_root,
        *("servers", "--drivers", "20", "--seconds", "2", "--rounds", "1"),
        *("--reports-per-second", "40", "--echoes-per-second", "20", "--out", str(tmp_path)),
    )
    result = json.loads((tmp_path / "servers.json").read_text())

    runs = result["servers_runs"]
    assert [run["server"] for run in runs] == list(SERVERS)
    for run in runs:
        assert run["sockets_opened"] == 20, run
        assert run["sockets_closed_during_window"] == 0, run
        assert run["reports"] > 0 and run["errors"] == [], run
        # Every echo came back: each server carried the app's frames both ways.
        assert run["echoes_answered"] == run["echoes_sent"] > 0, run
        assert run["gateway_us_per_frame"] > 0, run
    assert [row["server"] for row in result["summary"]] == list(SERVERS)
    assert "gateway us/frame" in (tmp_path / "servers.md").read_text()


def test_a_hops_run_times_every_crossing_and_removes_what_it_declared(
    settings: Settings, tmp_path: Path, project_root: Path
) -> None:
    bench(
        settings,
        project_root,
        *("hops", "--seconds", "1", "--hop-rates", "40", "--out", str(tmp_path)),
    )
    result = json.loads((tmp_path / "hops.json").read_text())

    rows = {row["hop"]: row for row in result["hops"]}
    assert list(rows) == list(HOPS)
    for row in rows.values():
        # Every crossing sent arrived, and the thread that sent it spent CPU on it.
        assert row["received"] == row["sent"] == 40, row
        assert row["latency_ms"]["count"] == 40, row
        assert row["sender_us"] > 0, row
        assert row["in_all_us"] >= row["sender_us"], row
    for name in ("command", "notification", "position"):
        assert rows[name]["receiver_us"] > 0, rows[name]
    # The servers' CPU is read in clock ticks (10 ms): 40 crossings may not make one.
    assert all(row["server_us"] >= 0 for row in rows.values())
    prefix = result["parameters"]["broker_prefix"]
    assert rabbitmq_queues(prefix) == [], "the command hop's queues were left behind"
    exchanges = subprocess.run(
        ["rabbitmqctl", "list_exchanges", "name", "--silent"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not [name for name in exchanges if name.startswith(prefix)]
    assert "| command | 40 | 40 / 40 |" in (tmp_path / "hops.md").read_text()


def test_a_city_run_offers_each_trip_to_the_nearest_drivers_and_compares_broadcast(
    settings: Settings, tmp_path: Path, project_root: Path
) -> None:
    bench(
        settings,
        project_root,
        *("city", "--drivers", "300", "--rate", "10", "--seconds", "3"),
        *("--baseline-seconds", "1", "--broadcast-seconds", "2", "--report-seconds", "2"),
        *("--trip-seconds", "5", "--workers", "1", "--quiet-seconds", "1"),
        *("--out", str(tmp_path)),
    )
    result = json.loads((tmp_path / "city.json").read_text())

    assert list(result["phases"]) == ["quiet", "baseline", "by distance", "broadcast"]
    quiet, baseline = result["phases"]["quiet"], result["phases"]["baseline"]
    assert quiet["locations_sent"] == 0 and quiet["trips"]["requested"] == 0
    # A report's cost is given in all and above what the same sockets cost sending nothing.
    assert set(baseline["cpu_us_per_location_report_above_quiet"]) == set(
        baseline["cpu_us_per_location_report"]
    )
    near, wide = result["phases"]["by distance"], result["phases"]["broadcast"]
    for phase in (near, wide):
        assert phase["trips"]["requested"] > 0
        assert phase["trips"]["lost"] == 0
        assert phase["double_assignments"] == 0
        assert phase["error_frames"] == {}
        assert phase["socket_closes"] == 0
        for name in ("first_offer", "every_offer", "assign"):
            assert set(phase["latency_ms"][name]) == LATENCY_FIELDS | {"p95"}
            assert phase["latency_ms"][name]["count"] > 0
        assert phase["generator_loop_lag_ms"]["count"] > 0
        assert {"gateway", "dispatcher-0", "rabbitmq", "load generator"} <= set(phase["processes"])
        assert phase["server_cpu_ms_per_trip"] > 0
    max_offers = result["parameters"]["server"]["dispatch_max_offers"]
    assert 0 < near["offers"]["first_ring_per_trip_max"] <= max_offers
    check = near["nearest_check"]
    assert check["first_ring_offers_checked"] > 0
    assert check["rank_above_max_offers"] == 0
    assert check["beyond_radius"] == 0
    assert check["offered_without_a_location"] == 0
    # A trip without a pick-up point goes to every free driver.
    assert wide["offers"]["per_trip_mean"] > max_offers
    assert "nearest_check" not in wide
    assert result["comparison"]["offers_per_trip"] > 1
    assert result["gateway_memory"]["kb_per_connection"] > 0
    # Riders on a trip receive their driver's reports, and no one else's.
    live = near["live_tracking"]
    assert live["location_to_rider_ms"]["count"] > 0
    assert set(live["location_to_rider_ms"]) == LATENCY_FIELDS | {"p95"}
    assert live["trips_with_frames"] > 0
    assert live["wrong"] == 0
    targets = {t["target"]: t for t in result["targets"]}
    assert any(name.startswith("location -> rider p99") for name in targets)
    markdown = (tmp_path / "city.md").read_text()
    assert "nearest check" in markdown
    assert "location -> rider ms" in markdown
    assert "quiet phase" in markdown


# Four RabbitMQ nodes and a Patroni-managed Postgres pair boot, two systems start, a node
# is killed and booted again, then the database primary: two to three minutes on a quiet
# 2-core machine, several on a busy one.
CLUSTER_RUN_SECONDS = 480


@pytest.mark.timeout(CLUSTER_RUN_SECONDS + CLEAN_UP_SECONDS + 60)
def test_a_cluster_run_compares_one_node_with_three_and_rides_out_a_node_killed(
    settings: Settings, tmp_path: Path, project_root: Path
) -> None:
    bench(
        settings,
        project_root,
        *("cluster", "--drivers", "6", "--riders", "4", "--rate", "4", "--seconds", "2"),
        *("--rounds", "1", "--kills", "1", "--recovery-seconds", "4", "--workers", "1"),
        *("--city-drivers", "0", "--out", str(tmp_path)),
        seconds=CLUSTER_RUN_SECONDS,
    )
    result = json.loads((tmp_path / "cluster.json").read_text())

    assert result["order"] == ["one node", "cluster"]
    for side in ("one_node", "cluster"):
        run = result[side]
        assert run["trips"]["completed"] == run["trips"]["requested"] > 0
        assert run["double_assignments"] == 0
        assert run["latency_ms"]["offer"]["count"] > 0
        assert run["server_cpu_ms_per_trip"] > 0
        assert {"gateway-1", "gateway-2", "dispatcher-0", "rabbitmq"} <= set(run["processes"])
    assert result["ratios"]["offer_p99"] > 0
    assert result["ratios"]["server_cpu_ms_per_trip"] > 0
    failover = result["failover"]
    [kill] = failover["kills"]
    assert "gateway-1" in kill["processes_on_it"]
    # Trips flowed again through the gateway whose node was killed.
    assert kill["gap_seconds"]["offer_on_affected_gateway"] is not None
    assert kill["gap_seconds"]["assign_on_affected_gateway"] is not None
    assert kill["windows"]["recovery"]["offer_ms"]["count"] > 0
    # The database primary killed (--database-kills 1 by default): the standby promoted,
    # trips flowed again, and the old primary came back as the standby.
    [database_kill] = failover["database_kills"]
    assert database_kill["promoted"] != database_kill["node"]
    assert database_kill["gap_seconds"]["assign_anywhere"] is not None
    assert database_kill["standby_again_after_seconds"] > 0
    assert failover["trips"]["requested"] > 0
    assert failover["trips"]["lost"] == 0
    assert failover["trips"]["requests_stored_twice"] == 0
    assert failover["trips"]["accepted_more_than_once"] == 0
    assert failover["double_assignments"] == 0
    assert result["city"] is None  # --city-drivers 0
    assert "failover" in (tmp_path / "cluster.md").read_text()
    assert "database failover" in (tmp_path / "cluster.md").read_text()


def databases(settings: Settings) -> set[str]:
    with psycopg.connect(maintenance_url(settings.database_url)) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}


@pytest.mark.timeout(CLUSTER_RUN_SECONDS + CLEAN_UP_SECONDS + 60)
def test_a_cluster_run_stopped_midway_by_ctrl_c_leaves_nothing_behind(
    settings: Settings, tmp_path: Path, project_root: Path
) -> None:
    """Ctrl-C once its four private nodes and both systems run (two gateways and a
    worker each): then no process of it is left (nodes, epmd, gateways, workers), nor
    its databases, nor its nodes' data."""
    mark = f"taxi-leftover-check-{uuid.uuid4().hex}"
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", "cluster", "--drivers", "4", "--riders", "2"],
        cwd=project_root,
        env={
            **os.environ,
            "TAXI_DATABASE_URL": settings.database_url,
            "TAXI_AMQP_URL": settings.amqp_url,
            "TAXI_LEFTOVER_MARK": mark,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=ctrl_c_as_in_a_terminal,  # stopped with Ctrl-C, as in a terminal
    )
    seen: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            seen.append(line)
            if "signing up and connecting" in line:
                break
        assert len(marked_processes(mark)) >= 4 + 2 + 2, "".join(seen)  # nodes, epmd, gateways
        process.send_signal(signal.SIGINT)  # Ctrl-C
        _, rest = process.communicate(timeout=CLEAN_UP_SECONDS)
    finally:
        stop_bench(process)
    output = "".join(seen) + rest
    assert "interrupted" in output, output[-3000:]
    assert kill_marked(mark) == [], output[-3000:]
    made = set(re.findall(r"database (taxi_bench_\w+),", output))
    assert len(made) == 2, output[-3000:]
    assert made.isdisjoint(databases(settings)), made & databases(settings)
    data = re.findall(r"data in (\S+) and (\S+)\)", output)
    assert data, output[-3000:]
    for folder in data[0]:
        assert not Path(folder).exists(), folder


@pytest.mark.timeout(OUT_OF_TIME_SECONDS + CLEAN_UP_SECONDS + 60)
def test_a_run_out_of_time_is_stopped_and_leaves_nothing_behind(
    settings: Settings, tmp_path: Path, project_root: Path
) -> None:
    """A test whose bench run takes too long fails, and the run is stopped wherever it
    was (booting nodes, starting a system, measuring): nothing of it is left."""
    mark = f"taxi-leftover-check-{uuid.uuid4().hex}"
    with pytest.raises(subprocess.TimeoutExpired) as ran_out:
        bench(
            settings,
            project_root,
            *("cluster", "--drivers", "4", "--riders", "2", "--out", str(tmp_path)),
            seconds=OUT_OF_TIME_SECONDS,
            env={"TAXI_LEFTOVER_MARK": mark},
        )
    assert kill_marked(mark) == []
    output = ran_out.value.stderr or ""
    output = output if isinstance(output, str) else output.decode(errors="replace")
    for made in re.findall(r"database (taxi_bench_\w+),", output):
        assert made not in databases(settings)
    for folders in re.findall(r"data in (\S+) and (\S+)\)", output):
        assert not any(Path(folder).exists() for folder in folders), folders


def test_a_city_run_compares_the_dispatch_policies_with_choosy_drivers_and_a_burst(
    settings: Settings, tmp_path: Path, project_root: Path
) -> None:
    bench(
        settings,
        project_root,
        *("city", "--policy", "both", "--drivers", "200", "--riders", "40"),
        *("--rate", "4", "--seconds", "4", "--burst", "8", "--baseline-seconds", "1"),
        *("--report-seconds", "2", "--trip-seconds", "4", "--workers", "1"),
        *("--decline-share", "0.2", "--ignore-share", "0.1", "--request-timeout", "10"),
        *("--out", str(tmp_path)),
    )
    result = json.loads((tmp_path / "city-policies-burst.json").read_text())

    assert list(result["policies"]) == ["rings", "matched"]
    for name, run in result["policies"].items():
        assert run["parameters"]["server"]["env"]["TAXI_DISPATCH_POLICY"] == name
        near = run["phases"]["by distance"]
        assert near["trips"]["requested"] > 0
        dispatch = near["dispatch"]
        assert {"mean", "p95"} <= set(dispatch["pick_up_m"])
        assert {"p50", "p99"} <= set(dispatch["time_to_assign_ms"])
        assert "no_driver_share" in dispatch
        assert sum(dispatch["driver_answers"].values()) > 0
        assert "server_cpu_ms_per_trip" in near
    assert {"matched_pick_up_shorter_share", "time_to_assign_goal_met"} <= set(result["comparison"])
    markdown = (tmp_path / "city-policies-burst.md").read_text()
    assert "pick-up distance m" in markdown
    assert "time to assign ms" in markdown
