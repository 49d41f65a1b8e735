"""Run names and tags in Chromium, on the console served with the fake backend: an engineer
launches a named, tagged run from the form, finds it again by searching and by its tag,
renames it on its page, and follows a sandbox's release link to the release and back.

Names and tags are typed by the engineer in the console, not written by the sandbox: they
are the console's own text to show, and spend no disclosure budget."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from playwright.sync_api import Browser, Page, expect

from console.core import Sealroom
from tests.browser import screenshots
from tests.browser.conftest import open_page
from tests.browser.people import log_in
from tests.helpers import bearer, recorded, safetensors_bytes, supervisor_pass

pytestmark = [pytest.mark.browser]


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [("alice", "engineer")]}


@pytest.fixture
def page(browser: Browser, served: str) -> Iterator[Page]:
    """A page on the console served with the fake backend (no engine needed)."""
    yield from open_page(browser, served)


def _launch_from_the_form(page: Page, name: str, tags: str) -> str:
    page.get_by_role("navigation").get_by_role("link", name="New sandbox").click()
    page.get_by_label(re.compile(r"^Name ")).fill(name)
    page.get_by_label(re.compile(r"^Tags ")).fill(tags)
    page.get_by_role("button", name="Launch").click()
    expect(page).to_have_url(re.compile(r"/sandboxes/sb-[0-9a-f]+$"))
    return page.url.rsplit("/", 1)[1]


def test_a_named_tagged_run_is_found_by_search_and_by_tag(
        page: Page, people: dict[str, str], client: FlaskClient, core: Sealroom,
        fake_backend: Any, tmp_path: Path) -> None:
    other = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]),
                        json={"dataset": "demo", "example": "mlp", "name": "Unrelated"})
    assert other.status_code == 201
    log_in(page, "alice")
    sandbox_id = _launch_from_the_form(page, "Cohort baseline, 5 epochs", "baseline, Cohort-1")
    expect(page.locator("#run-name")).to_have_text("Cohort baseline, 5 epochs")
    expect(page.locator("#run-tags")).to_contain_text("baseline")
    expect(page.locator("#run-tags")).to_contain_text("cohort-1")

    page.goto("/sandboxes")
    rows = page.locator("#sandboxes tbody tr")
    expect(rows).to_have_count(2)
    page.locator("#search-q").fill("cohort BASE")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"/sandboxes\?q=cohort\+BASE"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(sandbox_id)
    expect(rows.first).to_contain_text("Cohort baseline, 5 epochs")
    screenshots.take(page, "sandboxes-search.png", tmp_path)

    page.get_by_role("link", name="Show all").click()
    expect(rows).to_have_count(2)
    page.locator("#filter-tag").select_option("cohort-1")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"tag=cohort-1"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(sandbox_id)
    expect(page.locator("#filter-tag")).to_have_value("cohort-1")  # the filter stays chosen

    page.goto("/sandboxes")
    page.get_by_role("link", name="Sandboxes tagged baseline").click()  # a tag chip
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(sandbox_id)

    page.goto("/sandboxes?status=nonsense")  # a bad filter: the page says so
    expect(page.get_by_role("alert")).to_contain_text("status must be one of")


def test_renaming_on_the_page_and_following_release_links_both_ways(
        page: Page, people: dict[str, str], client: FlaskClient, core: Sealroom,
        fake_backend: Any, tmp_path: Path) -> None:
    log_in(page, "alice")
    sandbox_id = _launch_from_the_form(page, "First name", "draft")
    page.get_by_text("Rename or change tags").click()
    page.locator("#label-tags").fill("Not a tag!")
    page.get_by_role("button", name="Save name and tags").click()
    expect(page.locator("#label-error")).to_contain_text("is not a tag")
    expect(page.locator("#label-tags")).to_have_value("Not a tag!")  # kept to put right
    page.locator("#label-name").fill("Final weights")
    page.locator("#label-tags").fill("final, paper")
    page.get_by_role("button", name="Save name and tags").click()
    expect(page.locator(".flash.info")).to_have_text("Name and tags saved.")
    expect(page.locator("#run-name")).to_have_text("Final weights")
    assert [e.outcome for e in recorded(core, "sandbox:sandbox:label")] == ["denied", "ok"]

    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
    outbox = core.settings.sandboxes_dir / sandbox_id / "outbox"
    (outbox / "model.safetensors").write_bytes(safetensors_bytes({"w": [0.5, -1.25]}))
    supervisor_pass(core)
    response = client.post("/api/v1/releases", headers=bearer(people["alice"]), json={
        "sandbox": sandbox_id, "files": ["model.safetensors"], "justification": "the paper"})
    release_id = response.get_json()["id"]

    page.reload()
    page.locator("#run-releases").get_by_role("link", name=release_id).click()
    expect(page).to_have_url(re.compile(f"/releases/{release_id}$"))
    expect(page.locator("#release-sandbox")).to_contain_text("Final weights")
    screenshots.take(page, "release-links-sandbox.png", tmp_path)
    page.locator("#release-sandbox").get_by_role("link", name=sandbox_id).click()
    expect(page).to_have_url(re.compile(f"/sandboxes/{sandbox_id}$"))
    page.goto("/releases")
    page.locator("#releases").get_by_role("link", name=sandbox_id).click()
    expect(page).to_have_url(re.compile(f"/sandboxes/{sandbox_id}$"))
