"""The operator's Grafana dashboard, built from code (Grafana's own foundation SDK).

    python deploy/grafana/generate.py          # writes deploy/grafana/taxi.json

`taxi.json` is committed, and compose's Grafana loads it (deploy/grafana/provisioning/);
a test checks that it is what this script makes, and that every metric its queries
read is one the running processes serve (tests/ops/test_observability.py). Prometheus
scrapes the jobs `gateway`, `dispatcher` and `rabbitmq` (deploy/prometheus/prometheus.yml).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUTPUT = Path(__file__).with_name("taxi.json")
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# The offer latency the service aims at (p99), as the alert TaxiOfferLatencyHigh.
OFFER_TARGET_SECONDS = 0.1


def query(expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend)


def graph(
    title: str, description: str, unit: str, *queries: prometheus.Dataquery
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .height(8)
        .span(8)
    )
    for ref_id, target in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(target.ref_id(ref_id))
    return panel


def number(title: str, description: str, expr: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, title).ref_id("A"))
        .height(4)
        .span(6)
    )


def quantiles(metric: str) -> list[prometheus.Dataquery]:
    return [
        query(
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[$__rate_interval])))",
            f"p{round(q * 100)}",
        )
        for q in (0.5, 0.99)
    ]


def build() -> dashboard.Dashboard:
    return (
        dashboard.Dashboard("Taxi dispatch")
        .uid("taxi-dispatch")
        .description(
            "What an operator watches: trips, latency, sockets, queues, workers, broker, database."
        )
        .tags(["taxi"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
        .with_row(dashboard.Row("Trips"))
        .with_panel(
            graph(
                "Trips per second by outcome",
                "Trips reaching each state, once committed: requested, accepted, picked_up, "
                "completed, cancelled (by the rider), no_driver (nobody accepted in time), "
                "driver_lost.",
                "reqps",
                query(
                    "sum by (outcome) (rate(taxi_dispatcher_trips_total[$__rate_interval]))",
                    "{{outcome}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Requests ending no_driver",
                "Of the trips requested, the share cancelled because nobody accepted in time "
                "(alert TaxiNoDriverShareHigh above 20% for 15 minutes).",
                "percentunit",
                query(
                    'sum(rate(taxi_dispatcher_trips_total{outcome="no_driver"}[15m]))'
                    ' / sum(rate(taxi_dispatcher_trips_total{outcome="requested"}[15m]))',
                    "no_driver share",
                ),
            )
        )
        .with_panel(
            graph(
                "Commands per second by outcome",
                "Commands the workers handled: applied, refused (a rule said no), duplicate, "
                "failed (retried), dead_lettered, invalid.",
                "reqps",
                query(
                    "sum by (outcome) (rate(taxi_dispatcher_commands_total[$__rate_interval]))",
                    "{{outcome}}",
                ),
            )
        )
        .with_row(dashboard.Row("Latency"))
        .with_panel(
            graph(
                "Offer latency",
                "From a rider's request reaching the gateway to its first offers published "
                f"(target: p99 under {OFFER_TARGET_SECONDS * 1000:.0f} ms).",
                "s",
                *quantiles("taxi_dispatcher_offer_seconds"),
            )
        )
        .with_panel(
            graph(
                "Assign latency",
                "From a driver's accept reaching the gateway to the rider and the other "
                "drivers being told.",
                "s",
                *quantiles("taxi_dispatcher_assign_seconds"),
            )
        )
        .with_panel(
            graph(
                "Location latency",
                "From a driver's location report reaching their gateway to the frame queued "
                "for the rider's sockets.",
                "s",
                *quantiles("taxi_gateway_location_seconds"),
            )
        )
        .with_row(dashboard.Row("Traffic"))
        .with_panel(
            graph(
                "Open sockets",
                "WebSockets open now on all gateways, riders and drivers.",
                "short",
                query("sum by (role) (taxi_gateway_open_connections)", "{{role}}"),
            )
        )
        .with_panel(
            graph(
                "Location reports per second",
                "Drivers' reports received; thinned (within a second of the last) and "
                "dropped (the broker away or behind) beside them.",
                "reqps",
                query(
                    'sum(rate(taxi_gateway_frames_in_total{type="update.location"}[$__rate_interval]))',
                    "received",
                ),
                query(
                    "sum(rate(taxi_gateway_locations_thinned_total[$__rate_interval]))", "thinned"
                ),
                query(
                    "sum(rate(taxi_gateway_locations_dropped_total[$__rate_interval]))", "dropped"
                ),
            )
        )
        .with_panel(
            graph(
                "Outbox backlog",
                "Notifications committed but not yet published: grows only while the broker "
                "is away.",
                "short",
                query("max(taxi_dispatcher_outbox_backlog)", "backlog"),
            )
        )
        .with_row(dashboard.Row("Queues, workers, broker, database"))
        .with_panel(
            graph(
                "Command queue depth",
                "Commands waiting for a worker ({prefix}.dispatcher), as the workers see it.",
                "short",
                query('max(taxi_dispatcher_queue_messages{queue="commands"})', "waiting"),
            )
        )
        .with_panel(
            graph(
                "Dead letters",
                "Commands in {prefix}.dead-letters, and those dead-lettered per minute: each "
                "one needs a look.",
                "short",
                query('max(taxi_dispatcher_queue_messages{queue="dead_letters"})', "in the queue"),
                query("sum(increase(taxi_dispatcher_dead_lettered_total[1m]))", "new per minute"),
            )
        )
        .with_panel(
            graph(
                "Database failovers",
                "Times the processes found their database on another server (a failover) or "
                "the same one restarted, per 5 minutes.",
                "short",
                query("max(increase(taxi_database_failovers_total[5m]))", "failovers"),
            )
        )
        .with_panel(
            number(
                "Workers ready",
                "Dispatcher workers ready now (database and broker reachable, consuming).",
                "sum(taxi_dispatcher_ready)",
            )
        )
        .with_panel(
            number(
                "Broker nodes up",
                "RabbitMQ nodes whose Prometheus endpoint answers (port 15692).",
                'sum(up{job="rabbitmq"})',
            )
        )
        .with_panel(
            number(
                "Database primary seen",
                "1 while some process uses a database server that accepts writes; 0: no primary.",
                "max(taxi_database_primary)",
            )
        )
        .with_panel(
            number(
                "Processes up",
                "Gateways and workers whose metrics Prometheus can scrape.",
                'sum(up{job=~"gateway|dispatcher"})',
            )
        )
    )


def render() -> str:
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main() -> None:
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
