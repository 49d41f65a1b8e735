"""The security officer in a real browser: edits the policy, sees the validation error (with
its line) as she types, fixes it, dry-runs, activates with a reason; the engineer's next
launch over the new limit is refused with the reason and the rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from console.core import Sealroom
from console.services import accounts, datasets
from tests.browser import screenshots
from tests.browser.people import log_in, open_launch_form
from tests.browser.policy_editor import policy_text, set_policy_text
from tests.browser.test_release_flow import log_out
from tests.helpers import OPERATOR, PASSWORD, write_dataset

pytestmark = [pytest.mark.browser, pytest.mark.docker]

ENGINEER_CPUS = "max_cpus: 2.0"  # the default policy's engineer entry


@pytest.fixture
def team(docker_core: Sealroom, tmp_path: Path) -> None:
    for name, role in [("ada", "engineer"), ("sam", "security_officer")]:
        accounts.create_user(docker_core, OPERATOR, name, role, PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "src"), "demo",
                              ["role:engineer"])


def test_officer_tightens_the_policy_and_the_engineer_is_refused(
        page: Page, team: None, docker_core: Sealroom, tmp_path: Path) -> None:
    log_in(page, "sam")
    expect(page.get_by_role("heading", name=re.compile("Policy"))).to_be_visible()
    expect(page.locator("#active-version")).to_have_text("version 2")
    page.get_by_role("link", name="Edit policy").click()

    editor = page.locator("#policy-text")  # the textarea the CodeMirror editor posts
    original = policy_text(page)
    assert ENGINEER_CPUS in original
    line = next(n for n, row in enumerate(original.splitlines(), 1) if ENGINEER_CPUS in row)
    set_policy_text(page, original.replace(ENGINEER_CPUS, "max_cpus: -0.5"))
    summary = page.locator("#validation-summary")
    expect(summary).to_have_text("The policy does not validate:")
    problem = page.locator("#validation li").first
    expect(problem).to_have_text(
        f"line {line}: resources.roles.engineer.max_cpus: must be greater than 0")
    expect(editor).to_have_attribute("aria-invalid", "true")

    set_policy_text(page, original.replace(ENGINEER_CPUS, "max_cpus: 0.5"))
    expect(summary).to_have_text("Valid.")
    page.get_by_role("button", name="Dry run").click()

    expect(page.get_by_role("heading", name="Dry run: version 3")).to_be_visible()
    expect(page.locator("#dry-run-diff .add")).to_have_text("+      max_cpus: 0.5")
    expect(page.locator("#dry-run-no-sandboxes")).to_have_text("None.")
    page.get_by_label("Reason").fill("CPU share for the spring course")
    page.once("dialog", lambda dialog: dialog.accept())  # "Activate version 3?"
    page.get_by_role("button", name="Activate version 3").click()

    expect(page.get_by_role("status").filter(has_text="Policy version 3 is active")
           ).to_be_visible()
    expect(page.locator("#active-version")).to_have_text("version 3")
    expect(page.locator("#active-reason")).to_contain_text("CPU share for the spring course")
    expect(page.locator("#history")).to_contain_text("sam")
    page.get_by_label("From", exact=True).fill("2")
    page.get_by_label("to", exact=True).fill("3")
    page.get_by_role("button", name="Show differences").click()
    expect(page.locator("#diff .del")).to_contain_text("max_cpus: 2.0")
    expect(page.locator("#diff .add")).to_contain_text("max_cpus: 0.5")
    screenshots.take(page, "policy.png", tmp_path)
    log_out(page)

    log_in(page, "ada")
    open_launch_form(page)
    expect(page.locator("fieldset.limits")).to_contain_text("max 0.5")
    page.get_by_label("CPUs").fill("1")
    with page.expect_response(lambda r: r.request.method == "POST") as launched:
        page.get_by_role("button", name="Launch").click()
    assert launched.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text(
        "1 CPUs asked, at most 0.5 allowed (policy version 3, rule "
        "resources.roles.engineer.max_cpus)")
    assert list(docker_core.settings.sandboxes_dir.iterdir()) == []
