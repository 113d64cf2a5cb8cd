"""Browser fixtures: Debian's Chromium driven by Playwright, against the real gateway.

The gateway and the dispatcher workers are the end-to-end session fixtures; pages
open in fresh browser contexts (separate storage, as separate people's phones), and
`open_tab` opens another tab in a page's context (shared storage, as one person's
second tab).
Playwright never downloads a browser here: it drives /usr/bin/chromium, and the
tests fail, rather than skip, when that is missing.

Pages reach nothing but the test gateway: every other request (the map's tiles from
tile.openstreetmap.org, say) is refused, so the map is tested as it works offline,
on its plain background. A file of the gateway's that answers 404 (a missing
favicon, a Leaflet file not built) fails the test, as an uncaught error does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Response,
    Route,
    async_playwright,
    expect,
)

CHROMIUM = Path("/usr/bin/chromium")
LEAFLET = Path(__file__).resolve().parents[2] / "gateway/client/vendor/leaflet/leaflet.js"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
TIMEOUT_MS = 10_000
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1100, "height": 800}}
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})

expect.set_options(timeout=TIMEOUT_MS)

OpenPage = Callable[..., Awaitable[Page]]
OpenTab = Callable[[Page], Awaitable[Page]]
Screenshot = Callable[[Page, str], Awaitable[Path]]


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium "
            "(install it with `apt-get install chromium`); Playwright does not download one here"
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def leaflet_built() -> None:
    """The map library the client loads, as `make client` builds it."""
    if not LEAFLET.exists():
        pytest.fail(
            f"{LEAFLET} is missing: the client's map library is built by `make client` "
            "(npm ci in client-build/), which `make test` runs first"
        )


@pytest.fixture(scope="session")
async def browser(chromium: Path, leaflet_built: None) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@pytest.fixture
def page_errors() -> Iterator[list[str]]:
    """Uncaught JavaScript errors of the test's pages, and the gateway's files they
    asked for in vain (404): any fails the test."""
    errors: list[str] = []
    yield errors
    assert errors == [], errors


def watch(page: Page, errors: list[str]) -> None:
    page.on("pageerror", lambda error: errors.append(str(error)))

    def on_response(response: Response) -> None:
        if response.status == 404:
            errors.append(f"404 {response.url}")

    page.on("response", on_response)


async def refuse_outside_requests(context: BrowserContext) -> None:
    async def refuse(route: Route) -> None:
        await route.abort("internetdisconnected")

    await context.route(lambda url: urlsplit(url).hostname not in LOCAL_HOSTS, refuse)


@pytest.fixture
async def open_page(
    browser: Browser, base_url: str, page_errors: list[str]
) -> AsyncIterator[OpenPage]:
    """Open the client in a new browser context: `await open_page(phone=True)`.
    `path` opens another address of the client (`/?simulate=1`, say); `geolocation`
    ({"latitude": .., "longitude": ..}) gives the page that position, allowed."""
    contexts: list[BrowserContext] = []

    async def open_(
        *,
        phone: bool = False,
        url: str | None = None,
        path: str = "/",
        geolocation: dict[str, float] | None = None,
        before: Callable[[BrowserContext], Awaitable[Any]] | None = None,
    ) -> Page:
        options: dict[str, Any] = dict(PHONE if phone else DESKTOP)
        if geolocation is not None:
            options.update(geolocation=geolocation, permissions=["geolocation"])
        context = await browser.new_context(base_url=url or base_url, **options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        await refuse_outside_requests(context)
        if before is not None:
            await before(context)
        page = await context.new_page()
        watch(page, page_errors)
        await page.goto(path)
        return page

    yield open_
    for context in contexts:
        await context.close()


@pytest.fixture
def open_tab(page_errors: list[str]) -> OpenTab:
    """Open the client in another tab of `page`'s browser context (the same storage,
    so the same logged-in user): `await open_tab(page)`."""

    async def open_(page: Page) -> Page:
        tab = await page.context.new_page()
        watch(tab, page_errors)
        await tab.goto("/")
        return tab

    return open_


@pytest.fixture
def screenshot(tmp_path: Path) -> Screenshot:
    """Save a full-page screenshot under the test's output folder and print where."""

    async def take(page: Page, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    return take
