"""Tiny runs of the load generator, so the benchmark tool cannot rot unnoticed: the
traffic scenario, the same side by side with another revision, the idle one, the
city one and the cluster one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import Settings

LATENCY_FIELDS = {"count", "p50", "p90", "p99", "max"}
LATENCIES = ("offer", "notified", "assign", "full_trip")


def bench(settings: Settings, project_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TAXI_DATABASE_URL": settings.database_url,
        "TAXI_AMQP_URL": settings.amqp_url,
    }
    run = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=project_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def worktrees(project_root: Path) -> str:
    return subprocess.run(
        ["git", "worktree", "list"], cwd=project_root, capture_output=True, text=True, check=True
    ).stdout


def test_a_smoke_run_measures_everything_and_loses_nothing(
    settings: Settings, tmp_path: Path, project_root: Path
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


def test_a_city_run_offers_each_trip_to_the_nearest_drivers_and_compares_broadcast(
    settings: Settings, tmp_path: Path, project_root: Path
) -> None:
    bench(
        settings,
        project_root,
        *("city", "--drivers", "300", "--rate", "10", "--seconds", "3"),
        *("--baseline-seconds", "1", "--broadcast-seconds", "2", "--report-seconds", "2"),
        *("--trip-seconds", "5", "--workers", "1", "--out", str(tmp_path)),
    )
    result = json.loads((tmp_path / "city.json").read_text())

    assert list(result["phases"]) == ["baseline", "by distance", "broadcast"]
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


def test_a_cluster_run_compares_one_node_with_three_and_rides_out_a_node_killed(
    settings: Settings, tmp_path: Path, project_root: Path
) -> None:
    bench(
        settings,
        project_root,
        *("cluster", "--drivers", "6", "--riders", "4", "--rate", "4", "--seconds", "2"),
        *("--rounds", "1", "--kills", "1", "--recovery-seconds", "4", "--workers", "1"),
        *("--city-drivers", "0", "--out", str(tmp_path)),
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
    assert failover["trips"]["requested"] > 0
    assert failover["trips"]["lost"] == 0
    assert failover["trips"]["requests_stored_twice"] == 0
    assert failover["trips"]["accepted_more_than_once"] == 0
    assert failover["double_assignments"] == 0
    assert result["city"] is None  # --city-drivers 0
    assert "failover" in (tmp_path / "cluster.md").read_text()
