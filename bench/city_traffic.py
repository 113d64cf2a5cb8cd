"""The city scenario's traffic: the sockets of every driver and rider, the reports and
requests the generator sends, what it receives, and the checks it makes of it all
(`bench.city`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import random
import sys
import time
from collections import Counter, deque
from functools import partial
from typing import Any

import numpy as np
import orjson
import psutil

from bench.city_model import (
    CANDIDATES_KEPT,
    CENTRE,
    DISTANCE_TOLERANCE_M,
    LAG_TICK_SECONDS,
    RETRIES,
    RETRY_SECONDS,
    SIDE_M,
    UNAVAILABLE,
    Area,
    CityTrip,
    CollectorPauses,
    Fleet,
    LiveFrame,
    Nearest,
    Phase,
    Sent,
    haversine,
    haversines,
    latency,
    setting,
)
from bench.client import IdleSocket, close_all, open_sockets
from bench.load import Load
from bench.policies import (
    ACCEPT,
    DECLINE,
    Answers,
    Demand,
    dispatch_figures,
)
from bench.resources import ResourceMonitor
from shared.settings import Settings


class City:
    def __init__(self, args: argparse.Namespace, base_url: str, settings: Settings | None) -> None:
        self.args = args
        self.base_url = base_url
        self.max_offers = int(setting(settings, "dispatch_max_offers"))
        self.radius_m = setting(settings, "dispatch_radius_meters")
        self.widen_seconds = setting(settings, "dispatch_widen_seconds")
        self.stale_seconds = setting(settings, "location_stale_seconds")
        self.slack = args.slack
        self.rng = random.Random(args.seed)
        self.area = Area(CENTRE, SIDE_M)
        # Demand and drivers' answers from the seed alone (bench.policies).
        self.demand = Demand(
            self.area, args.seed, getattr(args, "burst", 1), getattr(args, "burst_radius", 0)
        )
        self.answers = Answers(
            args.seed, getattr(args, "decline_share", 0), getattr(args, "ignore_share", 0)
        )
        self.load = Load(base_url, drivers=args.drivers, riders=args.riders, racers=0)
        self.run_id = self.load.run_id
        self.driver_sockets: list[IdleSocket | None] = []
        self.rider_sockets: list[IdleSocket | None] = []
        self.fleet = Fleet(args.drivers, self.area, self.rng, time.perf_counter())
        self.driver_trip: list[CityTrip | None] = [None] * args.drivers
        self.rider_trip: list[CityTrip | None] = [None] * args.riders
        self.free_riders: deque[int] = deque()
        self.by_label: dict[str, CityTrip] = {}
        self.by_id: dict[str, CityTrip] = {}
        self.sent: dict[str, Sent] = {}
        # Trips of every phase without an outcome yet; set once there are none.
        self.open_trips = 0
        self.all_ended = asyncio.Event()
        self.all_ended.set()
        self.phases: dict[str, Phase] = {}
        self.between_phases()
        self.lag: list[tuple[float, float]] = []
        self.collector = CollectorPauses()
        self.reports_started = 0.0
        self.reported_once = asyncio.Event()
        self.closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._loop = asyncio.get_running_loop()

    # --- setting up ---------------------------------------------------------------

    async def sign_up(self) -> float:
        started = time.perf_counter()
        await self.load.sign_up()
        return time.perf_counter() - started

    async def connect(self) -> tuple[int, int, float]:
        """Every user's socket; (opened, failed, seconds)."""
        drivers, riders = self.load.drivers, self.load.riders
        tokens = [user.token for user in [*drivers, *riders]]

        def make(host: str, path: str, index: int) -> IdleSocket:
            if index < len(drivers):
                return IdleSocket(host, path, partial(self._on_driver, index))
            return IdleSocket(host, path, partial(self._on_rider, index - len(drivers)))

        started = time.perf_counter()
        sockets = await open_sockets(self.base_url, tokens, make)
        elapsed = time.perf_counter() - started
        self.driver_sockets = sockets[: len(drivers)]
        self.rider_sockets = sockets[len(drivers) :]
        for i, driver_socket in enumerate(self.driver_sockets):
            if driver_socket is None:
                self.fleet.set_free(i, False, 0.0)  # never connected: no candidate
        self.free_riders.extend(i for i, s in enumerate(self.rider_sockets) if s is not None)
        for opened in sockets:
            if opened is not None:
                opened.closed.add_done_callback(self._socket_closed)
        failed = sum(1 for s in sockets if s is None)
        return len(sockets) - failed, failed, elapsed

    def _socket_closed(self, _: Any) -> None:
        if not self.closing:
            self.phase.socket_closes += 1

    def watch(self) -> None:
        """Start timing the generator's own loop lag and collector pauses, and showing
        progress: every phase's figures have them, the quiet one's too."""
        gc.callbacks.append(self.collector)
        self._tasks += [
            asyncio.create_task(self._watch_lag()),
            asyncio.create_task(self._progress()),
        ]

    def start_reports(self) -> None:
        self._tasks.append(asyncio.create_task(self._report_locations()))

    async def close(self) -> None:
        self.closing = True
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self.collector)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await close_all([s for s in [*self.driver_sockets, *self.rider_sockets] if s is not None])

    # --- locations --------------------------------------------------------------

    async def _report_locations(self) -> None:
        """Driver k % N reports at start + k * interval / N: every driver once an
        interval, staggered evenly; late ticks catch up at once (open loop)."""
        connected = [i for i, s in enumerate(self.driver_sockets) if s is not None]
        if not connected:
            return
        step = self.args.report_seconds / len(connected)
        start = self.reports_started = time.perf_counter()
        sent = 0
        while True:
            now = time.perf_counter()
            due = int((now - start) / step) + 1
            while sent < due:
                self._report(connected[sent % len(connected)], now)
                sent += 1
            if sent >= len(connected):
                self.reported_once.set()
            await asyncio.sleep(max(0.005, start + sent * step - time.perf_counter()))

    def _report(self, i: int, now: float) -> None:
        driver_socket = self.driver_sockets[i]
        assert driver_socket is not None
        lat, lng, heading, speed = self.fleet.where(i, now)
        frame = {
            "type": "update.location",
            "data": {"lat": lat, "lng": lng, "heading": heading, "speed_mps": speed},
        }
        if driver_socket.send_text(orjson.dumps(frame)):
            self.fleet.reported(i, lat, lng, now)
            self.phase.locations_sent += 1

    # --- trips --------------------------------------------------------------------

    def between_phases(self) -> None:
        """What happens from now on (the first reports, say) is no measured phase's."""
        self.phase = Phase("set-up", False, 0, 0)

    async def run_phase(
        self,
        name: str,
        with_pick_up: bool,
        rate: float,
        seconds: float,
        watched: dict[str, list[int]],
    ) -> Phase:
        phase = self.phase = self.phases[name] = Phase(name, with_pick_up, rate, seconds)
        print(
            f"{name}: {rate:g} trips/s for {seconds:g}s"
            + (" (with pick_up)" if with_pick_up else " (no pick_up: broadcast)" if rate else ""),
            file=sys.stderr,
            flush=True,
        )
        monitor = ResourceMonitor()
        for process, pids in watched.items():
            monitor.watch(process, pids)
        # What the phases before left lives on: keep the collector from walking it again.
        gc.freeze()
        monitor.start()
        machine_before = psutil.cpu_times()
        others_before = await asyncio.to_thread(_cpu_by_process)
        phase.started_at = time.perf_counter()
        count = int(rate * seconds)
        for number in range(count):
            delay = phase.started_at + self.demand.offset(number, rate) - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self._request(phase, number)
        if rate <= 0:
            await asyncio.sleep(seconds)
        phase.sending_ended_at = time.perf_counter()
        if phase.open_trips == 0:
            phase.all_ended.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(phase.all_ended.wait(), self.args.drain_seconds)
        phase.ended_at = time.perf_counter()
        phase.processes = monitor.stop()
        phase.machine_busy_percent = _busy_percent(machine_before, psutil.cpu_times())
        phase.others = _others(
            others_before,
            await asyncio.to_thread(_cpu_by_process),
            {pid for pids in watched.values() for pid in pids},
            phase.ended_at - phase.started_at,
        )
        return phase

    def _request(self, phase: Phase, number: int) -> None:
        if not self.free_riders:
            phase.skipped_no_free_rider += 1
            return
        rider = self.free_riders.popleft()
        rider_socket = self.rider_sockets[rider]
        assert rider_socket is not None
        label = f"city {self.run_id} {phase.name} {number}"
        key = f"{self.run_id}-{len(self.phases)}-{number}"
        now = time.perf_counter()
        data: dict[str, Any] = {"pick_up_address": label, "drop_off_address": "B"}
        pick_up = None
        if phase.with_pick_up:
            pick_up = self.area.point(*self.demand.pick_up_xy(number))
            data["pick_up"] = {"lat": pick_up[0], "lng": pick_up[1]}
        trip = CityTrip(key, label, phase.name, rider, now, pick_up)
        if pick_up is not None:
            trip.nearest = self._nearest(pick_up, now)
        self.by_label[label] = trip
        phase.trips.append(trip)
        phase.open_trips += 1
        self.open_trips += 1
        self.all_ended.clear()
        self.rider_trip[rider] = trip
        frame = {"type": "create.trip", "request_id": key, "data": data}
        self._send(self.rider_sockets, Sent(trip, rider, None, orjson.dumps(frame)), key)

    def _send(self, sockets: list[IdleSocket | None], sent: Sent, request_id: str) -> None:
        self.sent[request_id] = sent
        user_socket = sockets[sent.user]
        if user_socket is not None:
            user_socket.send_text(sent.frame)

    def _again(self, request_id: str, phase: Phase) -> bool:
        """Send a request the gateway could not pass on again, after a while; False once
        it was sent RETRIES times more."""
        sent = self.sent[request_id]
        if sent.attempts > RETRIES:
            return False
        sent.attempts += 1
        phase.retries += 1
        sockets = self.rider_sockets if sent.status is None else self.driver_sockets
        delay = RETRY_SECONDS * 2 ** (sent.attempts - 2)
        self._loop.call_later(delay, self._send, sockets, sent, request_id)
        return True

    def _nearest(self, pick_up: tuple[float, float], now: float) -> Nearest:
        """The request's candidates: the free drivers with a fresh location, nearest
        first, by the farthest position the dispatcher may hold for each (one in flight
        or the one before), and by the latest one only. Chosen by a flat-earth distance
        (cheap over 10,000 drivers, off by well under 1% across the square), twice as
        many as kept, then ranked by the haversine."""
        fleet = self.fleet
        lat, lng = pick_up
        squeeze = math.cos(math.radians(lat))
        latest = (fleet.lat1 - lat) ** 2 + ((fleet.lng1 - lng) * squeeze) ** 2
        previous = (fleet.lat0 - lat) ** 2 + ((fleet.lng0 - lng) * squeeze) ** 2
        settled = fleet.t1 <= now - self.slack
        with np.errstate(invalid="ignore"):
            farthest = np.where(
                settled, latest, np.where(np.isnan(previous), np.inf, np.fmax(previous, latest))
            )
        fresh = fleet.t1 >= now - self.stale_seconds
        surely_fresh = fleet.t1 >= now - (self.stale_seconds - self.slack)
        chosen = _nearest_of(np.where(fleet.free & surely_fresh, farthest, np.inf))
        surely, surely_m = self._ranked(pick_up, chosen, settled)
        chosen = _nearest_of(np.where(fleet.free & fresh, latest, np.inf))
        by_latest, by_latest_m = self._ranked(pick_up, chosen, None)
        return Nearest(surely, surely_m, by_latest, by_latest_m)

    def _ranked(
        self, pick_up: tuple[float, float], chosen: np.ndarray, settled: np.ndarray | None
    ) -> tuple[list[int], list[float]]:
        """The CANDIDATES_KEPT nearest of `chosen` by the haversine, and their distances:
        to the latest position, or with `settled`, to the farthest the dispatcher may
        hold (the latest once it has surely arrived, else the latest or the one before)."""
        fleet = self.fleet
        metres = haversines(*pick_up, fleet.lat1[chosen], fleet.lng1[chosen])
        if settled is not None:
            before = haversines(*pick_up, fleet.lat0[chosen], fleet.lng0[chosen])
            metres = np.where(settled[chosen], metres, np.fmax(before, metres))
        order = np.argsort(metres, kind="stable")[:CANDIDATES_KEPT]
        return chosen[order].tolist(), metres[order].tolist()

    def _trip_of(self, data: Any) -> CityTrip | None:
        if not isinstance(data, dict):
            return None
        trip = self.by_id.get(data.get("id") or "")
        if trip is None:
            trip = self.by_label.get(data.get("pick_up_address") or "")
            if trip is not None and trip.id is None and isinstance(data.get("id"), str):
                trip.id = data["id"]
                self.by_id[trip.id] = trip
        return trip

    def _send_update(self, driver: int, trip: CityTrip, status: str) -> None:
        if trip.id is not None:
            if status == "COMPLETED" and trip.completed_sent_at is None:
                trip.completed_sent_at = time.perf_counter()
            request_id = f"{trip.key}-{driver}-{status}"
            frame = {
                "type": "update.trip",
                "request_id": request_id,
                "data": {"id": trip.id, "status": status},
            }
            self._send(
                self.driver_sockets, Sent(trip, driver, status, orjson.dumps(frame)), request_id
            )

    def _on_driver(self, driver: int, payload: bytes) -> None:
        now = time.perf_counter()
        frame = orjson.loads(payload)
        kind = frame.get("type")
        data = frame.get("data")
        self.phase.frames[f"driver {kind}"] += 1
        if kind == "error":
            self._driver_error(driver, data, now)
            return
        trip = self._trip_of(data)
        if trip is None:
            return
        phase = self.phases.get(trip.phase, self.phase)
        if kind == "trip.requested":
            self._offered(driver, trip, phase, data, now)
        elif kind in ("trip.taken", "trip.cancelled"):
            trip.closed = True
            if self.driver_trip[driver] is trip:  # their own trip, cancelled
                self.driver_trip[driver] = None
                self.fleet.set_free(driver, True, now)
        elif kind == "trip.accepted":
            trip.winners.add(driver)
            trip.driver_accepted_at.setdefault(driver, now)
            trip.closed = True
            self._loop.call_later(
                self.args.trip_seconds / 2, self._send_update, driver, trip, "IN_PROGRESS"
            )
        elif kind == "trip.withdrawn":
            phase.frames[f"withdrawn {data.get('reason')}"] += 1
        elif kind == "trip.picked_up":
            self._loop.call_later(
                self.args.trip_seconds / 2, self._send_update, driver, trip, "COMPLETED"
            )
        elif kind == "trip.completed" and self.driver_trip[driver] is trip:
            self.driver_trip[driver] = None
            self.fleet.set_free(driver, True, now)

    def _offered(
        self, driver: int, trip: CityTrip, phase: Phase, data: dict[str, Any], now: float
    ) -> None:
        if driver in trip.offers:
            phase.duplicate_offers += 1
            return
        trip.offers[driver] = now
        if isinstance(data.get("distance_m"), int | float):
            trip.distance_m[driver] = float(data["distance_m"])
        phase.offer_ms.append((now - trip.sent_at) * 1000)
        if trip.first_offer_at is None:
            trip.first_offer_at = now
            phase.first_offer_ms.append((now - trip.sent_at) * 1000)
        if trip.closed or trip.racers >= self.args.racers or not self.fleet.free[driver]:
            return
        answer = self.answers.answer(trip, driver)
        if answer != ACCEPT:
            driver_socket = self.driver_sockets[driver]
            if answer == DECLINE and trip.id is not None and driver_socket is not None:
                decline = {"type": "decline.trip", "data": {"id": trip.id}}
                driver_socket.send_text(orjson.dumps(decline))
            return
        trip.racers += 1
        trip.first_accept_at = trip.first_accept_at or now
        self.driver_trip[driver] = trip
        self.fleet.set_free(driver, False, now)
        self._send_update(driver, trip, "STARTED")

    def _driver_error(self, driver: int, data: Any, now: float) -> None:
        data = data if isinstance(data, dict) else {}
        code, request = data.get("code"), data.get("request")
        sent = self.sent.get(data.get("request_id") or "")
        phase = self.phases.get(sent.trip.phase, self.phase) if sent else self.phase
        if code == "trip_unavailable":
            phase.lost_races += 1
        else:
            phase.errors[f"{request}: {code}"] += 1
        if sent is None:
            return
        if code == UNAVAILABLE and self._again(data["request_id"], phase):
            return
        if sent.status == "STARTED" and self.driver_trip[driver] is sent.trip:
            self.driver_trip[driver] = None  # the race was lost: free again
            self.fleet.set_free(driver, True, now)
            # Lost to another driver, or the offer's window had passed: a later offer
            # of the trip (the next ring, round) may be raced for again.
            sent.trip.racers -= 1

    def _on_rider(self, rider: int, payload: bytes) -> None:
        now = time.perf_counter()
        frame = orjson.loads(payload)
        kind = frame.get("type")
        data = frame.get("data")
        self.phase.frames[f"rider {kind}"] += 1
        if kind == "driver.location":
            data = data if isinstance(data, dict) else {}
            trip_id = data.get("trip_id")
            located = self.by_id.get(trip_id) if isinstance(trip_id, str) else None
            phase = self.phases.get(located.phase, self.phase) if located else self.phase
            phase.live.append(LiveFrame(rider, trip_id, data.get("lat"), data.get("lng"), now))
            return
        if kind == "error":
            data = data if isinstance(data, dict) else {}
            code = data.get("code")
            sent = self.sent.get(data.get("request_id") or "")
            phase = self.phases.get(sent.trip.phase, self.phase) if sent else self.phase
            phase.errors[f"{data.get('request')}: {code}"] += 1
            if sent is None or sent.trip.id is not None:
                return
            if code == UNAVAILABLE and self._again(data["request_id"], phase):
                return
            self._ended(sent.trip, f"refused ({code})", now)
            return
        trip = self._trip_of(data)
        if trip is None:
            return
        phase = self.phases.get(trip.phase, self.phase)
        if kind == "trip.requested" and trip.notified_at is None:
            trip.notified_at = now
            phase.notified_ms.append((now - trip.sent_at) * 1000)
        elif kind == "trip.accepted" and trip.assigned_at is None:
            trip.assigned_at = now
            trip.closed = True
            if trip.first_accept_at is not None:
                phase.assign_ms.append((now - trip.first_accept_at) * 1000)
        elif kind == "trip.completed":
            phase.full_trip_ms.append((now - trip.sent_at) * 1000)
            self._ended(trip, "completed", now)
        elif kind == "trip.cancelled":
            reason = data.get("cancel_reason") if isinstance(data, dict) else None
            self._ended(trip, f"cancelled ({reason})", now)

    def _ended(self, trip: CityTrip, outcome: str, now: float) -> None:
        if trip.outcome is not None:
            return
        trip.outcome = outcome
        trip.closed = True
        trip.ended_at = now
        phase = self.phases[trip.phase]
        phase.open_trips -= 1
        if phase.open_trips == 0 and phase.sending_ended_at:
            phase.all_ended.set()
        self.open_trips -= 1
        if self.open_trips == 0:
            self.all_ended.set()
        if self.rider_trip[trip.rider] is trip:
            self.rider_trip[trip.rider] = None
            self.free_riders.append(trip.rider)

    # --- watching the generator -----------------------------------------------

    async def _watch_lag(self) -> None:
        """How late a 50 ms sleep wakes: the generator's event-loop lag."""
        while True:
            expected = time.perf_counter() + LAG_TICK_SECONDS
            await asyncio.sleep(LAG_TICK_SECONDS)
            now = time.perf_counter()
            self.lag.append((now, max(0.0, now - expected) * 1000))

    def lag_between(self, start: float, end: float) -> dict[str, float | int | None]:
        return latency([ms for at, ms in self.lag if start <= at <= end])

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(1)
            phase = self.phase
            recent = [ms for at, ms in self.lag[-20:]]
            first = sorted(phase.first_offer_ms[-200:])
            p99 = f"{first[max(0, math.ceil(len(first) * 0.99) - 1)]:.1f}ms" if first else "-"
            ended = sum(1 for t in phase.trips if t.outcome is not None)
            print(
                f"[{phase.name}] requested {len(phase.trips)} ended {ended}"
                f" offers {len(phase.offer_ms)} (recent first-offer p99 {p99})"
                f" locations {phase.locations_sent} to riders {len(phase.live)}"
                f" errors {sum(phase.errors.values())} retries {phase.retries}"
                f" loop lag max {max(recent, default=0):.0f}ms",
                file=sys.stderr,
                flush=True,
            )

    # --- the nearest-drivers check --------------------------------------------

    def check(self, phase: Phase) -> dict[str, Any]:
        """Each first-ring offer of the phase's trips against the generator's record."""
        fleet = self.fleet
        checked = violations = strict_violations = offered_busy = unlocated = 0
        beyond_radius = 0
        ranks: Counter[int] = Counter()
        strict_ranks: Counter[int] = Counter()
        mismatch: list[float] = []
        behind_ms: list[float] = []
        unmatched = superseded = 0
        examples: list[dict[str, Any]] = []
        for trip in phase.trips:
            if trip.pick_up is None or trip.nearest is None:
                continue
            ring = self._first_ring(trip)
            if not ring:
                continue
            until = max(ring.values())
            farthest: dict[int, float] = {}

            for driver, at in ring.items():
                checked += 1
                spots = fleet.positions(driver, trip.sent_at, at, self.slack)
                if not spots:
                    unlocated += 1
                    continue
                distances = [haversine(*trip.pick_up, *p) for p in spots]
                near = min(distances)
                if fleet.steady(driver, trip.sent_at - self.slack, at) is False:
                    offered_busy += 1
                reported = trip.distance_m.get(driver)
                if reported is not None:
                    mismatch.append(min(abs(reported - d) for d in distances))
                    used = self._position_used(trip, driver, at, reported)
                    if used is None:
                        unmatched += 1
                    else:
                        latest_sent = fleet.reports(driver, trip.sent_at, 1)
                        if latest_sent:
                            behind_ms.append(max(0.0, latest_sent[0][0] - used) * 1000)
                        newer = fleet.reports(driver, trip.sent_at - self.slack, 1)
                        if newer and newer[0][0] > used:
                            superseded += 1
                if (near if reported is None else reported) > self.radius_m + DISTANCE_TOLERANCE_M:
                    beyond_radius += 1
                rank = 1
                for j, at_request in zip(trip.nearest.surely, trip.nearest.surely_m, strict=True):
                    if at_request >= near - DISTANCE_TOLERANCE_M:
                        # Sorted so; and a report sent later only adds a position, so
                        # the farthest can only grow: no one from here on is nearer.
                        break
                    if j == driver:
                        continue
                    if fleet.steady(j, trip.sent_at - self.slack, until) is not True:
                        continue
                    if self._farthest(trip, j, until, farthest) < near - DISTANCE_TOLERANCE_M:
                        rank += 1
                latest = fleet.latest(driver, trip.sent_at)
                latest_m = haversine(*trip.pick_up, *latest) if latest else math.inf
                strict = 1 + sum(
                    1
                    for j, m in zip(trip.nearest.latest, trip.nearest.latest_m, strict=True)
                    if j != driver and m < latest_m - DISTANCE_TOLERANCE_M
                )
                ranks[min(rank, CANDIDATES_KEPT + 1)] += 1
                strict_ranks[min(strict, CANDIDATES_KEPT + 1)] += 1
                if strict > self.max_offers:
                    strict_violations += 1
                if rank > self.max_offers:
                    violations += 1
                    if len(examples) < 5:
                        examples.append(
                            {
                                "trip": trip.id,
                                "driver_index": driver,
                                "rank": rank,
                                "strict_rank": strict,
                                "distance_m": reported,
                                "generator_distance_m": round(near, 1),
                                "offered_after_ms": round((at - trip.sent_at) * 1000, 1),
                            }
                        )
        return {
            "first_ring_offers_checked": checked,
            "rank_above_max_offers": violations,
            "worst_rank": max(ranks, default=None),
            "ranks": {str(k): v for k, v in sorted(ranks.items())},
            "strict_rank_above_max_offers": strict_violations,
            "worst_strict_rank": max(strict_ranks, default=None),
            "offered_while_surely_busy": offered_busy,
            "offered_without_a_location": unlocated,
            "beyond_radius": beyond_radius,
            "distance_m_mismatch": latency(mismatch),
            "position_used": {
                # How much older than the driver's latest report before the request: 0
                # when the dispatcher was up to date.
                "behind_latest_report_ms": latency(behind_ms),
                "superseded_by_a_report_older_than_slack": superseded,
                "matching_no_recent_report": unmatched,
            },
            "examples": examples,
        }

    def _farthest(
        self, trip: CityTrip, driver: int, until: float, cache: dict[int, float]
    ) -> float:
        """The farthest from the trip's pick-up of the positions the dispatcher may have
        held for `driver` (cached per trip)."""
        if driver not in cache:
            assert trip.pick_up is not None
            spots = self.fleet.positions(driver, trip.sent_at, until, self.slack)
            cache[driver] = max((haversine(*trip.pick_up, *p) for p in spots), default=0.0)
        return cache[driver]

    def _position_used(
        self, trip: CityTrip, driver: int, at: float, reported_m: float
    ) -> float | None:
        """When the report was sent whose distance to the pick-up the offer's
        `distance_m` matches (of the driver's last few by the offer), or None."""
        assert trip.pick_up is not None
        best: tuple[float, float] | None = None
        for sent_at, spot in self.fleet.reports(driver, at, 6):
            error = abs(haversine(*trip.pick_up, *spot) - reported_m)
            if best is None or error <= best[0]:
                best = (error, sent_at)
        if best is None or best[0] > DISTANCE_TOLERANCE_M:
            return None
        return best[1]

    def _first_ring(self, trip: CityTrip) -> dict[int, float]:
        """The offers of the trip's first ring: those that arrived within half the
        widening delay of its first offer (a ring goes out at once, the next one
        TAXI_DISPATCH_WIDEN_SECONDS later), however late that first one came."""
        if trip.first_offer_at is None:
            return {}
        end = trip.first_offer_at + self.widen_seconds / 2
        return {driver: at for driver, at in trip.offers.items() if at < end}

    # --- live tracking ------------------------------------------------------------

    def live_tracking(self, phase: Phase) -> dict[str, Any]:
        """The phase's `driver.location` frames against the generator's record: how
        long each report took to reach the trip's rider, and any that reached a rider
        who is not on the trip, carried no report of the trip's driver, or came after
        the trip ended."""
        fleet = self.fleet
        latency_ms: list[float] = []
        foreign = unmatched = after_end = before_accepted = at_acceptance = duplicates = 0
        delivered: set[tuple[int, float]] = set()
        per_trip: Counter[str] = Counter()
        examples: list[dict[str, Any]] = []
        for frame in phase.live:
            trip = self.by_id.get(frame.trip_id) if isinstance(frame.trip_id, str) else None
            if trip is None or trip.rider != frame.rider:
                foreign += 1
                if len(examples) < 5:
                    examples.append({"why": "not the rider's trip", "trip_id": frame.trip_id})
                continue
            assert trip.id is not None
            per_trip[trip.id] += 1
            if trip.ended_at is not None and frame.at > trip.ended_at:
                after_end += 1
                if len(examples) < 5:
                    examples.append(
                        {
                            "why": "after the trip ended",
                            "trip_id": trip.id,
                            "late_ms": round((frame.at - trip.ended_at) * 1000, 1),
                        }
                    )
            if trip.assigned_at is None or frame.at < trip.assigned_at:
                before_accepted += 1
            match = None
            for driver, accepted_at in trip.driver_accepted_at.items():
                sent_at = fleet.sent_with(driver, (frame.lat, frame.lng), frame.at)
                if sent_at is not None:
                    match = (driver, sent_at, accepted_at)
                    break
            if match is None:
                unmatched += 1
                if len(examples) < 5:
                    examples.append(
                        {
                            "why": "no report of the trip's driver",
                            "trip_id": trip.id,
                            "position": [frame.lat, frame.lng],
                        }
                    )
                continue
            driver, sent_at, accepted_at = match
            if (driver, sent_at) in delivered:
                duplicates += 1
                continue
            delivered.add((driver, sent_at))
            if sent_at < accepted_at:
                at_acceptance += 1  # where the driver was at acceptance, sent earlier
            else:
                latency_ms.append((frame.at - sent_at) * 1000)
        # Reports sent under way (the driver had its trip.accepted and had not sent
        # COMPLETED) by trips that completed: each should have reached the rider.
        expected = missed = 0
        trips_under_way = 0
        for trip in phase.trips:
            if trip.outcome != "completed" or not trip.driver_accepted_at:
                continue
            trips_under_way += 1
            end = trip.completed_sent_at or trip.ended_at or math.inf
            for driver, accepted_at in trip.driver_accepted_at.items():
                for sent_at in fleet.sent_between(driver, accepted_at, end):
                    expected += 1
                    missed += (driver, sent_at) not in delivered
        frames = [per_trip.get(t.id or "", 0) for t in phase.trips if t.driver_accepted_at]
        return {
            "location_to_rider_ms": latency(latency_ms),
            "frames": len(phase.live),
            "at_acceptance": at_acceptance,
            "trips_with_a_driver": trips_under_way,
            "trips_with_frames": sum(1 for n in frames if n),
            "frames_per_trip_mean": round(sum(frames) / len(frames), 2) if frames else None,
            "reports_under_way": expected,
            "reports_under_way_not_delivered": missed,
            "duplicates": duplicates,
            "to_a_rider_not_on_the_trip": foreign,
            "matching_no_report_of_the_trips_driver": unmatched,
            "after_the_trip_ended": after_end,
            "before_the_riders_trip_accepted": before_accepted,
            "wrong": foreign + unmatched + after_end,
            "examples": examples,
        }

    # --- the figures of a phase -----------------------------------------------

    def summary(self, phase: Phase) -> dict[str, Any]:
        trips = phase.trips
        outcomes = Counter(t.outcome or "lost" for t in trips)
        first_ring = [len(self._first_ring(t)) for t in trips if t.offers]
        offered = [len(t.offers) for t in trips]
        elapsed = phase.ended_at - phase.started_at
        result: dict[str, Any] = {
            "with_pick_up": phase.with_pick_up,
            "rate_offered": phase.rate,
            "seconds_sending": round(phase.sending_ended_at - phase.started_at, 1),
            "seconds_in_all": round(elapsed, 1),
            "trips": {
                "requested": len(trips),
                "achieved_rate": round(len(trips) / phase.seconds, 2) if phase.seconds else 0,
                "skipped_no_free_rider": phase.skipped_no_free_rider,
                "outcomes": dict(outcomes),
                "lost": outcomes.get("lost", 0),
                "never_offered": sum(1 for t in trips if not t.offers),
            },
            "latency_ms": {
                "first_offer": latency(phase.first_offer_ms),
                "every_offer": latency(phase.offer_ms),
                "rider_notified": latency(phase.notified_ms),
                "assign": latency(phase.assign_ms),
                "full_trip": latency(phase.full_trip_ms),
            },
            "offers": {
                "delivered": len(phase.offer_ms),
                "per_second": round(len(phase.offer_ms) / elapsed, 1) if elapsed else 0,
                "per_trip_mean": round(sum(offered) / len(offered), 1) if offered else None,
                "first_ring_per_trip_max": max(first_ring, default=None),
                "first_ring_per_trip_mean": round(sum(first_ring) / len(first_ring), 2)
                if first_ring
                else None,
                "trips_over_max_offers_in_first_ring": sum(
                    1 for n in first_ring if n > self.max_offers
                ),
                "duplicates": phase.duplicate_offers,
            },
            "double_assignments": sum(1 for t in trips if len(t.winners) > 1),
            "lost_races": phase.lost_races,
            "retries": phase.retries,
            "error_frames": dict(phase.errors),
            "frames_received": dict(phase.frames),
            "socket_closes": phase.socket_closes,
            "locations_sent": phase.locations_sent,
            "generator_loop_lag_ms": self.lag_between(phase.started_at, phase.ended_at),
            "generator_gc_pauses": self.collector.between(phase.started_at, phase.ended_at),
            "processes": phase.processes,
            "machine_cpu_busy_percent": phase.machine_busy_percent,
            "busiest_other_processes": phase.others,
        }
        result["live_tracking"] = self.live_tracking(phase)
        if phase.with_pick_up:
            result["nearest_check"] = self.check(phase)
            result["dispatch"] = dispatch_figures(self, phase)
        return result


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    """Every process's (short command line, CPU seconds so far)."""
    taken = {}
    for process in psutil.process_iter(["cmdline", "name", "cpu_times"]):
        times = process.info["cpu_times"]
        if times is None:
            continue
        command = " ".join((process.info["cmdline"] or [])[:3]) or process.info["name"] or "?"
        taken[process.pid] = (command[:80], times.user + times.system)
    return taken


