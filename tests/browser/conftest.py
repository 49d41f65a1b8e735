"""Browser fixtures: one headless Debian Chromium per session driven by Playwright, a fresh
context (cookies, storage) per test, and the console served for real by `live_server`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from console.core import Sealroom
from console.services import accounts, datasets
from tests.browser.people import ENGINEER
from tests.helpers import OPERATOR, PASSWORD, write_dataset

CHROMIUM = Path("/usr/bin/chromium")
# `playwright install` cannot download its own browser here; Debian's Chromium is used, told
# to stay off the network except for the console under test.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}


def _need(reason: str) -> None:
    if os.environ.get("SEALROOM_REQUIRE_ENGINE") == "1":
        pytest.fail(f"{reason} (make test requires it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if not os.access(CHROMIUM, os.X_OK):
        _need(f"no Chromium at {CHROMIUM}; install Debian's 'chromium' package")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


def open_page(browser: Browser, console_url: str) -> Iterator[Page]:
    """A page in its own browser context, with relative URLs resolved against `console_url`;
    closed after the test. Modules whose console runs on the fake backend (the `served`
    fixture) override `page` with `yield from open_page(browser, served)`."""
    context = browser.new_context(base_url=console_url, viewport=VIEWPORT)
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def page(browser: Browser, live_server: str) -> Iterator[Page]:
    """A page on the console served for real, with the real engine (`live_server`)."""
    yield from open_page(browser, live_server)


@pytest.fixture
def engineer(docker_core: Sealroom, tmp_path: Path) -> str:
    """The demo engineer, with the demo dataset granted to every engineer."""
    accounts.create_user(docker_core, OPERATOR, ENGINEER, "engineer", PASSWORD)
    # 10,000 rows: enough for the example to reach its accuracy.
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "src", 10_000),
                              "demo", ["role:engineer"])
    return ENGINEER
