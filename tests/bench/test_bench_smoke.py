"""A tiny run of the load generator, so the benchmark tool cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shared.settings import Settings

LATENCY_FIELDS = {"count", "p50", "p90", "p99", "max"}


def test_a_smoke_run_measures_everything_and_loses_nothing(
    settings: Settings, tmp_path: Path, project_root: Path
) -> None:
    env = {
        **os.environ,
        "TAXI_DATABASE_URL": settings.database_url,
        "TAXI_AMQP_URL": settings.amqp_url,
    }
    run = subprocess.run(
        [sys.executable, "-m", "bench", "smoke", "--out", str(tmp_path)],
        cwd=project_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text())

    for name in ("offer", "assign", "full_trip"):
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