def _others(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    watched: set[int],
    seconds: float,
) -> list[dict[str, Any]]:
    """The processes outside the run (nor children of the generator) that used over 5%
    of a CPU between two samples, busiest first: whatever else the machine was doing."""
    me = os.getpid()
    children = {child.pid for child in psutil.Process(me).children(recursive=True)}
    used: list[tuple[float, int, str]] = []
    for pid, (command, cpu) in after.items():
        if pid in watched or pid in children or pid == me:
            continue
        percent = 100 * (cpu - before.get(pid, (command, 0.0))[1]) / max(seconds, 1e-9)
        if percent > 5:
            used.append((round(percent, 1), pid, command))
    return [
        {"pid": pid, "command": command, "cpu_percent": percent}
        for percent, pid, command in sorted(used, reverse=True)[:5]
    ]


def _busy_percent(before: Any, after: Any) -> float | None:
    """The share of all the machine's CPUs' time spent busy between two samples."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (
        before.idle + getattr(before, "iowait", 0.0)
    )
    return round(100 * (1 - idle / total), 1) if total > 0 else None


def _nearest_of(values: np.ndarray) -> np.ndarray:
    """Indices of the 2 * CANDIDATES_KEPT smallest finite values, in no order."""
    kept = min(2 * CANDIDATES_KEPT, len(values))
    if kept == 0:
        return np.array([], dtype=np.int64)
    part = np.argpartition(values, kept - 1)[:kept]
    result: np.ndarray = part[np.isfinite(values[part])]
    return result
