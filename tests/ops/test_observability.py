"""What an operator looks at: the Grafana dashboard (deploy/grafana/) and the Prometheus
alert rules (deploy/prometheus/). The dashboard is what its generator makes; the rules
pass promtool's checks and their unit tests on recorded series; compose runs both on
the right scrape targets; and every metric either reads is served by the real gateway
and worker once a trip has gone through them, so a renamed metric fails here rather
than leaving an empty panel or an alert that can never fire."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import promql_parser
import yaml

from shared.settings import Settings
from tests.clients import about, connect, create_account, receive_until, send
from tools.processes import free_port, metrics_url, start_dispatcher, start_gateway

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = GRAFANA / "taxi.json"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts_test.yml"
SCRAPE_CONFIG = PROMETHEUS / "prometheus.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

# Series Prometheus makes itself for every target: not served by any process.
PROMETHEUS_OWN = {"up"}
# What the dashboard must show (issue 24, item 5), by panel title.
PANELS = {
    "Trips per second by outcome",
    "Offer latency",
    "Assign latency",
    "Location latency",
    "Open sockets",
    "Location reports per second",
    "Command queue depth",
    "Dead letters",
    "Workers ready",
    "Broker nodes up",
    "Database failovers",
}


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    """promtool, from Debian's prometheus package: `make test` installs it (as root) with
    scripts/ensure-promtool, and without it these tests fail, they are not skipped."""
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: run scripts/ensure-promtool (make promtool)"
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("taxi_dashboard", GRAFANA / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def expressions() -> list[str]:
    """Every PromQL expression of the dashboard and the rules, as Prometheus runs them
    (Grafana's $__rate_interval stands for a range)."""
    queries = [target["expr"] for panel in panels() for target in panel["targets"]]
    rules = [rule["expr"] for rule in alert_rules()]
    return [expr.replace("$__rate_interval", "5m") for expr in queries + rules]


def selectors(node: Any) -> Iterator[promql_parser.VectorSelector]:
    """Every series selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from selectors(node.lhs)
        yield from selectors(node.rhs)
    elif isinstance(node, promql_parser.Call):
        for argument in node.args:
            yield from selectors(argument)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from selectors(node.expr)
        if node.param is not None:
            yield from selectors(node.param)
    elif isinstance(
        node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)
    ):
        yield from selectors(node.expr)


def metric_names() -> set[str]:
    names = set()
    for expr in expressions():
        for selector in selectors(promql_parser.parse(expr)):
            assert selector.name, f"a selector without a metric name in {expr!r}"
            names.add(selector.name)
    return names


# --- the dashboard ---------------------------------------------------------------------


def test_the_committed_dashboard_is_what_its_generator_makes() -> None:
    assert DASHBOARD.read_text() == generator().render(), (
        "deploy/grafana/taxi.json is stale: run python deploy/grafana/generate.py"
    )


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    shown = {panel["title"] for panel in panels()}
    assert shown >= PANELS, f"missing panels: {PANELS - shown}"
    for panel in panels():
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids) and all(ref_ids), panel["title"]
        assert panel["description"], panel["title"]
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"


def test_dashboard_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        box = panel["gridPos"]
        cells = {
            (x, y)
            for x in range(box["x"], box["x"] + box["w"])
            for y in range(box["y"], box["y"] + box["h"])
        }
        assert box["x"] + box["w"] <= 24, panel["title"]
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_query_and_rule_is_valid_promql() -> None:
    for expr in expressions():
        promql_parser.parse(expr)  # raises on a syntax error
    assert "taxi_dispatcher_offer_seconds_bucket" in metric_names()


# --- the alert rules -------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_alert_rules_pass_their_unit_tests_on_recorded_series() -> None:
    tested = promtool("test", "rules", ALERT_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_broken_rule_fails_its_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: an offer target raised tenfold leaves the slow case quiet."""
    broken = ALERTS.read_text().replace("\n          > 0.1\n", "\n          > 1\n")
    assert broken != ALERTS.read_text()
    (tmp_path / ALERTS.name).write_text(broken)
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    tested = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert tested.returncode != 0
    assert "TaxiOfferLatencyHigh" in tested.stdout + tested.stderr


def test_every_alert_fires_in_a_test_and_has_a_runbook_line() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if not case.get("exp_alerts")
    }
    operations = OPERATIONS.read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert name in fired, f"{name} never fires in alerts_test.yml"
        assert name in quiet, f"{name} is never shown quiet in alerts_test.yml"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["runbook_url"] == "docs/operations.md#alerts"
        assert f"`{name}`" in operations, f"docs/operations.md does not explain {name}"


# --- compose: Prometheus scrapes what the processes serve, Grafana shows the dashboard --


