"""What browser tests share about the people who use the console: the demo engineer's name,
logging in through the log-in page, opening the launch form, and how long a cold run of the
bundled example may take."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.helpers import PASSWORD

ENGINEER = "ada"
# A cold start of the example (torch import, 5 epochs on one CPU) takes well under a minute.
TRAINING_TIMEOUT_MS = 120_000


def log_in(page: Page, name: str, password: str = PASSWORD) -> None:
    page.goto("/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def open_launch_form(page: Page) -> None:
    page.get_by_role("navigation").get_by_role("link", name="New sandbox").click()
    expect(page.get_by_role("heading", name="New sandbox")).to_be_visible()
