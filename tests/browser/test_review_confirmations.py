"""The approver's review in a real browser (Chromium), on the console served with the fake
backend: a destructive action asks first (a dismissed question does nothing, an accepted one
acts), an approval carries its comment into the decisions and the timeline, an empty reject
is a form error, and the queue shows a justification preview and a "waiting on me" count."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from playwright.sync_api import Browser, Dialog, Page, expect

from console.core import Sealroom
from console.services import releases as release_service
from tests.browser import screenshots
from tests.browser.conftest import open_page
from tests.browser.people import log_in
from tests.helpers import bearer, recorded, safetensors_bytes, supervisor_pass

pytestmark = [pytest.mark.browser]

JUSTIFICATION = ("Final weights for the cardiology paper's methods section; metrics are "
                 "aggregate accuracy over 2,000 held-out records, nothing per patient. The "
                 "weights were trained on cohort 1 only, as the protocol says.")


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("bob", "approver"), ("carol", "approver")]}


@pytest.fixture
def in_review(client: FlaskClient, people: dict[str, str], core: Sealroom,
              fake_backend: Any) -> str:
    """A release request of alice's, checks passed, waiting for two approvers."""
    created = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]),
                          json={"dataset": "demo", "example": "mlp"})
    sandbox_id = created.get_json()["id"]
    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
    outbox = core.settings.sandboxes_dir / sandbox_id / "outbox"
    (outbox / "model.safetensors").write_bytes(safetensors_bytes({"w": [0.5, -1.25]}))
    (outbox / "metrics.json").write_bytes(json.dumps({"accuracy": 0.9, "n": 2000}).encode())
    supervisor_pass(core)
    response = client.post("/api/v1/releases", headers=bearer(people["alice"]), json={
        "sandbox": sandbox_id, "files": ["model.safetensors", "metrics.json"],
        "justification": JUSTIFICATION})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["status"] == "in_review"
    return str(response.get_json()["id"])


@pytest.fixture
def page(browser: Browser, served: str) -> Iterator[Page]:
    """A page on the console served with the fake backend (no engine needed)."""
    yield from open_page(browser, served)


class Confirmations:
    """Answers every confirmation on a page, as told (`accept`), and keeps the questions."""

    def __init__(self, page: Page, accept: bool) -> None:
        self.accept, self.asked = accept, []
        page.on("dialog", self._answer)

    def _answer(self, dialog: Dialog) -> None:
        self.asked.append(dialog.message)
        if self.accept:
            dialog.accept()
        else:
            dialog.dismiss()


def test_approve_asks_first_then_keeps_the_comment(page: Page, in_review: str,
                                                   core: Sealroom, tmp_path: Path) -> None:
    log_in(page, "bob")
    page.goto(f"/releases/{in_review}")
    page.get_by_label("Comment").fill("Checked the metrics against the protocol.")

    confirm = Confirmations(page, accept=False)
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_label("Comment")).to_have_value("Checked the metrics against the protocol.")
    assert confirm.asked == [f"Approve {in_review}?"]
    page.reload()  # whatever a submitted form would have done is done by now
    expect(page.locator("#release-status")).to_have_text("in review")
    assert release_service.decisions_of(core, in_review) == []
    assert recorded(core, "release:request:approve") == []

    confirm.accept = True
    page.get_by_label("Comment").fill("Checked the metrics against the protocol.")
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("status")).to_have_text("Approved.")
    assert confirm.asked == [f"Approve {in_review}?"] * 2
    expect(page.locator("#approvals")).to_contain_text("1 of 2: bob")
    expect(page.locator("#decisions")).to_contain_text(
        "bob approved")
    expect(page.locator("#decisions q")).to_have_text("Checked the metrics against the protocol.")
    expect(page.locator("#timeline")).to_contain_text(
        "bob approve: Checked the metrics against the protocol.")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)  # decided
    screenshots.take(page, "approved-with-comment.png", tmp_path)


