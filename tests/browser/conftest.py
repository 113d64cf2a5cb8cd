"""Browser fixtures: Debian's Chromium driven by Playwright, against the real gateway.

The gateway and the dispatcher workers are the end-to-end session fixtures; pages
open in fresh browser contexts (separate storage, as separate people's phones), and
`open_tab` opens another tab in a page's context (shared storage, as one person's
second tab).
Playwright never downloads a browser here: it drives /usr/bin/chromium, and the
tests fail, rather than skip, when that is missing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

CHROMIUM = Path("/usr/bin/chromium")
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
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@pytest.fixture
def page_errors() -> Iterator[list[str]]:
    """Uncaught JavaScript errors of the test's pages: any fails the test."""
    errors: list[str] = []
    yield errors
    assert errors == [], errors


@pytest.fixture
async def open_page(
    browser: Browser, base_url: str, page_errors: list[str]
) -> AsyncIterator[OpenPage]:
    """Open the client in a new browser context: `await open_page(phone=True)`."""
    contexts: list[BrowserContext] = []

    async def open_(
        *,
        phone: bool = False,
        url: str | None = None,
        before: Callable[[BrowserContext], Awaitable[Any]] | None = None,
    ) -> Page:
        context = await browser.new_context(
            base_url=url or base_url, **(PHONE if phone else DESKTOP)
        )
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        if before is not None:
            await before(context)
        page = await context.new_page()
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        await page.goto("/")
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
        tab.on("pageerror", lambda error: page_errors.append(str(error)))
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
