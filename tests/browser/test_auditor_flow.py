"""An auditor in a real browser: filters the log down to someone's failed log-ins, opens one,
then finds the break after an insider edits an event with plain SQL on the database file."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from console.core import Sealroom
from console.services import accounts
from tests.browser import screenshots
from tests.browser.people import log_in
from tests.browser.test_release_flow import log_out
from tests.helpers import OPERATOR, PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.docker]


@pytest.fixture
def auditor(docker_core: Sealroom) -> str:
    accounts.create_user(docker_core, OPERATOR, "audrey", "auditor", PASSWORD)
    accounts.create_user(docker_core, OPERATOR, "mallory", "engineer", PASSWORD)
    return "audrey"


def test_auditor_filters_events_and_sees_a_break_after_tampering(
        page: Page, auditor: str, docker_core: Sealroom, tmp_path: Path) -> None:
    log_in(page, "mallory", "not her password")
    expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
    log_in(page, "mallory")
    log_out(page)

    log_in(page, auditor)
    page.get_by_role("navigation").get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    page.get_by_label("Actor").fill("mallory")
    page.get_by_label("Outcome").select_option("denied")
    page.get_by_role("button", name="Filter").click()

    rows = page.locator("#events tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("auth:session:login")
    expect(rows.first).to_contain_text("wrong user name or password")
    screenshots.take(page, "audit.png", tmp_path)
    rows.first.get_by_role("link", name=re.compile(r"^\d+$")).click()  # the event's id
    expect(page.locator("#event")).to_contain_text("mallory")
    expect(page.locator("#event")).to_contain_text("denied")
    tampered = int(page.url.rsplit("/", 1)[1])

    page.get_by_role("navigation").get_by_role("link", name="Audit log").click()
    page.get_by_role("link", name="Verify chain").click()
    expect(page.locator("#chain-verdict")).to_contain_text("Intact")

    # An insider with the database file drops the append-only guard and rewrites history.
    database = docker_core.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as raw:
        raw.execute("DROP TRIGGER audit_event_no_update")
        raw.execute("UPDATE audit_event SET outcome = 'ok', reason = '' WHERE id = ?",
                    (tampered,))

    page.reload()
    expect(page.locator("#chain-verdict")).to_contain_text(f"BROKEN at event {tampered}")
    page.get_by_role("navigation").get_by_role("link", name="Audit log").click()
    expect(page.locator("#chain-glance")).to_contain_text(
        re.compile(rf"Chain BROKEN at event {tampered}"))