def test_an_empty_reject_is_a_form_error(page: Page, in_review: str, core: Sealroom,
                                         tmp_path: Path) -> None:
    log_in(page, "bob")
    page.goto(f"/releases/{in_review}")
    confirm = Confirmations(page, accept=True)

    page.get_by_role("button", name="Reject").click()  # empty: the browser asks for a reason
    reason = page.get_by_label("Reason for rejecting")
    expect(page.locator("#reject-reason:invalid")).to_have_count(1)
    assert reason.evaluate("field => field.validity.valueMissing") is True
    assert confirm.asked == []  # an invalid form is never submitted, so nothing is asked

    reason.fill("   ")  # not empty to the browser, empty to the console
    page.get_by_role("button", name="Reject").click()
    expect(page.locator("#reject-error")).to_have_text("Say why the request is rejected.")
    assert confirm.asked == [f"Reject {in_review}? This ends the request; the requester reads your "
                     "reason."]
    expect(page.get_by_label("Reason for rejecting")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#release-status")).to_have_text("in review")
    expect(page.locator("#timeline")).not_to_contain_text("denied")
    expect(page.locator("#timeline")).not_to_contain_text("reject")
    screenshots.take(page, "empty-reject.png", tmp_path)
    assert [e.target for e in recorded(core, "auth:request:deny")] == [
        f"POST /releases/{in_review}/reject"]

    page.get_by_label("Reason for rejecting").fill("Metrics need a confidence interval.")
    page.get_by_role("button", name="Reject").click()
    expect(page.locator("#release-status")).to_have_text("rejected")
    expect(page.locator("#decisions")).to_contain_text("bob rejected")
    expect(page.locator("#timeline")).to_contain_text(
        "bob reject: Metrics need a confidence interval.")


def test_the_queue_counts_what_waits_and_previews_the_justification(
        page: Page, in_review: str, client: FlaskClient, people: dict[str, str],
        tmp_path: Path) -> None:
    log_in(page, "carol")
    count = page.get_by_role("navigation").locator("#waiting-count")
    expect(count).to_have_text("1")
    page.get_by_role("navigation").get_by_role("link", name="Review queue").click()
    expect(page.locator("#waiting")).to_have_text("1 request waiting on you, oldest first.")
    row = page.locator("#queue tbody tr", has_text=in_review)
    preview = row.locator("td.justification")
    expect(preview).to_have_text(re.compile(r"^Final weights for the cardiology paper.*…$"))
    assert len(preview.inner_text()) < len(JUSTIFICATION)
    screenshots.take(page, "queue.png", tmp_path)

    client.post(f"/api/v1/releases/{in_review}/approve", headers=bearer(people["bob"]))
    page.reload()
    expect(page.locator("#queue")).to_contain_text(in_review)  # bob's approval is not carol's
    Confirmations(page, accept=True)
    row.get_by_role("link", name=in_review).click()
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#release-status")).to_have_text("released")
    expect(page.get_by_role("navigation").locator("#waiting-count")).to_have_count(0)
    page.get_by_role("navigation").get_by_role("link", name="Review queue").click()
    expect(page.locator("#waiting")).to_have_text("Nothing is waiting for you.")


def test_a_dismissed_revoke_keeps_the_token_and_an_accepted_one_revokes_it(
        page: Page, people: dict[str, str]) -> None:
    """The same mechanism on another page: every destructive form carries data-confirm."""
    log_in(page, "alice")
    page.goto("/account")
    revoke = page.get_by_role("button", name=re.compile(r"^Revoke token"))
    expect(revoke).to_have_count(1)
    confirm = Confirmations(page, accept=False)
    revoke.click()
    page.reload()  # whatever a submitted form would have done is done by now
    expect(revoke).to_have_count(1)
    assert len(confirm.asked) == 1 and confirm.asked[0].startswith("Revoke token ")
    confirm.accept = True
    revoke.click()
    expect(page.get_by_role("button", name=re.compile(r"^Revoke token"))).to_have_count(0)
