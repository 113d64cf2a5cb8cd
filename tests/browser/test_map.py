"""The map in the browser client (issue 13): the rider places the pick-up on the map
and watches the driver's car come, the driver shares where they are (the browser's
position, or a simulated drive with `?simulate=1`) and sees how far each offer is.

Pages reach nothing but the test gateway (conftest), so the map runs as it does
offline: no tiles, a plain background, and everything else working. Markers carry
their position in data-lat and data-lng, which is how these tests read where the
car is; its pixel position on the screen is checked to move with it.

Each test puts its people in a place of its own (`somewhere`), far from any other
test's drivers, so dispatch by distance offers its trips to its own drivers only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, WebSocket, expect

from shared.locations import Point, distance_m
from tests.browser.conftest import OpenPage, Screenshot
from tests.browser.people import person, portrait_png
from tests.browser.test_client import (
    ON_THE_WAY,
    addresses,
    cancel,
    expect_fits_the_screen,
    expect_live,
    log_in,
    offer,
    rider_trip,
)
from tests.clients import connect, receive_until
from tests.clients import send as send_frame

pytestmark = pytest.mark.usefixtures("dispatchers")

# How long an offer takes when dispatch must first hear of the driver (a new ring
# comes every TAXI_DISPATCH_WIDEN_SECONDS, 15 s by default).
OFFER_TIMEOUT_MS = 20_000
# How long the helpers below wait for what a page sends or shows.
WAIT_SECONDS = 15
# Metres a degree of latitude spans (on one meridian, distances are exact).
METRES_PER_DEGREE = 111_194.93


def somewhere() -> Point:
    """A place of this test's own."""
    return Point(random.uniform(-40.0, 60.0), random.uniform(-120.0, 150.0))


def north_of(point: Point, metres: float) -> Point:
    return Point(point.lat + metres / METRES_PER_DEGREE, point.lng)


def geolocation(point: Point) -> dict[str, float]:
    return {"latitude": point.lat, "longitude": point.lng, "accuracy": 10}