def test_compose_scrapes_every_process_and_broker_node() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"gateway", "dispatcher", "rabbitmq"}
    checked = promtool("check", "config", SCRAPE_CONFIG.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    gateway_port = Settings().metrics_port  # compose leaves TAXI_METRICS_PORT at its default
    assert jobs["gateway"]["static_configs"][0]["targets"] == [f"gateway:{gateway_port}"]
    assert str(gateway_port) in compose["gateway"]["expose"]
    dispatcher = compose["dispatcher"]["command"]
    worker_port = dispatcher[dispatcher.index("--metrics-port") + 1]
    # Every replica of `--scale dispatcher=N`, by the service's name.
    assert jobs["dispatcher"]["dns_sd_configs"] == [
        {"names": ["dispatcher"], "type": "A", "port": int(worker_port), "refresh_interval": "15s"}
    ]
    nodes = sorted(name for name in compose if name == "rabbitmq" or name.startswith("rabbitmq-"))
    assert jobs["rabbitmq"]["static_configs"][0]["targets"] == [f"{n}:15692" for n in nodes]

    prometheus = compose["prometheus"]
    mounted = {volume.split(":")[1]: volume.split(":")[0] for volume in prometheus["volumes"]}
    assert mounted["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert mounted["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"
    assert config["rule_files"] == ["alerts.yml"]

    grafana = compose["grafana"]
    mounted = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    assert mounted["/var/lib/grafana/dashboards/taxi.json"] == "./deploy/grafana/taxi.json"
    provisioning = GRAFANA / "provisioning"
    assert mounted["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    dashboards = yaml.safe_load((provisioning / "dashboards" / "taxi.yml").read_text())
    assert dashboards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


# --- every metric they read, served by the live processes ------------------------------


async def scrape(url: str) -> dict[str, float]:
    """Each sample of a process's /metrics, by name and labels (`name{a="b"}`), summed."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url)
    assert response.status_code == 200
    samples: dict[str, float] = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = samples.get(key, 0.0) + float(value)
    return samples


def served(samples: dict[str, float]) -> set[str]:
    return {key.partition("{")[0] for key in samples}


async def until(url: str, wanted: str, within: float = 20) -> dict[str, float]:
    """The worker looks its watched metrics up every few seconds: scrape until one shows."""
    deadline = time.monotonic() + within
    while True:
        samples = await scrape(url)
        if samples.get(wanted) == 1 or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.5)


async def test_every_metric_the_dashboard_and_the_alerts_read_is_served_by_the_processes(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    gateway, base_url = start_gateway(isolated_settings, tmp_path)
    worker_port = free_port()
    worker = start_dispatcher(isolated_settings, tmp_path / "worker.log", metrics_port=worker_port)
    worker_metrics = f"http://127.0.0.1:{worker_port}/metrics"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            rider = await create_account(http, "rider")
            driver = await create_account(http, "driver")
        async with (
            await connect(base_url, rider.access) as rider_ws,
            await connect(base_url, driver.access) as driver_ws,
        ):
            data = {"pick_up_address": "A", "drop_off_address": "B"}
            await send(rider_ws, {"type": "create.trip", "data": data})
            trip = (await receive_until(rider_ws, lambda f: f["type"] == "trip.requested"))["data"]
            await receive_until(driver_ws, about(trip["id"], "trip.requested"))
            for status, event in (("STARTED", "trip.accepted"), ("IN_PROGRESS", "trip.picked_up")):
                update = {"type": "update.trip", "data": {"id": trip["id"], "status": status}}
                await send(driver_ws, update)
                await receive_until(driver_ws, about(trip["id"], event))
                await receive_until(rider_ws, about(trip["id"], event))
            where = {"lat": 52.3791, "lng": 4.8995, "heading": 90.0}
            await send(driver_ws, {"type": "update.location", "data": where})
            await receive_until(rider_ws, lambda f: f["type"] == "driver.location")
            update = {"type": "update.trip", "data": {"id": trip["id"], "status": "COMPLETED"}}
            await send(driver_ws, update)
            await receive_until(rider_ws, about(trip["id"], "trip.completed"))
            gateway_samples = await until(metrics_url(gateway), "taxi_database_primary")
        worker_samples = await until(worker_metrics, "taxi_dispatcher_ready")
    finally:
        worker.stop()
        gateway.stop()

    exposed = served(gateway_samples) | served(worker_samples)
    missing = metric_names() - exposed - PROMETHEUS_OWN
    assert not missing, f"read by the dashboard or the alerts, served by no process: {missing}"

    # What the panels show moved with the trip.
    for outcome in ("requested", "accepted", "picked_up", "completed"):
        assert worker_samples[f'taxi_dispatcher_trips_total{{outcome="{outcome}"}}'] == 1
    assert worker_samples['taxi_dispatcher_trips_total{outcome="no_driver"}'] == 0
    assert worker_samples["taxi_dispatcher_offer_seconds_count"] == 1
    assert worker_samples["taxi_dispatcher_assign_seconds_count"] == 1
    assert gateway_samples["taxi_gateway_location_seconds_count"] >= 1
    # Looked up rather than counted: ready, on the primary, the queues empty again.
    assert worker_samples["taxi_dispatcher_ready"] == 1
    assert worker_samples["taxi_database_primary"] == 1
    assert gateway_samples["taxi_database_primary"] == 1
    assert worker_samples["taxi_database_failovers_total"] == 0
    assert worker_samples['taxi_dispatcher_queue_messages{queue="commands"}'] == 0
    assert worker_samples['taxi_dispatcher_queue_messages{queue="dead_letters"}'] == 0
