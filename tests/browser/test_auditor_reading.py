"""An auditor in a real browser reads what happened without being able to change it: opens an
engineer's sandbox page (read-only; its log shown through the paid path, charged to her),
opens a release page from the Releases list (no Approve, no Withdraw), follows its timeline
with reads hidden, saves a filter of the audit log in her browser, and opens the audit key.

Which of the two the sandbox page's output is: the facts are the console's words; the log
lines reach the auditor only through the disclosure ledger, under her name (checked below).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlmodel import select

from audit.events import Actor
from console.core import Caller, Sealroom
from console.models import DisclosureItem
from console.services import accounts, datasets
from console.services import launch as launch_service
from console.services import outbox as outbox_service
from console.services import releases as release_service
from tests.browser import screenshots
from tests.browser.people import log_in
from tests.helpers import OPERATOR, PASSWORD, write_dataset

pytestmark = [pytest.mark.browser, pytest.mark.docker]

#: A job that finishes in a second: a line in the log and one small file in the outbox.
JOB = (b"import json\n"
       b"print('auditor-visible line', flush=True)\n"
       b"json.dump({'accuracy': 0.9}, open('/outbox/metrics.json', 'w'))\n")
FINISH_TIMEOUT_MS = 120_000


@pytest.fixture
def readers(docker_core: Sealroom, tmp_path: Path) -> None:
    for name, role in [("ada", "engineer"), ("audrey", "auditor")]:
        accounts.create_user(docker_core, OPERATOR, name, role, PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "src", 50),
                              "demo", ["role:engineer"])


@pytest.fixture
def finished_sandbox(docker_core: Sealroom, readers: None) -> str:
    order = launch_service.LaunchOrder(datasets=["demo"], code_name="train.py", code=JOB,
                                       command="python train.py", timeout_s=300)
    record = launch_service.launch(docker_core, _ada(), order)
    return record.id


def _ada() -> Caller:
    return Caller(Actor("ada", "engineer", "session", "127.0.0.1"))


def test_the_auditor_opens_a_sandbox_and_a_release_page_read_only(
        page: Page, finished_sandbox: str, docker_core: Sealroom, tmp_path: Path) -> None:
    log_in(page, "audrey")
    page.goto(f"/sandboxes/{finished_sandbox}")
    expect(page.locator("#read-only")).to_contain_text("Read-only view of ada's sandbox")
    expect(page.locator("#status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)
    expect(page.locator("#log")).to_contain_text("auditor-visible line")
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    expect(page.locator("#release-form")).to_have_count(0)
    expect(page.locator("#build-on")).to_have_count(0)
    # The page was rendered while the sandbox ran; it renders itself again once the sandbox
    # and its outbox have settled, and that reload would cancel a link followed meanwhile.
    # So: wait for the outbox's hashing, then render the settled page, which stays put.
    outbox_service.schedule_manifest(docker_core, finished_sandbox).result(timeout=120)
    page.reload()
    expect(page.locator("#status")).to_have_text("succeeded")
    with docker_core.read() as session:
        charged = session.exec(select(DisclosureItem.user).where(
            DisclosureItem.sandbox_id == finished_sandbox)
            .where(DisclosureItem.channel == "log")).all()
    assert set(charged) == {"audrey"}  # the log she read was paid from her own budget

    release = release_service.create(docker_core, _ada(), finished_sandbox, ["#1"],
                                     "Accuracy for the report.")
    page.get_by_role("navigation").get_by_role("link", name="Releases").click()
    expect(page.get_by_role("heading", name="All release requests")).to_be_visible()
    page.locator("#releases").get_by_role("link", name=release.id).click()
    expect(page).to_have_url(re.compile(rf"/releases/{release.id}$"))
    expect(page.locator("#read-only")).to_be_visible()
    expect(page.get_by_text("Accuracy for the report.")).to_be_visible()
    for action in ("Approve", "Reject", "Withdraw this request"):
        expect(page.get_by_role("button", name=action)).to_have_count(0)
    expect(page.locator("#download")).to_have_count(0)
    screenshots.take(page, "auditor-release.png", tmp_path)

    page.locator("#audit-timeline").click()
    expect(page.get_by_role("heading", name=f"Timeline of release {release.id}")).to_be_visible()
    expect(page.locator("#timeline")).to_contain_text("release:request:view")
    page.get_by_role("link", name="Hide reads").click()
    expect(page.locator("#timeline")).to_contain_text("release:request:create")
    expect(page.locator("#timeline")).not_to_contain_text("release:request:view")


def test_the_auditor_hides_reads_and_keeps_a_saved_filter(page: Page, readers: None) -> None:
    log_in(page, "audrey")
    page.get_by_role("navigation").get_by_role("link", name="Audit log").click()
    page.get_by_label("Actor").fill("audrey")
    page.get_by_label("Hide reads").check()
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"hide_reads=1"))
    expect(page.locator("#events")).not_to_contain_text("audit:event:view")

    page.locator("#saved-filters summary").click()
    page.get_by_label("Name", exact=True).fill("my own changes")
    page.get_by_role("button", name="Save the current filters").click()
    expect(page.locator("#saved-filter-list")).to_contain_text("my own changes")

    page.goto("/audit")  # kept in this browser's storage, for this user
    page.locator("#saved-filters summary").click()
    page.locator("#saved-filter-list").get_by_role("link", name="my own changes").click()
    expect(page).to_have_url(re.compile(r"actor=audrey.*hide_reads=1"))
    expect(page.get_by_label("Hide reads")).to_be_checked()

    page.get_by_role("link", name="Audit public key").click()
    expect(page.get_by_role("heading", name="Audit public keys")).to_be_visible()
    expect(page.locator("pre.pem").first).to_contain_text("BEGIN PUBLIC KEY")