@dataclass
class Frames:
    """The frames a page sent and received on its WebSockets."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)

    def of(self, frames: list[dict[str, Any]], frame_type: str) -> list[dict[str, Any]]:
        return [frame for frame in frames if frame.get("type") == frame_type]


# Installed before the client's own code: the page's clock (performance.now()) at
# each update.location it sends, as the page itself sees it.
TIME_LOCATIONS = """
(() => {
  const send = WebSocket.prototype.send;
  window.taxiTestLocationTimes = [];
  WebSocket.prototype.send = function (data) {
    if (typeof data === "string" && data.includes('"update.location"')) {
      window.taxiTestLocationTimes.push(performance.now());
    }
    return send.call(this, data);
  };
})();
"""


async def time_locations(context: BrowserContext) -> None:
    await context.add_init_script(TIME_LOCATIONS)


def record_frames(page: Page) -> Frames:
    frames = Frames()

    def parse(payload: str | bytes) -> dict[str, Any]:
        try:
            value = json.loads(payload)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def on_socket(ws: WebSocket) -> None:
        ws.on("framesent", lambda payload: frames.sent.append(parse(payload)))
        ws.on("framereceived", lambda payload: frames.received.append(parse(payload)))

    page.on("websocket", on_socket)
    return frames


async def locations_sent(frames: Frames, count: int) -> list[dict[str, Any]]:
    """Wait until the page has sent `count` update.location frames; their data."""
    deadline = time.monotonic() + WAIT_SECONDS
    while len(sent := frames.of(frames.sent, "update.location")) < count:
        assert time.monotonic() < deadline, f"the page sent {len(sent)} locations: {frames.sent}"
        await asyncio.sleep(0.1)
    return [frame["data"] for frame in sent]


async def marker_at(page: Page, testid: str) -> Point:
    marker = page.get_by_test_id(testid)
    await expect(marker).to_have_count(1)
    lat, lng = await marker.get_attribute("data-lat"), await marker.get_attribute("data-lng")
    assert lat is not None and lng is not None
    return Point(float(lat), float(lng))


async def marker_centre(page: Page, testid: str) -> tuple[float, float]:
    box = await page.get_by_test_id(testid).bounding_box()
    assert box is not None
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


async def positions_of(page: Page, testid: str, count: int) -> list[Point]:
    """The first `count` different positions the marker takes, read from the page."""
    seen: list[Point] = []
    deadline = time.monotonic() + WAIT_SECONDS
    while len(seen) < count:
        assert time.monotonic() < deadline, f"{testid} took only these positions: {seen}"
        here = await marker_at(page, testid)
        if not seen or here != seen[-1]:
            seen.append(here)
        await asyncio.sleep(0.2)
    return seen


async def tap_map(page: Page, map_testid: str, dx: float, dy: float) -> tuple[float, float]:
    """Tap (on a phone) or click the map this many pixels from its centre; where."""
    box = await page.get_by_test_id(map_testid).bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2 + dx, box["y"] + box["height"] / 2 + dy
    if (await page.evaluate("navigator.maxTouchPoints")) > 0:
        await page.touchscreen.tap(x, y)
    else:
        await page.mouse.click(x, y)
    return x, y


def close_to(a: Point, b: Point, metres: float = 2) -> bool:
    return distance_m(a, b) <= metres


async def test_a_whole_trip_on_the_map_the_rider_watches_the_car_come(
    open_page: OpenPage, http: httpx.AsyncClient, screenshot: Screenshot
) -> None:
    home = somewhere()
    ann = await person(http, "rider", "Ann", "Rider", portrait_png((196, 69, 54), (250, 228, 214)))
    dan = await person(
        http, "driver", "Dan", "Driver", portrait_png((31, 95, 191), (220, 233, 251))
    )

    # The rider, on a phone: the pick-up where the browser says she is, the drop-off
    # by tapping the map.
    rider = await open_page(phone=True, geolocation=geolocation(home))
    await log_in(rider, ann.user["username"], "rider")
    await rider.get_by_test_id("use-my-location").click()
    await expect(rider.get_by_test_id("pick-up-point")).to_have_text("set")
    pick_up = await marker_at(rider, "pick-up-marker")
    assert close_to(pick_up, home), (pick_up, home)
    await tap_map(rider, "rider-map", 90, -40)
    await expect(rider.get_by_test_id("drop-off-point")).to_have_text("set")
    drop_off = await marker_at(rider, "drop-off-marker")
    assert 300 < distance_m(pick_up, drop_off) < 3000, distance_m(pick_up, drop_off)
    pick_up_address, drop_off_address = addresses()
    await rider.get_by_test_id("pick-up").fill(pick_up_address)
    await rider.get_by_test_id("drop-off").fill(drop_off_address)

    # The driver, 900 m north of the pick-up, on a simulated drive at 60 m/s.
    start = north_of(pick_up, 900)
    driver = await open_page(
        path=f"/?simulate=1&from={start.lat},{start.lng}&speed=60", before=time_locations
    )
    frames = record_frames(driver)
    await log_in(driver, dan.user["username"], "driver")
    await expect(driver.get_by_test_id("location-status")).to_have_attribute(
        "data-state", "simulated"
    )
    assert close_to(await marker_at(driver, "my-car"), start)
    # Dispatch has taken in the first of them by the time the second is sent.
    reported = await locations_sent(frames, 2)
    assert close_to(Point(reported[0]["lat"], reported[0]["lng"]), start)

    await rider.get_by_test_id("request-trip").click()
    trip = rider_trip(rider, pick_up_address)
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Waiting for a driver")

    # The offer says how far the pick-up is, and shows it on the driver's map.
    offered = offer(driver, pick_up_address)
    await expect(offered).to_have_count(1, timeout=OFFER_TIMEOUT_MS)
    await expect(offered.get_by_test_id("offer-distance")).to_have_text("Pick-up 900 m from you")
    [offer_frame] = [
        f for f in frames.of(frames.received, "trip.requested") if f["data"]["pick_up"]
    ]
    assert abs(offer_frame["data"]["distance_m"] - 900) < 5, offer_frame
    assert close_to(await marker_at(driver, "offer-marker"), pick_up)
    await screenshot(driver, "driver-offer-on-the-map")
    await offered.get_by_test_id("accept-offer").click()

    # One word for the status on both pages; the rider sees who comes, and the car.
    current = driver.get_by_test_id("current-trip")
    await expect(current.get_by_test_id("trip-status")).to_have_text("Driver on the way")
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Driver on the way")
    tracking = rider.get_by_test_id("tracking")
    await expect(tracking).to_be_visible()
    await expect(tracking.get_by_test_id("tracking-name")).to_have_text("Dan Driver")
    await expect(tracking.get_by_test_id("tracking-photo")).to_have_attribute(
        "src", re.compile(r"^/media/")
    )
    await expect(trip.get_by_test_id("trip-driver")).to_have_text("Driver: Dan Driver")
    await expect(trip.get_by_test_id("trip-driver-photo")).to_have_attribute(
        "alt", "Photo of Dan Driver"
    )

    # The car comes: each position the rider's page shows is nearer the pick-up, on
    # the straight line from where the driver started, and it moves on the screen.
    await expect(rider.get_by_test_id("car-marker")).to_have_count(1)
    first_pixel = await marker_centre(rider, "car-marker")
    coming = await positions_of(rider, "car-marker", 3)
    distances = [distance_m(point, pick_up) for point in coming]
    assert distances == sorted(distances, reverse=True), distances
    assert distances[-1] < 900 - 50, distances
    for point in coming:
        assert abs(point.lng - pick_up.lng) < 1e-5, (point, pick_up)  # due north of it
    assert await marker_centre(rider, "car-marker") != first_pixel
    # The simulated car reports once a second at most: the server acts on no more.
    sent_at = await driver.evaluate("window.taxiTestLocationTimes")
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert len(gaps) >= 3 and min(gaps) >= 1000, gaps
    await expect(tracking.get_by_test_id("tracking-distance")).to_have_text(
        re.compile(r"^\d+ m away$")
    )
    await expect(tracking.get_by_test_id("tracking-eta")).to_have_text(
        re.compile(r"^· about \d+ min$")
    )
    await expect(current.get_by_test_id("trip-distance")).to_contain_text("to the pick-up")
    await screenshot(rider, "rider-car-coming")
    await screenshot(driver, "driver-on-the-way")
    await expect_fits_the_screen(rider)

    # On board: the car heads for the drop-off.
    await current.get_by_test_id("picked-up").click()
    await expect(trip.get_by_test_id("trip-status")).to_have_text(ON_THE_WAY)
    await expect(current.get_by_test_id("trip-status")).to_have_text(ON_THE_WAY)
    await expect(tracking.get_by_test_id("tracking-status")).to_have_text("is driving you")
    await expect(tracking.get_by_test_id("tracking-distance")).to_have_text(re.compile(r" to go$"))
    towards_drop_off = await positions_of(rider, "car-marker", 2)
    assert distance_m(towards_drop_off[-1], drop_off) < distance_m(towards_drop_off[0], drop_off)
    await screenshot(rider, "rider-on-board")

    await current.get_by_test_id("dropped-off").click()
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Completed")
    await expect(tracking).to_be_hidden()
    await expect(rider.get_by_test_id("car-marker")).to_have_count(0)
    await expect(rider.get_by_test_id("error-banner")).to_be_hidden()
    await expect(driver.get_by_test_id("error-banner")).to_be_hidden()
    await screenshot(rider, "rider-trip-over")


async def test_the_rider_sets_the_pick_up_by_tapping_the_map(
    open_page: OpenPage, http: httpx.AsyncClient, screenshot: Screenshot
) -> None:
    rider_account = await person(http, "rider", "Ann", "Rider")
    rider = await open_page(phone=True)
    outside: list[str] = []
    rider.on("request", lambda r: None if "127.0.0.1" in r.url else outside.append(r.url))
    await log_in(rider, rider_account.user["username"], "rider")
    rider_map = rider.get_by_test_id("rider-map")
    await expect(rider_map).to_have_attribute("data-state", "ready")
    # No tiles here: the map says so, and works on its plain background.
    await expect(rider_map).to_have_attribute("data-tiles", "missing")
    await expect(rider.get_by_test_id("map-note")).to_contain_text("plain background")

    x, y = await tap_map(rider, "rider-map", -40, 30)
    await expect(rider.get_by_test_id("pick-up-point")).to_have_text("set")
    pin = await rider.get_by_test_id("pick-up-marker").bounding_box()
    assert pin is not None
    # The pin's tip (the middle of its bottom edge) is where the finger went.
    assert abs(pin["x"] + pin["width"] / 2 - x) <= 2 and abs(pin["y"] + pin["height"] - y) <= 2
    first = await marker_at(rider, "pick-up-marker")
    # An empty address field says where the point is, until the rider types one.
    await expect(rider.get_by_test_id("pick-up")).to_have_value(
        f"Map point {first.lat:.5f}, {first.lng:.5f}"
    )
    await expect(rider.get_by_test_id("tap-drop-off")).to_be_checked()

    # The next tap places the drop-off; choosing Pick-up again moves the pick-up.
    await tap_map(rider, "rider-map", 60, -50)
    await expect(rider.get_by_test_id("drop-off-point")).to_have_text("set")
    drop_off = await marker_at(rider, "drop-off-marker")
    await rider.get_by_test_id("tap-pick-up").check()
    await tap_map(rider, "rider-map", -20, 60)
    pick_up = await marker_at(rider, "pick-up-marker")
    assert pick_up != first and distance_m(pick_up, first) > 50
    assert close_to(await marker_at(rider, "drop-off-marker"), drop_off, 0)
    await screenshot(rider, "rider-points-on-the-map")
    await expect_fits_the_screen(rider)

    pick_up_address, drop_off_address = addresses()
    await rider.get_by_test_id("pick-up").fill(pick_up_address)
    await rider.get_by_test_id("drop-off").fill(drop_off_address)
    await rider.get_by_test_id("request-trip").click()
    trip = rider_trip(rider, pick_up_address)
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Waiting for a driver")
    # Sent with the trip, as the markers show them.
    response = await http.get(
        "/api/trip/", headers={"Authorization": f"Bearer {rider_account.access}"}
    )
    [sent] = [t for t in response.json() if t["pick_up_address"] == pick_up_address]
    assert close_to(Point(**sent["pick_up"]), pick_up, 0.5), (sent["pick_up"], pick_up)
    assert close_to(Point(**sent["drop_off"]), drop_off, 0.5), (sent["drop_off"], drop_off)
    # The form is ready for the next trip, and the map shows this one's points.
    await expect(rider.get_by_test_id("pick-up-point")).to_have_text("not set")
    assert close_to(await marker_at(rider, "pick-up-marker"), pick_up, 0.5)
    await cancel(trip)
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Cancelled")

    # The map library came from the gateway; the only other address asked was the tiles'.
    assert all(url.startswith("https://tile.openstreetmap.org/") for url in outside), outside


async def test_a_driver_shares_the_browsers_location_and_sees_how_far_each_offer_is(
    open_page: OpenPage, http: httpx.AsyncClient, base_url: str, screenshot: Screenshot
) -> None:
    here = somewhere()
    account = await person(http, "driver", "Dan", "Driver")
    driver = await open_page(phone=True, geolocation=geolocation(here))
    frames = record_frames(driver)
    await log_in(driver, account.user["username"], "driver")
    await expect(driver.get_by_test_id("location-status")).to_have_attribute("data-state", "on")
    assert close_to(await marker_at(driver, "my-car"), here)
    reported = await locations_sent(frames, 1)
    assert close_to(Point(reported[0]["lat"], reported[0]["lng"]), here)

    rider = await person(http, "rider", "Ann", "Rider")
    pick_up = north_of(here, 1500)
    pick_up_address, drop_off_address = addresses()
    async with await connect(base_url, rider.access) as rider_ws:
        data = {
            "pick_up_address": pick_up_address,
            "drop_off_address": drop_off_address,
            "pick_up": {"lat": pick_up.lat, "lng": pick_up.lng},
        }
        await send_frame(rider_ws, {"type": "create.trip", "data": data})
        requested = await receive_until(rider_ws, lambda f: f["type"] == "trip.requested")

        offered = offer(driver, pick_up_address)
        await expect(offered).to_have_count(1, timeout=OFFER_TIMEOUT_MS)
        await expect(offered.get_by_test_id("offer-distance")).to_have_text(
            "Pick-up 1.5 km from you"
        )
        [offer_frame] = frames.of(frames.received, "trip.requested")
        assert abs(offer_frame["data"]["distance_m"] - 1500) < 5, offer_frame
        assert close_to(await marker_at(driver, "offer-marker"), pick_up)
        await screenshot(driver, "driver-phone-offer-distance")
        await expect_fits_the_screen(driver)

        # The driver moves 1 km nearer: the page sends where they are now, and says so.
        nearer = north_of(here, 1000)
        await driver.context.set_geolocation(geolocation(nearer))
        await expect(offered.get_by_test_id("offer-distance")).to_have_text(
            "Pick-up 500 m from you"
        )
        deadline = time.monotonic() + 10
        while not any(
            close_to(Point(sent["lat"], sent["lng"]), nearer)
            for sent in await locations_sent(frames, 1)
        ):
            assert time.monotonic() < deadline, frames.sent
            await asyncio.sleep(0.2)

        # The rider cancels: the offer fades out saying why, then goes.
        await send_frame(
            rider_ws,
            {"type": "update.trip", "data": {"id": requested["data"]["id"], "status": "CANCELLED"}},
        )
        await expect(offered).to_have_count(0)
        gone = driver.get_by_test_id("offer-gone").filter(has_text=pick_up_address)
        await expect(gone.get_by_test_id("offer-gone-reason")).to_have_text("The rider cancelled")
        await expect(driver.get_by_test_id("offer-marker")).to_have_count(0)
        await expect(gone).to_have_count(0)
    await expect(driver.get_by_test_id("error-banner")).to_be_hidden()


async def test_a_driver_who_does_not_share_their_location_is_told_why_in_plain_words(
    open_page: OpenPage, http: httpx.AsyncClient
) -> None:
    account = await person(http, "driver", "Dan", "Driver")
    driver = await open_page()  # no permission to know the position
    await log_in(driver, account.user["username"], "driver")
    status = driver.get_by_test_id("location-status")
    await expect(status).to_have_attribute("data-state", "problem")
    await expect(status).to_contain_text("You have not allowed this page to know your location")
    await expect(driver.get_by_test_id("share-location")).to_be_visible()
    await expect(driver.get_by_test_id("my-car")).to_have_count(0)
    await expect_live(driver, "driver")


async def test_the_favicon_is_served(http: httpx.AsyncClient) -> None:
    for path, kind in (("/favicon.ico", "image/"), ("/favicon.svg", "image/svg+xml")):
        response = await http.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(kind), response.headers


async def test_the_pages_distances_are_the_servers(open_page: OpenPage) -> None:
    """The client's own geometry (geo.js), run in the page: its straight-line metres
    are those of the server's `distance_m`, and it words distances and times plainly."""
    page = await open_page()
    pairs = [
        (Point(52.3731, 4.8922), Point(52.3812, 4.8922)),
        (Point(-33.8688, 151.2093), Point(-33.9, 151.25)),
        (Point(0.0, 179.99), Point(0.0, -179.99)),
    ]
    results = await page.evaluate(
        """async (pairs) => {
            const geo = await import("/geo.js");
            const a = { lat: 52.3731, lng: 4.8922 };
            const b = { lat: 52.3812, lng: 4.8922 };
            const half = geo.towards(a, b, geo.distanceMeters(a, b) / 2);
            return {
                metres: pairs.map(([p, q]) => geo.distanceMeters(p, q)),
                half: geo.distanceMeters(a, half),
                whole: geo.distanceMeters(a, b),
                north: geo.bearingDegrees(a, b),
                words: [geo.distanceText(37), geo.distanceText(1234), geo.distanceText(25_400),
                        geo.etaText(10), geo.etaText(900), geo.etaText(30_000)],
                bad: [{ lat: 91, lng: 0 }, { lat: "x", lng: 1 }, null].map(geo.asPoint),
            };
        }""",
        [[{"lat": p.lat, "lng": p.lng}, {"lat": q.lat, "lng": q.lng}] for p, q in pairs],
    )
    for (p, q), metres in zip(pairs, results["metres"], strict=True):
        assert metres == pytest.approx(distance_m(p, q), rel=1e-6, abs=0.01)
    assert results["half"] == pytest.approx(results["whole"] / 2, abs=1)
    assert results["north"] == pytest.approx(0, abs=1e-6)
    assert results["words"] == [
        "40 m",
        "1.2 km",
        "25 km",
        "about 1 min",
        "about 3 min",
        "about 1 h 12 min",
    ]
    assert results["bad"] == [None, None, None]


async def test_without_its_map_library_the_page_still_works(
    open_page: OpenPage, http: httpx.AsyncClient
) -> None:
    """Leaflet not loaded (a gateway whose client was never built with `make client`,
    say): the page says so where the map would be, and the rest works."""

    async def no_leaflet(context: BrowserContext) -> None:
        await context.route("**/vendor/leaflet/leaflet.js", lambda route: route.abort())

    account = await person(http, "rider", "Ann", "Rider")
    rider = await open_page(phone=True, before=no_leaflet)
    await log_in(rider, account.user["username"], "rider")
    rider_map = rider.get_by_test_id("rider-map")
    await expect(rider_map).to_have_attribute("data-state", "unavailable")
    await expect(rider_map).to_have_text(
        "The map could not be loaded. Everything else on this page still works."
    )
    pick_up, drop_off = addresses()
    await rider.get_by_test_id("pick-up").fill(pick_up)
    await rider.get_by_test_id("drop-off").fill(drop_off)
    await rider.get_by_test_id("request-trip").click()
    trip = rider_trip(rider, pick_up)
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Waiting for a driver")
    await cancel(trip)
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Cancelled")
