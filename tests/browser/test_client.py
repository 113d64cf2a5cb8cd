"""The browser client end to end: Chromium pages against the real gateway and workers.

Each person is a separate browser context, as separate phones would be; one person's
second tab shares its context. Pages are found by their data-testid attributes;
every wait is one of Playwright's auto-waiting assertions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import BrowserContext, Locator, Page, WebSocketRoute, expect

from shared.settings import Settings
from tests.browser.conftest import OpenPage, OpenTab, Screenshot
from tests.clients import (
    PASSWORD,
    Account,
    about,
    connect,
    create_account,
    new_username,
    receive_until,
)
from tests.clients import send as send_frame
from tools.processes import ServiceProcess, free_port, start_dispatcher

pytestmark = pytest.mark.usefixtures("dispatchers")

RESTART_TIMEOUT_MS = 25_000
_streets = itertools.count(1)

# The frame that tells of each status a driver moves a trip to.
EVENT_OF = {
    "STARTED": "trip.accepted",
    "IN_PROGRESS": "trip.picked_up",
    "COMPLETED": "trip.completed",
}

ON_THE_WAY = "On the way to the destination"

REQUEST_BLOCKED = (
    "You have a trip that is not over yet. "
    "You can request another once it is completed or cancelled."
)

# Installed before the client's own code: every WebSocket the page opens stays
# reachable, so a test can cut one as a lost network would (emulating offline stops
# new connections but leaves an open socket alone), send on it as another client
# would, or hand the page a frame as if the server had sent it.
KEEP_SOCKETS = """
(() => {
  const Native = window.WebSocket;
  window.taxiTestSockets = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      window.taxiTestSockets.push(this);
    }
  };
})();
"""


def addresses() -> tuple[str, str]:
    """A pick-up and drop-off no other test (or earlier run) uses, to find its trip by."""
    tag = uuid.uuid4().hex[:6]
    n = next(_streets)
    return f"{n} Main Street #{tag}", f"{n} South Street #{tag}"


async def sign_up(
    page: Page,
    group: str,
    first_name: str,
    last_name: str,
    screenshot: Screenshot | None = None,
) -> str:
    """Sign up through the form (which logs in too) and wait until the page is live."""
    username = new_username(group)
    await page.get_by_test_id("go-sign-up").click()
    form = page.get_by_test_id("sign-up-form")
    await expect(form).to_be_visible()
    await page.get_by_test_id(f"sign-up-{group}").check()
    await page.get_by_test_id("sign-up-username").fill(username)
    await page.get_by_test_id("sign-up-first-name").fill(first_name)
    await page.get_by_test_id("sign-up-last-name").fill(last_name)
    await page.get_by_test_id("sign-up-password1").fill(PASSWORD)
    await page.get_by_test_id("sign-up-password2").fill(PASSWORD)
    if screenshot is not None:
        await screenshot(page, f"sign-up-{group}")
    await page.get_by_test_id("sign-up-submit").click()
    await expect_live(page, group)
    return username


async def log_in(page: Page, username: str, group: str) -> None:
    await page.get_by_test_id("log-in-username").fill(username)
    await page.get_by_test_id("log-in-password").fill(PASSWORD)
    await page.get_by_test_id("log-in-submit").click()
    await expect_live(page, group)


async def open_logged_in(
    open_page: OpenPage, http: httpx.AsyncClient, group: str, **options: object
) -> Page:
    """A page of a new account made over HTTP, logged in through the form."""
    account = await create_account(http, group)
    page = await open_page(**options)
    await log_in(page, account.user["username"], group)
    return page


async def expect_live(page: Page, group: str) -> None:
    await expect(page.get_by_test_id(f"{group}-page")).to_be_visible()
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")


async def request_trip(page: Page, pick_up: str, drop_off: str) -> Locator:
    """Request a trip on the rider's page; the trip's entry once the server confirmed it."""
    await page.get_by_test_id("pick-up").fill(pick_up)
    await page.get_by_test_id("drop-off").fill(drop_off)
    await page.get_by_test_id("request-trip").click()
    trip = page.get_by_test_id("rider-trip").filter(has_text=pick_up)
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Waiting for a driver")
    await expect(page.get_by_test_id("pick-up")).to_have_value("")
    return trip


async def cancel(trip: Locator) -> None:
    """Cancel a rider's trip: the button, then the confirmation it asks for."""
    await trip.get_by_test_id("cancel-trip").click()
    await trip.get_by_test_id("confirm-cancel").click()


