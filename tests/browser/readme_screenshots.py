"""The screenshots in the README and docs/browser-client.md, from a real trip on a
running system. With `make run` up (a database of its own is best: see README,
"Two instances side by side"):

    .venv/bin/python -m tests.browser.readme_screenshots [BASE_URL] [OUT_DIR]

(defaults http://127.0.0.1:8000 and docs/images). Ann Rider and Dan Driver sign up
through the form, each with a photo. Dan, on a laptop, drives the simulated car
(`?simulate=1`) from the Westerpark; Ann, on a phone, sets her pick-up where the
browser says she is (Prinsengracht 263), taps her drop-off onto the map near Dam
square and types both addresses. Dan accepts, and the car comes. Saved:

- client-driver.png: Dan's page with Ann's request on offer, its distance, and the
  pick-up on his map;
- client-rider.png: Ann's phone while Dan's car comes, with his photo, the distance
  and a straight-line ETA;
- client-driver-trip.png: Dan's page on the way to the pick-up.

The pages load their map tiles from the system's TAXI_MAP_TILES_URL when the machine
can reach it; otherwise the map shows its plain background, as it does offline.
The same Chromium and window sizes as the tests (tests/browser/conftest.py).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

from playwright.async_api import BrowserContext, Page, async_playwright, expect

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, DESKTOP, PHONE, TIMEOUT_MS
from tests.browser.people import portrait_png
from tests.clients import PASSWORD

# Prinsengracht 263 (pick-up), and where Dan starts, in the Westerpark, 1.2 km away.
PICK_UP = {"latitude": 52.37520, "longitude": 4.88396, "accuracy": 10}
DRIVER_FROM = "52.38432,4.87568"
DRIVER_SPEED_MPS = 9
# Dam square from the pick-up at the map's first zoom (14): pixels east and south.
DROP_OFF_TAP = (85, 40)
ADDRESSES = ("Prinsengracht 263", "Dam 1")
# How long Dan drives before Ann's screenshot: the car well on its way.
DRIVE_SECONDS = 8


async def sign_up(page: Page, group: str, first: str, last: str, photo: bytes) -> None:
    await page.get_by_test_id("go-sign-up").click()
    await page.get_by_test_id(f"sign-up-{group}").check()
    username = f"{first.lower()}.{last.lower()}-{uuid.uuid4().hex[:6]}@example.com"
    await page.get_by_test_id("sign-up-username").fill(username)
    await page.get_by_test_id("sign-up-first-name").fill(first)
    await page.get_by_test_id("sign-up-last-name").fill(last)
    await page.get_by_test_id("sign-up-password1").fill(PASSWORD)
    await page.get_by_test_id("sign-up-password2").fill(PASSWORD)
    await page.get_by_test_id("sign-up-photo").set_input_files(
        {"name": f"{first.lower()}.png", "mimeType": "image/png", "buffer": photo}
    )
    await page.get_by_test_id("sign-up-submit").click()
    await expect(page.get_by_test_id(f"{group}-page")).to_be_visible()
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")


async def new_page(context: BrowserContext, path: str) -> Page:
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    await page.goto(path)
    return page


async def take(page: Page, path: Path, *, full_page: bool) -> None:
    await page.evaluate("window.scrollTo(0, 0)")  # as the page opens, not where a tap left it
    await page.wait_for_timeout(500)  # tiles, if any, settle
    await page.screenshot(path=str(path), full_page=full_page)
    print(f"saved {path}")


async def main(base_url: str, out: Path) -> None:
    expect.set_options(timeout=TIMEOUT_MS)
    out.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        dan_context = await browser.new_context(base_url=base_url, **DESKTOP)
        ann_context = await browser.new_context(
            base_url=base_url, geolocation=PICK_UP, permissions=["geolocation"], **PHONE
        )
        path = f"/?simulate=1&from={DRIVER_FROM}&speed={DRIVER_SPEED_MPS}"
        dan = await new_page(dan_context, path)
        await sign_up(dan, "driver", "Dan", "Driver", portrait_png((31, 95, 191), (220, 233, 251)))
        ann = await new_page(ann_context, "/")
        await sign_up(ann, "rider", "Ann", "Rider", portrait_png((196, 69, 54), (250, 228, 214)))

        await ann.get_by_test_id("use-my-location").click()
        await expect(ann.get_by_test_id("pick-up-point")).to_have_text("set")
        box = await ann.get_by_test_id("rider-map").bounding_box()
        assert box is not None
        x = box["x"] + box["width"] / 2 + DROP_OFF_TAP[0]
        y = box["y"] + box["height"] / 2 + DROP_OFF_TAP[1]
        await ann.touchscreen.tap(x, y)
        await expect(ann.get_by_test_id("drop-off-point")).to_have_text("set")
        await ann.get_by_test_id("pick-up").fill(ADDRESSES[0])
        await ann.get_by_test_id("drop-off").fill(ADDRESSES[1])
        await ann.get_by_test_id("request-trip").click()

        offer = dan.get_by_test_id("offer").filter(has_text=ADDRESSES[0])
        await expect(offer.get_by_test_id("offer-distance")).to_contain_text("from you")
        await take(dan, out / "client-driver.png", full_page=True)

        await offer.get_by_test_id("accept-offer").click()
        await expect(ann.get_by_test_id("car-marker")).to_have_count(1)
        await ann.wait_for_timeout(DRIVE_SECONDS * 1000)
        await take(ann, out / "client-rider.png", full_page=False)
        await take(dan, out / "client-driver-trip.png", full_page=True)

        current = dan.get_by_test_id("current-trip")
        await current.get_by_test_id("picked-up").click()
        await expect(current.get_by_test_id("dropped-off")).to_be_visible()
        await current.get_by_test_id("dropped-off").click()
        await expect(ann.get_by_test_id("trip-status")).to_have_text("Completed")
        await browser.close()


if __name__ == "__main__":
    arguments = sys.argv[1:]
    asyncio.run(
        main(
            arguments[0] if arguments else "http://127.0.0.1:8000",
            Path(arguments[1] if len(arguments) > 1 else "docs/images"),
        )
    )
