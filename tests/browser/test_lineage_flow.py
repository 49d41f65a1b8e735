"""Building on earlier work in a real browser against a real engine: an engineer creates a
project, trains the example in it, trains a second sandbox on the first one's outputs, and
follows the lineage links both ways; a security officer registers a new dataset version
through the upload form and opens the pages of its versions."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from console.core import Sealroom
from console.services import accounts
from tests.browser import screenshots
from tests.browser.conftest import VIEWPORT
from tests.browser.people import log_in
from tests.helpers import OPERATOR, PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.docker]

OFFICER = "sam"
# A cold start of the example (torch import, 5 epochs on one CPU) takes well under a minute.
TRAINING_TIMEOUT_MS = 120_000
_SANDBOX_URL = re.compile(r"/sandboxes/(sb-[0-9a-f]+)$")


@pytest.fixture
def project(docker_core: Sealroom) -> Iterator[str]:
    """The project the engineer creates; its volume (a loop mount) is removed afterwards."""
    yield "study"
    docker_core.storage.remove_project("study")


@pytest.fixture
def officer_page(browser: Browser, live_server: str, docker_core: Sealroom) -> Iterator[Page]:
    """A second person's browser (its own cookies): the security officer's."""
    accounts.create_user(docker_core, OPERATOR, OFFICER, "security_officer", PASSWORD)
    context = browser.new_context(base_url=live_server, viewport=VIEWPORT)
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def _train(page: Page) -> str:
    """Launch from the open form, wait for the run to succeed and its outbox to be listed;
    the sandbox's id."""
    page.get_by_role("button", name="Launch").click()
    expect(page).to_have_url(_SANDBOX_URL)
    match = _SANDBOX_URL.search(page.url)
    assert match
    expect(page.locator("#status")).to_have_text("succeeded", timeout=TRAINING_TIMEOUT_MS)
    expect(page.locator("#release-form")).to_be_visible(timeout=60_000)
    return match.group(1)


def test_engineer_builds_on_a_project_and_an_earlier_sandbox_and_follows_the_lineage(
        project: str, page: Page, engineer: str, officer_page: Page,  # noqa: F811
        tmp_path: Path) -> None:
    log_in(page, engineer)
    page.get_by_role("navigation").get_by_role("link", name="Projects").click()
    page.get_by_label("Name").fill(project)
    page.get_by_label("Quota (MB)").fill("64")
    page.get_by_role("button", name="Create project").click()
    expect(page).to_have_url(re.compile(rf"/projects/{project}$"))
    expect(page.locator("#project-owner")).to_have_text(engineer)

    page.get_by_role("link", name="Launch a sandbox in this project").click()
    expect(page.get_by_label("Project")).to_have_value(project)
    expect(page.get_by_label("Dataset version")).to_have_value("demo")
    first = _train(page)
    expect(page.locator("#lineage-project")).to_have_text(project)

    page.get_by_role("link", name="Build on this sandbox").click()
    expect(page.get_by_label("Outputs of my finished sandboxes")).to_have_values([first])
    second = _train(page)

    inputs = page.locator("#lineage-inputs")
    expect(inputs).to_contain_text(first)
    inputs.get_by_role("link", name=first).click()
    expect(page).to_have_url(re.compile(rf"/sandboxes/{first}$"))
    used_by = page.locator("#lineage-used-by")
    expect(used_by).to_contain_text("mounted its outputs")
    screenshots.take(page, "lineage.png", tmp_path)
    used_by.get_by_role("link", name=second).click()
    expect(page).to_have_url(re.compile(rf"/sandboxes/{second}$"))
    expect(page.locator("#lineage-project")).to_contain_text("none")

    page.go_back()
    page.locator("#lineage-project").get_by_role("link", name=project).click()
    rows = page.locator("#project-sandboxes tbody tr")
    expect(rows).to_have_count(1)  # the second sandbox worked in a fresh workspace
    expect(rows.first).to_contain_text(first)

    # The officer registers a new version of the dataset and follows it.
    officer = officer_page
    log_in(officer, OFFICER)
    officer.get_by_role("navigation").get_by_role("link", name="Datasets").click()
    officer.get_by_role("link", name="demo", exact=True).click()
    officer.get_by_label("Files (a .zip, or one file)").set_input_files(
        files=[{"name": "extra.csv", "mimeType": "text/csv",
                "buffer": b"id,value\n1,0.5\n2,0.25\n"}])
    officer.get_by_role("button", name="Register version").click()
    expect(officer.get_by_role("status")).to_contain_text("Registered demo version 2")
    officer.get_by_role("link", name="demo@2").click()
    expect(officer.get_by_role("heading", name=re.compile("demo@2"))).to_be_visible()
    expect(officer.locator("#descendants")).to_contain_text("No sandbox descends")

    officer.goto("/datasets/demo/versions/1")
    descendants = officer.locator("#descendants")
    expect(descendants).to_contain_text(first)
    expect(descendants).to_contain_text(second)
    screenshots.take(officer, "dataset-version.png", tmp_path)
    descendants.get_by_role("link", name=second).click()
    expect(officer.locator("#lineage-inputs").get_by_role("link", name=first)).to_be_visible()