def offer(page: Page, pick_up: str) -> Locator:
    return page.get_by_test_id("offer").filter(has_text=pick_up)


def rider_trip(page: Page, pick_up: str) -> Locator:
    return page.get_by_test_id("rider-trip").filter(has_text=pick_up)


async def move_trip(
    base_url: str, driver: Account, trip_id: str, *statuses: str
) -> list[dict[str, Any]]:
    """The driver moves the trip on through `statuses` over a socket of their own
    (another device); the frames that told them of each step."""
    told = []
    async with await connect(base_url, driver.access) as ws:
        for status in statuses:
            data: dict[str, Any] = {"id": trip_id, "status": status}
            if status == "STARTED":
                data["driver"] = driver.id
            await send_frame(ws, {"type": "update.trip", "data": data})
            told.append(await receive_until(ws, about(trip_id, EVENT_OF[status])))
    return told


async def keep_sockets(context: BrowserContext) -> None:
    await context.add_init_script(KEEP_SOCKETS)


async def cut_sockets(page: Page) -> None:
    """Close the page's open sockets from its side, as a dropped network would."""
    await page.evaluate(
        """() => {
            for (const ws of window.taxiTestSockets) {
                if (ws.readyState === WebSocket.OPEN) ws.close(3000, "cut by the test");
            }
        }"""
    )


async def send_on_page_socket(page: Page, frame: dict[str, Any]) -> None:
    """Send a frame on the page's open socket, as a client other than the page might."""
    await page.evaluate(
        """(frame) => {
            const ws = window.taxiTestSockets.findLast((s) => s.readyState === WebSocket.OPEN);
            ws.send(JSON.stringify(frame));
        }""",
        frame,
    )


async def deliver(page: Page, frame: dict[str, Any]) -> None:
    """Hand the page a frame on its open socket as if the server had sent it. The
    page's handler runs before this returns (dispatchEvent is synchronous)."""
    await page.evaluate(
        """(frame) => {
            const ws = window.taxiTestSockets.findLast((s) => s.readyState === WebSocket.OPEN);
            ws.dispatchEvent(new MessageEvent("message", { data: JSON.stringify(frame) }));
        }""",
        frame,
    )


def since_of(url: str) -> str | None:
    """The `since` a WebSocket URL resumed from, or None."""
    return parse_qs(urlsplit(url).query).get("since", [None])[0]


async def stored_seq(page: Page, user_id: int) -> str | None:
    """The last notification number this device keeps for the user."""
    return await page.evaluate("(key) => localStorage.getItem(key)", f"taxi.seq.{user_id}")


async def expect_fits_the_screen(page: Page) -> None:
    """Nothing sticks out sideways: the page never needs horizontal scrolling."""
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


