"""The browser client end to end: Chromium pages against the real gateway and workers.

Each person is a separate browser context, as separate phones would be. Pages are
found by their data-testid attributes; every wait is one of Playwright's
auto-waiting assertions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from playwright.async_api import BrowserContext, Locator, Page, WebSocketRoute, expect

from shared.processes import ServiceProcess, free_port
from shared.settings import Settings
from tests.browser.conftest import OpenPage, Screenshot
from tests.clients import PASSWORD, about, connect, create_account, new_username, receive_until
from tests.clients import send as send_frame

pytestmark = pytest.mark.usefixtures("dispatchers")

RESTART_TIMEOUT_MS = 25_000
_streets = itertools.count(1)


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


def offer(page: Page, pick_up: str) -> Locator:
    return page.get_by_test_id("offer").filter(has_text=pick_up)


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
    await expect(current.get_by_test_id("trip-status")).to_have_text("Go to the pick-up address")
    await expect(driver.get_by_test_id("busy-notice")).to_be_visible()
    await expect(offered).to_have_count(0)
    await expect(trip.get_by_test_id("trip-status")).to_have_text("Driver on the way")
    await expect(trip.get_by_test_id("trip-driver")).to_have_text("Driver: Dana Driver")
    await screenshot(rider, "rider-driver-on-the-way")
    await expect_fits_the_screen(rider)

    await current.get_by_test_id("picked-up").click()
    await expect(trip.get_by_test_id("trip-status")).to_have_text("On the way to your destination")
    await expect(trip.get_by_test_id("cancel-trip")).to_have_count(0)
    await expect(current.get_by_test_id("trip-status")).to_have_text(
        "Rider on board: go to the drop-off address"
    )
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
    await expect(second.get_by_test_id("no-current-trip")).to_be_visible()
    await expect(second.get_by_test_id("error-banner")).to_be_hidden()
    await screenshot(second, "second-driver-offer-gone")


async def test_cancelled_request_disappears_from_the_drivers_list(
    open_page: OpenPage, http: httpx.AsyncClient, screenshot: Screenshot
) -> None:
    driver = await open_logged_in(open_page, http, "driver")
    rider = await open_logged_in(open_page, http, "rider", phone=True)
    pick_up, drop_off = addresses()
    trip = await request_trip(rider, pick_up, drop_off)
    await expect(offer(driver, pick_up)).to_have_count(1)

    await trip.get_by_test_id("cancel-trip").click()

    await expect(trip.get_by_test_id("trip-status")).to_have_text("Cancelled")
    await expect(trip.get_by_test_id("cancel-trip")).to_have_count(0)
    await expect(offer(driver, pick_up)).to_have_count(0)
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
    stored = await page.evaluate("() => JSON.parse(localStorage.getItem('taxi.tokens')).access")
    assert stored != forged

    await page.get_by_test_id("log-out").click()
    await expect(page.get_by_test_id("log-in-page")).to_be_visible()
    await expect(page.get_by_test_id("connection")).to_be_hidden()
    assert await page.evaluate("() => localStorage.getItem('taxi.tokens')") is None
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
            "gateway", replace(settings, port=port), log_dir / f"gateway-restarted-{port}.log"
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
