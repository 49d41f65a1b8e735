"""The release gate in a real browser: the engineer requests a release of the trained example,
two approvers approve it from their queue, and the engineer downloads a bundle that verifies
offline with both `sealroom release verify` and the independent `model_signing` tool."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from console.core import Sealroom
from console.services import accounts, datasets
from tests.browser import screenshots
from tests.browser.people import TRAINING_TIMEOUT_MS, log_in, open_launch_form
from tests.helpers import OPERATOR, PASSWORD, write_dataset

pytestmark = [pytest.mark.browser, pytest.mark.docker]


@pytest.fixture
def team(docker_core: Sealroom, tmp_path: Path) -> None:
    for name, role in [("ada", "engineer"), ("bob", "approver"), ("carol", "approver")]:
        accounts.create_user(docker_core, OPERATOR, name, role, PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "src", 10_000),
                              "demo", ["role:engineer"])


def log_out(page: Page) -> None:
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()


def approve_from_queue(page: Page, approver: str, release_id: str,
                       look_inside: bool = False) -> None:
    log_in(page, approver)
    page.get_by_role("navigation").get_by_role("link", name="Review queue").click()
    page.locator("#queue").get_by_role("link", name=release_id).click()
    expect(page.locator("#checks")).to_contain_text("leak scan")
    expect(page.locator("#checks")).not_to_contain_text("FAIL")
    if look_inside:  # the rendered view of the weights: tensors, never raw bytes
        page.locator("#release-files tr", has_text="model.safetensors").get_by_role(
            "link", name=re.compile(r"View file")).click()
        expect(page.locator("#view-kind")).to_have_text("safetensors weights")
        expect(page.locator("#tensors tbody tr").first).to_be_visible()
        page.go_back()
    page.once("dialog", lambda dialog: dialog.accept())  # "Approve rel-...?"
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#decisions")).to_contain_text(f"{approver} approved")
    log_out(page)


#: The attacks on the example's model, on two shared cores.
MODEL_RISK_TIMEOUT_MS = 600_000


def test_release_reviewed_signed_and_verified(page: Page, team: None, tmp_path: Path,
                                              live_server: str) -> None:
    log_in(page, "ada")
    open_launch_form(page)
    page.get_by_role("button", name="Launch").click()
    expect(page.locator("#status")).to_have_text("succeeded", timeout=TRAINING_TIMEOUT_MS)
    form = page.locator("#release-form")
    expect(form).to_be_visible()
    # The example's target description is for the gate's attack, not for release.
    expect(page.locator("#target-descriptions")).to_contain_text(
        "model.safetensors.target.json")
    expect(form.get_by_role("checkbox")).to_have_count(2)  # the model and metrics.json
    page.get_by_label("Justification").fill("Example model for the methods section.")
    page.get_by_role("button", name="Request release").click()

    expect(page).to_have_url(re.compile(r"/releases/rel-[0-9a-f]+$"))
    release_id = page.url.rsplit("/", 1)[1]
    # The gate attacks the model first; the page says so and refreshes itself meanwhile.
    expect(page.locator("#release-status")).to_have_text("submitted")
    expect(page.locator("#model-risk-running")).to_contain_text("attacking 1 model(s)")
    expect(page.locator("#release-status")).to_have_text("in review",
                                                         timeout=MODEL_RISK_TIMEOUT_MS)
    expect(page.locator("#model-risk")).to_be_visible()
    expect(page.locator("svg.roc polyline")).to_have_count(2)  # LiRA's and the worst case's
    screenshots.take(page, "release-model-risk.png", tmp_path)
    expect(page.locator("#release-files")).to_contain_text("model.safetensors")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)  # not for the requester
    log_out(page)

    approve_from_queue(page, "bob", release_id, look_inside=True)
    approve_from_queue(page, "carol", release_id)

    log_in(page, "ada")
    page.goto(f"/releases/{release_id}")
    expect(page.locator("#release-status")).to_have_text("released")
    expect(page.locator("#approvals")).to_contain_text("bob, carol")
    expect(page.locator("#timeline")).to_contain_text("seal")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download signed bundle").click()
    archive = tmp_path / "bundle.tar"
    download.value.save_as(archive)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "out", filter="data")
    bundle = tmp_path / "out" / release_id

    key = tmp_path / "release.pem"
    page.goto("/keys")
    key.write_text(page.locator("pre.pem").first.inner_text() + "\n")
    ours = subprocess.run([sys.executable, "-m", "console.cli", "release", "verify",
                           str(bundle), "--key", str(key)], capture_output=True, text=True)
    assert ours.returncode == 0, ours.stdout + ours.stderr
    theirs = subprocess.run([str(Path(sys.executable).with_name("model_signing")), "verify",
                             "key", "--signature", str(bundle / "model.sig"), "--public_key",
                             str(key), str(bundle)], capture_output=True, text=True)
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