async def test_rider_and_driver_complete_a_trip(
    open_page: OpenPage, screenshot: Screenshot
) -> None:
    rider = await open_page(phone=True)
    await expect(rider.get_by_test_id("log-in-page")).to_be_visible()
    await screenshot(rider, "log-in")
    await sign_up(rider, "rider", "Rita", "Rider", screenshot)
    driver = await open_page()
    await sign_up(driver, "driver", "Dana", "Driver")
    await expect(driver.get_by_test_id("no-current-trip")).to_be_visible()

    pick_up, drop_off = addresses()
    trip = await request_trip(rider, pick_up, drop_off)
    await expect(trip.get_by_test_id("cancel-trip")).to_be_visible()
    await expect(trip.get_by_test_id("trip-driver")).to_have_count(0)

    offered = offer(driver, pick_up)
    await expect(offered.get_by_test_id("trip-rider")).to_have_text("Rider: Rita Rider")
    await expect(offered.get_by_test_id("trip-drop-off")).to_have_text(drop_off)
    await screenshot(driver, "driver-offers")
    await offered.get_by_test_id("accept-offer").click()

    current = driver.get_by_test_id("current-trip")
    await expect(current.get_by_test_id("trip-pick-up")).to_have_text(pick_up)
    # One vocabulary on both pages; the driver's page adds what to do next.
    await expect(current.get_by_test_id("trip-status")).to_have_text("Driver on the way")
    await expect(current.get_by_test_id("trip-next-step")).to_contain_text("Drive to the pick-up")
    await expect(driver.get_by_test_id("busy-notice")).to_be_visible()
    await expect(offered).to_have_count(0)
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Driver on the way")
    await expect(trip.get_by_test_id("trip-driver")).to_have_text("Driver: Dana Driver")
    await screenshot(rider, "rider-driver-on-the-way")
    await expect_fits_the_screen(rider)

    await current.get_by_test_id("picked-up").click()
    await expect(trip.get_by_test_id("trip-status")).to_have_text(ON_THE_WAY)
    await expect(trip.get_by_test_id("cancel-trip")).to_have_count(0)
    await expect(current.get_by_test_id("trip-status")).to_have_text(ON_THE_WAY)
    await expect(current.get_by_test_id("trip-next-step")).to_contain_text("Drive to the drop-off")
    await screenshot(driver, "driver-current-trip")

    await current.get_by_test_id("dropped-off").click()
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Completed")
    await expect(driver.get_by_test_id("no-current-trip")).to_be_visible()
    await expect(driver.get_by_test_id("busy-notice")).to_be_hidden()
    finished = driver.get_by_test_id("finished").filter(has_text=pick_up)
    await expect(finished.get_by_test_id("trip-status")).to_have_text("Completed")
    await screenshot(rider, "rider-completed")
    await screenshot(driver, "driver-completed")
    await expect_fits_the_screen(rider)
    await expect(rider.get_by_test_id("error-banner")).to_be_hidden()
    await expect(driver.get_by_test_id("error-banner")).to_be_hidden()


async def test_second_driver_sees_the_offer_disappear_when_the_first_accepts(
    open_page: OpenPage, http: httpx.AsyncClient, screenshot: Screenshot
) -> None:
    first = await open_logged_in(open_page, http, "driver")
    second = await open_logged_in(open_page, http, "driver", phone=True)
    rider = await open_logged_in(open_page, http, "rider")
    pick_up, drop_off = addresses()
    await request_trip(rider, pick_up, drop_off)

    await expect(offer(second, pick_up)).to_have_count(1)
    await screenshot(second, "second-driver-offered")
    await offer(first, pick_up).get_by_test_id("accept-offer").click()

    await expect(first.get_by_test_id("current-trip")).to_contain_text(pick_up)
    await expect(offer(second, pick_up)).to_have_count(0)
    # It fades out saying why, then goes.
    gone = second.get_by_test_id("offer-gone").filter(has_text=pick_up)
    await expect(gone.get_by_test_id("offer-gone-reason")).to_have_text("Another driver took it")
    await expect(gone.get_by_test_id("accept-offer")).to_have_count(0)
    await screenshot(second, "second-driver-offer-taken")
    await expect(second.get_by_test_id("no-current-trip")).to_be_visible()
    await expect(second.get_by_test_id("error-banner")).to_be_hidden()
    await expect(gone).to_have_count(0)
    await screenshot(second, "second-driver-offer-gone")


async def test_cancelled_request_disappears_from_the_drivers_list(
    open_page: OpenPage, http: httpx.AsyncClient, screenshot: Screenshot
) -> None:
    driver = await open_logged_in(open_page, http, "driver")
    rider = await open_logged_in(open_page, http, "rider", phone=True)
    pick_up, drop_off = addresses()
    trip = await request_trip(rider, pick_up, drop_off)
    await expect(offer(driver, pick_up)).to_have_count(1)

    # Cancel asks first; keeping the trip changes nothing.
    await trip.get_by_test_id("cancel-trip").click()
    await expect(trip.get_by_test_id("cancel-question")).to_have_text("Cancel this request?")
    await screenshot(rider, "rider-cancel-question")
    await trip.get_by_test_id("keep-trip").click()
    await expect(trip.get_by_test_id("cancel-question")).to_have_count(0)
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Waiting for a driver")
    await expect(offer(driver, pick_up)).to_have_count(1)

    await cancel(trip)

    await expect(trip.get_by_test_id("trip-status")).to_have_text("Cancelled")
    await expect(trip.get_by_test_id("trip-cancel-reason")).to_have_text("You cancelled")
    await expect(trip.get_by_test_id("cancel-trip")).to_have_count(0)
    await expect(offer(driver, pick_up)).to_have_count(0)
    gone = driver.get_by_test_id("offer-gone").filter(has_text=pick_up)
    await expect(gone.get_by_test_id("offer-gone-reason")).to_have_text("The rider cancelled")
    await screenshot(rider, "rider-cancelled")
    await screenshot(driver, "driver-after-cancel")


async def test_a_refused_accept_is_explained_in_plain_words(
    open_page: OpenPage, http: httpx.AsyncClient, screenshot: Screenshot
) -> None:
    """A driver whose page missed `trip.taken` accepts too late and is told why."""

    async def drop_taken_frames(context: BrowserContext) -> None:
        def route(page_side: WebSocketRoute) -> None:
            server = page_side.connect_to_server()

            def forward(message: str | bytes) -> None:
                if json.loads(message).get("type") != "trip.taken":
                    page_side.send(message)

            server.on_message(forward)

        await context.route_web_socket("**/taxi/**", route)

    winner = await open_logged_in(open_page, http, "driver")
    late = await open_logged_in(open_page, http, "driver", before=drop_taken_frames)
    rider = await open_logged_in(open_page, http, "rider")
    pick_up, drop_off = addresses()
    await request_trip(rider, pick_up, drop_off)
    await expect(offer(late, pick_up)).to_have_count(1)
    await offer(winner, pick_up).get_by_test_id("accept-offer").click()
    await expect(winner.get_by_test_id("current-trip")).to_contain_text(pick_up)
    await expect(offer(late, pick_up)).to_have_count(1)  # its page never heard

    await offer(late, pick_up).get_by_test_id("accept-offer").click()

    banner = late.get_by_test_id("error-banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("Another driver already took this trip.")
    await expect(offer(late, pick_up)).to_have_count(0)  # reloaded over HTTP
    await screenshot(late, "driver-trip-unavailable")
    await banner.get_by_test_id("dismiss-error").click()
    await expect(banner).to_be_hidden()


async def test_sign_up_problems_are_shown_next_to_the_fields(
    open_page: OpenPage, http: httpx.AsyncClient, screenshot: Screenshot
) -> None:
    taken = await create_account(http, "rider")
    page = await open_page(phone=True)
    await page.get_by_test_id("go-sign-up").click()
    await page.get_by_test_id("sign-up-username").fill(taken.user["username"])
    await page.get_by_test_id("sign-up-password1").fill(PASSWORD)
    await page.get_by_test_id("sign-up-password2").fill(PASSWORD + "x")
    await page.get_by_test_id("sign-up-submit").click()
    await expect(page.get_by_test_id("error-password2")).to_have_text(
        "The two passwords do not match."
    )

    await page.get_by_test_id("sign-up-password2").fill(PASSWORD)
    await page.get_by_test_id("sign-up-submit").click()
    await expect(page.get_by_test_id("error-username")).to_have_text(
        "A user with that username already exists."
    )
    await expect(page.get_by_test_id("error-password2")).to_be_hidden()
    await expect(page.get_by_test_id("error-banner")).to_be_visible()
    await screenshot(page, "sign-up-errors")
    await expect_fits_the_screen(page)

    await page.get_by_test_id("go-log-in").click()
    await page.get_by_test_id("log-in-username").fill(taken.user["username"])
    await page.get_by_test_id("log-in-password").fill("wrong password")
    await page.get_by_test_id("log-in-submit").click()
    await expect(page.get_by_test_id("error-message")).to_have_text(
        "Wrong username or password (or the account is disabled)."
    )


async def test_a_stale_access_token_is_refreshed_and_log_out_forgets_it(
    open_page: OpenPage, http: httpx.AsyncClient
) -> None:
    account = await create_account(http, "rider")
    page = await open_page()
    await log_in(page, account.user["username"], "rider")
    pick_up, drop_off = addresses()
    await request_trip(page, pick_up, drop_off)

    # Keep the claims but break the signature: the server answers 401 to both the
    # trip list and the WebSocket handshake, and the page must refresh by itself.
    forged = await page.evaluate(
        """() => {
            const tokens = JSON.parse(localStorage.getItem("taxi.tokens"));
            const tail = tokens.access.endsWith("AAAA") ? "BBBB" : "AAAA";
            tokens.access = tokens.access.slice(0, -4) + tail;
            localStorage.setItem("taxi.tokens", JSON.stringify(tokens));
            return tokens.access;
        }"""
    )
    await page.reload()
    await expect_live(page, "rider")
    await expect(page.get_by_test_id("rider-trip").filter(has_text=pick_up)).to_have_count(1)
    await expect(page.get_by_test_id("error-banner")).to_be_hidden()
    stored = await page.evaluate("() => JSON.parse(localStorage.getItem('taxi.tokens'))")
    assert stored["access"] != forged
    # Refresh tokens rotate: the page keeps the one the last refresh gave it.
    assert stored["refresh"] != account.refresh

    await page.get_by_test_id("log-out").click()
    await expect(page.get_by_test_id("log-in-page")).to_be_visible()
    await expect(page.get_by_test_id("connection")).to_be_hidden()
    assert await page.evaluate("() => localStorage.getItem('taxi.tokens')") is None
    # Logging out ended the session on the server too.
    refused = await http.post("/api/token/refresh/", json={"refresh": stored["refresh"]})
    assert refused.status_code == 401
    await page.reload()
    await expect(page.get_by_test_id("log-in-page")).to_be_visible()


async def test_the_page_reconnects_and_catches_up_after_a_gateway_restart(
    open_page: OpenPage,
    http: httpx.AsyncClient,
    base_url: str,
    settings: Settings,
    log_dir: Path,
    screenshot: Screenshot,
) -> None:
    """The rider's own gateway restarts; meanwhile a driver accepts through another."""
    port = free_port()
    own_url = f"http://127.0.0.1:{port}"

    def start() -> ServiceProcess:
        process = ServiceProcess(
            "gateway",
            replace(settings, port=port, metrics_port=free_port()),
            log_dir / f"gateway-restarted-{port}.log",
        )
        process.start()
        process.wait_until_ready(f"{own_url}/readyz")
        return process

    gateway = await asyncio.to_thread(start)
    try:
        rider_account = await create_account(http, "rider")
        driver = await create_account(http, "driver")
        rider = await open_page(phone=True, url=own_url)
        await log_in(rider, rider_account.user["username"], "rider")
        pick_up, drop_off = addresses()
        trip = await request_trip(rider, pick_up, drop_off)
        trip_id = await trip.get_attribute("data-trip-id")
        assert trip_id

        assert await asyncio.to_thread(gateway.stop) == 0, gateway.log()
        indicator = rider.get_by_test_id("connection")
        await expect(indicator).to_have_attribute("data-state", "reconnecting")
        await expect(indicator).to_contain_text("reconnecting")
        await screenshot(rider, "rider-reconnecting")

        async with await connect(base_url, driver.access) as driver_ws:
            accept = {"id": trip_id, "status": "STARTED", "driver": driver.id}
            await send_frame(driver_ws, {"type": "update.trip", "data": accept})
            await receive_until(driver_ws, about(trip_id, "trip.accepted"))

        gateway = await asyncio.to_thread(start)
        await expect(indicator).to_have_attribute("data-state", "live", timeout=RESTART_TIMEOUT_MS)
        await expect(trip.get_by_test_id("trip-status")).to_have_text("Driver on the way")
        await expect(trip.get_by_test_id("trip-driver")).to_have_text("Driver: Test Driver")
        await expect(rider.get_by_test_id("error-banner")).to_be_hidden()
    finally:
        await asyncio.to_thread(gateway.stop)


async def test_two_tabs_of_one_rider_show_the_trip_through_its_whole_life(
    open_page: OpenPage, open_tab: OpenTab, http: httpx.AsyncClient, screenshot: Screenshot
) -> None:
    account = await create_account(http, "rider")
    first = await open_page()
    await log_in(first, account.user["username"], "rider")
    second = await open_tab(first)  # the same storage: logged in already
    await expect_live(second, "rider")
    driver = await open_logged_in(open_page, http, "driver")
    pick_up, drop_off = addresses()

    await request_trip(first, pick_up, drop_off)
    tabs = [rider_trip(first, pick_up), rider_trip(second, pick_up)]
    for trip in tabs:
        await expect(trip.get_by_test_id("trip-status")).to_have_text("Waiting for a driver")
    for tab in (first, second):
        await expect(tab.get_by_test_id("request-trip")).to_be_disabled()

    await offer(driver, pick_up).get_by_test_id("accept-offer").click()
    for trip in tabs:
        await expect(trip.get_by_test_id("trip-status")).to_have_text("Driver on the way")
        await expect(trip.get_by_test_id("trip-driver")).to_have_text("Driver: Test Driver")

    current = driver.get_by_test_id("current-trip")
    await current.get_by_test_id("picked-up").click()
    for trip in tabs:
        await expect(trip.get_by_test_id("trip-status")).to_have_text(ON_THE_WAY)

    await current.get_by_test_id("dropped-off").click()
    for trip in tabs:
        await expect(trip.get_by_test_id("trip-status")).to_have_text("Completed")
    for tab in (first, second):
        await expect(tab.get_by_test_id("request-trip")).to_be_enabled()
        await expect(tab.get_by_test_id("error-banner")).to_be_hidden()
    await screenshot(second, "second-tab-completed")
    # Both tabs keep the device's one resume point: requested, accepted, picked up, completed.
    assert await stored_seq(second, account.id) == "4"


async def test_the_request_button_waits_while_a_trip_is_live_and_says_why(
    open_page: OpenPage, http: httpx.AsyncClient, base_url: str, screenshot: Screenshot
) -> None:
    account = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    rider = await open_page(phone=True, before=keep_sockets)
    await log_in(rider, account.user["username"], "rider")
    button = rider.get_by_test_id("request-trip")
    reason = rider.get_by_test_id("request-blocked")
    await expect(button).to_be_enabled()
    await expect(reason).to_be_hidden()

    pick_up, drop_off = addresses()
    trip = await request_trip(rider, pick_up, drop_off)
    trip_id = await trip.get_attribute("data-trip-id")
    assert trip_id
    await expect(button).to_be_disabled()
    await expect(reason).to_have_text(REQUEST_BLOCKED)
    await screenshot(rider, "rider-request-blocked")

    # A second request sent anyway (as another client on this socket might) is
    # refused by the server, and the page says why in plain words.
    again = {"pick_up_address": "1 Other Street", "drop_off_address": "2 Other Street"}
    await send_on_page_socket(rider, {"type": "create.trip", "data": again})
    banner = rider.get_by_test_id("error-banner")
    await expect(banner).to_contain_text("You already have a trip that is not over yet.")
    await banner.get_by_test_id("dismiss-error").click()
    await expect(rider.get_by_test_id("rider-trip")).to_have_count(1)

    await move_trip(base_url, driver, trip_id, "STARTED", "IN_PROGRESS")
    await expect(trip.get_by_test_id("trip-status")).to_have_text(ON_THE_WAY)
    await expect(button).to_be_disabled()
    await expect(reason).to_be_visible()

    await move_trip(base_url, driver, trip_id, "COMPLETED")
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Completed")
    await expect(button).to_be_enabled()
    await expect(reason).to_be_hidden()
    await expect_fits_the_screen(rider)


async def test_a_request_nobody_accepts_ends_and_the_page_says_why(
    open_page: OpenPage,
    http: httpx.AsyncClient,
    settings: Settings,
    log_dir: Path,
    screenshot: Screenshot,
) -> None:
    """A worker that times requests out after a second (the run's own take minutes)."""
    quick = replace(settings, request_timeout_seconds=1)
    worker = await asyncio.to_thread(
        start_dispatcher, quick, log_dir / f"dispatcher-quick-timeout-{uuid.uuid4().hex[:6]}.log"
    )
    try:
        rider = await open_logged_in(open_page, http, "rider", phone=True)
        pick_up, drop_off = addresses()
        await rider.get_by_test_id("pick-up").fill(pick_up)
        await rider.get_by_test_id("drop-off").fill(drop_off)
        await rider.get_by_test_id("request-trip").click()

        trip = rider_trip(rider, pick_up)
        await expect(trip.get_by_test_id("trip-status")).to_have_text("Cancelled")
        await expect(trip.get_by_test_id("trip-cancel-reason")).to_have_text(
            "No driver accepted in time"
        )
        await expect(rider.get_by_test_id("request-trip")).to_be_enabled()
        await expect(rider.get_by_test_id("request-blocked")).to_be_hidden()
        await screenshot(rider, "rider-no-driver")
    finally:
        assert await asyncio.to_thread(worker.stop) == 0, worker.log()


async def test_a_tab_that_was_offline_resumes_where_it_left_off(
    open_page: OpenPage, http: httpx.AsyncClient, base_url: str, screenshot: Screenshot
) -> None:
    account = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    rider = await open_page(before=keep_sockets)
    opened: list[str] = []
    rider.on("websocket", lambda ws: opened.append(ws.url))
    await log_in(rider, account.user["username"], "rider")
    pick_up, drop_off = addresses()
    trip = await request_trip(rider, pick_up, drop_off)
    trip_id = await trip.get_attribute("data-trip-id")
    assert trip_id
    last_seq = await stored_seq(rider, account.id)
    assert last_seq == "1"

    await rider.context.set_offline(True)
    await cut_sockets(rider)
    indicator = rider.get_by_test_id("connection")
    await expect(indicator).to_have_attribute("data-state", "reconnecting")
    reloads: list[str] = []
    rider.on(
        "request",
        lambda request: reloads.append(request.url) if "/api/trip/" in request.url else None,
    )
    await move_trip(base_url, driver, trip_id, "STARTED", "IN_PROGRESS")
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Waiting for a driver")
    await screenshot(rider, "rider-offline")
    resumed_from = len(opened)

    await rider.context.set_offline(False)

    await expect(indicator).to_have_attribute("data-state", "live")
    await expect(trip.get_by_test_id("trip-status")).to_have_text(ON_THE_WAY)
    await expect(trip.get_by_test_id("trip-driver")).to_have_text("Driver: Test Driver")
    # It asked for what it missed, and got it over the socket: no reload over HTTP.
    assert [since_of(url) for url in opened[resumed_from:]] == [last_seq]
    assert reloads == []
    assert await stored_seq(rider, account.id) == "3"
    await expect(rider.get_by_test_id("error-banner")).to_be_hidden()


async def test_a_refusal_the_page_has_no_words_for_is_told_in_plain_words(
    open_page: OpenPage, http: httpx.AsyncClient
) -> None:
    """An error code this client does not know shows a plain sentence, not the
    server's technical message (which goes to the console)."""
    rider = await open_logged_in(open_page, http, "rider", before=keep_sockets)
    refusal = {
        "code": "some_new_code",
        "message": '"pick_up" must be an object like {"lat": 52.37, "lng": 4.89}',
        "request": "create.trip",
        "request_id": None,
        "trip_id": None,
    }
    await deliver(rider, {"type": "error", "data": refusal})
    await expect(rider.get_by_test_id("error-message")).to_have_text(
        "That did not work, and nothing was changed. Please try again."
    )


async def test_a_late_older_notice_never_rolls_a_trip_back(
    open_page: OpenPage, http: httpx.AsyncClient, base_url: str
) -> None:
    account = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    rider = await open_page(before=keep_sockets)
    await log_in(rider, account.user["username"], "rider")
    pick_up, drop_off = addresses()
    trip = await request_trip(rider, pick_up, drop_off)
    trip_id = await trip.get_attribute("data-trip-id")
    assert trip_id
    status = trip.get_by_test_id("trip-status")

    [accepted] = await move_trip(base_url, driver, trip_id, "STARTED")
    await expect(status).to_have_text("Driver on the way")
    await move_trip(base_url, driver, trip_id, "IN_PROGRESS", "COMPLETED")
    await expect(status).to_have_text("Completed")

    # The acceptance told again, late (as a relay might): a new event id, so only its
    # version (2, the page holds 4) says it is old news.
    assert accepted["data"]["version"] == 2
    late = {"type": accepted["type"], "event_id": str(uuid.uuid4()), "data": accepted["data"]}
    await deliver(rider, late)

    await expect(status).to_have_text("Completed")
    await expect(rider.get_by_test_id("request-trip")).to_be_enabled()
    await expect(trip).to_have_attribute("data-status", "COMPLETED")


async def test_the_trip_store_keeps_the_newest_version(open_page: OpenPage) -> None:
    """The client's own merging, run in the page: the version decides, not the clock."""
    page = await open_page()
    results = await page.evaluate(
        """async () => {
            const { TripStore } = await import("/trips.js");
            const trip = (version, status, updated) =>
                ({ id: "t1", version, status, updated: `2024-01-01T00:00:0${updated}Z` });
            const rider = new TripStore(() => true);
            const driver = new TripStore((t) => t.status === "REQUESTED");
            return {
                rider: [
                    rider.upsert(trip(3, "IN_PROGRESS", 3)),
                    rider.upsert(trip(2, "STARTED", 9)), // late, though stamped later
                    rider.upsert(trip(3, "IN_PROGRESS", 3)), // the same again
                    rider.upsert(trip(4, "COMPLETED", 4)),
                    rider.get("t1").version,
                ],
                driver: [
                    driver.upsert(trip(1, "REQUESTED", 1)),
                    driver.upsert(trip(2, "STARTED", 2)), // taken by someone else: dropped
                    driver.upsert(trip(1, "REQUESTED", 1)), // the offer, late: stays gone
                    driver.get("t1") === undefined,
                ],
            };
        }"""
    )
    assert results == {
        "rider": [True, False, False, True, 4],
        "driver": [True, True, False, True],
    }


async def test_a_resume_point_the_server_refuses_is_dropped(
    open_page: OpenPage, http: httpx.AsyncClient
) -> None:
    """A stored `since` ahead of the server's (after a database reset, say) is refused
    (HTTP 400); the page tries once without it, then forgets it."""
    account = await create_account(http, "rider")
    page = await open_page()
    opened: list[str] = []
    page.on("websocket", lambda ws: opened.append(ws.url))
    await log_in(page, account.user["username"], "rider")
    key = f"taxi.seq.{account.id}"
    await page.evaluate("(key) => localStorage.setItem(key, '999999')", key)
    opened.clear()

    await page.reload()

    await expect_live(page, "rider")
    sinces = [since_of(url) for url in opened]
    assert sinces[0] == "999999", sinces
    assert sinces[-1] is None, sinces
    assert await stored_seq(page, account.id) is None
    pick_up, drop_off = addresses()
    await request_trip(page, pick_up, drop_off)
    assert await stored_seq(page, account.id) == "1"


async def test_a_request_the_server_could_not_pass_on_is_retried_with_its_request_id(
    open_page: OpenPage, http: httpx.AsyncClient
) -> None:
    """The gateway answers the first `create.trip` as it does when it cannot pass a
    command on (`service_unavailable`); pressing the button again resends it with the
    same `request_id`. A later, new request gets a new one."""
    creates: list[dict[str, Any]] = []

    async def busy_once(context: BrowserContext) -> None:
        def route(page_side: WebSocketRoute) -> None:
            server = page_side.connect_to_server()

            def from_page(message: str | bytes) -> None:
                frame = json.loads(message)
                if frame.get("type") == "create.trip":
                    creates.append(frame)
                    if len(creates) == 1:
                        refusal = {
                            "code": "service_unavailable",
                            "message": "the request could not be confirmed as passed on",
                            "request": "create.trip",
                            "request_id": frame.get("request_id"),
                            "trip_id": None,
                        }
                        page_side.send(json.dumps({"type": "error", "data": refusal}))
                        return
                server.send(message)

            page_side.on_message(from_page)

        await context.route_web_socket("**/taxi/**", route)

    rider = await open_logged_in(open_page, http, "rider", before=busy_once)
    pick_up, drop_off = addresses()
    await rider.get_by_test_id("pick-up").fill(pick_up)
    await rider.get_by_test_id("drop-off").fill(drop_off)
    await rider.get_by_test_id("request-trip").click()
    banner = rider.get_by_test_id("error-banner")
    await expect(banner).to_contain_text("The service is busy right now and nothing was changed.")
    await expect(rider.get_by_test_id("request-trip")).to_be_enabled()

    await rider.get_by_test_id("request-trip").click()  # the form still holds the addresses
    trip = rider_trip(rider, pick_up)
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Waiting for a driver")
    await expect(banner).to_be_hidden()
    first, retry = creates
    assert first["request_id"] == retry["request_id"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", first["request_id"])

    await cancel(trip)
    await expect(trip.get_by_test_id("trip-cancel-reason")).to_have_text("You cancelled")
    await rider.get_by_test_id("pick-up").fill(pick_up)  # the same again: a new request
    await rider.get_by_test_id("drop-off").fill(drop_off)
    await rider.get_by_test_id("request-trip").click()
    statuses = rider_trip(rider, pick_up).get_by_test_id("trip-status")
    await expect(statuses).to_have_text(["Waiting for a driver", "Cancelled"])
    assert creates[2]["request_id"] != first["request_id"]
