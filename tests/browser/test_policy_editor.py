"""The security officer's policy editor in a real browser (Chromium), on the console served with
the fake backend: line numbers, a problem typed on a line is marked on that line (gutter and
line) and listed above the editor, clicking it goes there; the dry run shows what changes
against the active version first; restore goes through the same dry run and activates only
once confirmed; all under the console's CSP, with nothing refused."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, expect

from console.core import Sealroom
from tests.browser import screenshots
from tests.browser.conftest import VIEWPORT
from tests.browser.people import log_in
from tests.browser.policy_editor import EDITOR, editor_line, policy_text
from tests.helpers import change_policy

pytestmark = [pytest.mark.browser]

ENGINEER_CPUS = "max_cpus: 2.0"  # the default policy's engineer entry
# Collects what the page's own CSP refused (Playwright's init script is not bound by it).
_CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


@pytest.fixture
def page(browser: Browser, served: str) -> Iterator[Page]:
    """A page on the console served with the fake backend (no engine needed), watched for
    anything the CSP refuses."""
    context = browser.new_context(base_url=served, viewport=VIEWPORT)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.add_init_script(_CSP_WATCH)
    refused: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            refused.append(message.text)

    page.on("console", on_console)
    yield page
    assert refused == []
    context.close()


@pytest.fixture
def sam(make_user: Callable[..., tuple[str, str]], dataset: str) -> str:
    return make_user("sam", "security_officer")[0]


def test_a_bad_value_is_marked_on_its_line_and_the_dry_run_shows_the_diff(
        page: Page, sam: str, core: Sealroom, tmp_path: Path) -> None:
    log_in(page, sam)
    page.get_by_role("link", name="Edit policy").click()
    expect(page.get_by_role("heading", name="Edit policy")).to_be_visible()

    # line numbers, CodeMirror in place of the textarea (which the form still posts)
    expect(page.locator("#policy-form .CodeMirror")).to_be_visible()
    expect(page.locator("#policy-text")).to_be_hidden()
    original = policy_text(page)
    line = next(n for n, row in enumerate(original.splitlines(), 1) if ENGINEER_CPUS in row)
    expect(page.locator(f"{editor_line(line)} .CodeMirror-linenumber")
           ).to_have_text(str(line))
    expect(page.locator("#policy-form .CodeMirror-code .CodeMirror-linenumber")).to_have_count(
        page.evaluate(f"{EDITOR}.lineCount()"))  # every line numbered

    # type a bad value at the end of that line
    page.evaluate(f"(n) => {{ const cm = {EDITOR}; cm.focus(); "
                  "cm.setCursor({line: n - 1, ch: cm.getLine(n - 1).length}); }", line)
    for _ in "2.0":
        page.keyboard.press("Backspace")
    page.keyboard.type("-0.5")
    summary = page.locator("#validation-summary")
    expect(summary).to_have_text("The policy does not validate:")
    expect(summary).to_be_in_viewport()  # above the editor, not below the fold
    problem = page.locator("#validation li").first
    expect(problem).to_have_text(
        f"line {line}: resources.roles.engineer.max_cpus: must be greater than 0")
    marker = page.locator("#policy-form .policy-marker:not(.warning)")
    expect(marker).to_have_count(1)
    expect(page.locator(f"{editor_line(line)} .policy-marker")).to_be_visible()
    expect(page.locator(f"{editor_line(line)} .policy-problem-line")).to_have_count(1)
    expect(page.locator("#policy-form .policy-problem-line")).to_have_count(1)
    expect(page.locator("#policy-text")).to_have_attribute("aria-invalid", "true")
    screenshots.take(page, "policy-editor.png", tmp_path)

    # clicking the problem goes to its line
    page.evaluate(f"{EDITOR}.setCursor({{line: 0, ch: 0}})")
    problem.click()
    assert page.evaluate(f"{EDITOR}.getCursor().line") == line - 1
    assert page.evaluate(f"{EDITOR}.getSelection()") == "max_cpus: -0.5"

    page.keyboard.type("max_cpus: 0.5")  # replaces the selected line
    page.keyboard.press("Escape")  # Tab indents inside; Esc leaves the editor
    expect(page.get_by_role("button", name="Dry run")).to_be_focused()
    expect(summary).to_have_text("Valid.")
    expect(marker).to_have_count(0)
    expect(page.locator("#policy-form .policy-problem-line")).to_have_count(0)
    # the valid document's warning (no approvers yet) is marked on its own line, as a warning
    approvals = next(n for n, row in enumerate(original.splitlines(), 1)
                     if "approvals_needed" in row)
    expect(page.locator("#validation li")).to_have_text(re.compile(
        rf"^warning: line {approvals}: release\.approvals_needed: "))
    expect(page.locator(f"{editor_line(approvals)} .policy-marker.warning")).to_be_visible()

    page.get_by_role("button", name="Dry run").click()
    expect(page.get_by_role("heading", name="Dry run: version 3")).to_be_visible()
    diff = page.locator("#dry-run-diff")
    expect(diff).to_be_in_viewport()  # the first thing the dry run shows
    expect(diff.locator(".del")).to_have_text(f"-      {ENGINEER_CPUS}")
    expect(diff.locator(".add")).to_have_text("+      max_cpus: 0.5")
    expect(page.locator("#dry-run-no-sandboxes")).to_have_text("None.")
    expect(page.locator("#dry-run-result textarea")).to_have_count(0)  # the document: in the editor
    assert policy_text(page) == original.replace(ENGINEER_CPUS, "max_cpus: 0.5")
    screenshots.take(page, "policy-dry-run.png", tmp_path)

    page.get_by_label("Reason").fill("CPU share for the spring course")
    asked: list[str] = []

    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Activate version 3").click()
    expect(page.get_by_role("status").filter(has_text="Policy version 3 is active")
           ).to_be_visible()
    assert asked == ["Activate version 3? It becomes the active policy and applies to every "
                     "new action at once."]
    assert core.policy.resources.for_role("engineer").max_cpus == 0.5
    assert page.evaluate("window.__cspViolations") == []


def test_restore_shows_the_dry_run_then_activates_once_confirmed(
        page: Page, sam: str, core: Sealroom) -> None:
    change_policy(core, {"disclosure": {"per_sandbox_bytes": 1024}})  # version 3
    log_in(page, sam)
    history = page.locator("#history")
    expect(history.get_by_role("button", name="Restore 3")).to_have_count(0)  # the active one
    history.get_by_role("button", name="Restore 2").click()

    expect(page.get_by_role("heading", name="Restore policy version 2")).to_be_visible()
    expect(page.get_by_role("heading", name="Dry run: version 4 (restores version 2)")
           ).to_be_visible()
    expect(page.locator("#dry-run-diff .del").filter(has_text="per_sandbox_bytes: 1024")
           ).to_have_count(1)
    assert "per_sandbox_bytes: 1024" not in policy_text(page)  # version 2's document
    assert core.policy.version == 3

    page.get_by_label("Reason").fill("back to the course's limits")
    restore = page.get_by_role("button", name="Restore version 2 as version 4")
    page.once("dialog", lambda dialog: dialog.dismiss())
    restore.click()
    expect(restore).to_be_visible()  # a dismissed question sends nothing
    assert core.policy.version == 3

    asked: list[str] = []

    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Restore version 2 as version 4").click()
    expect(page.get_by_role("status").filter(has_text="Policy version 4 is active")
           ).to_be_visible()
    assert asked == ["Restore version 2 as version 4? It becomes the active policy and "
                     "applies to every new action at once."]
    expect(page.locator("#active-reason")).to_have_text(
        "back to the course's limits (restores version 2)")
    # version 2's document is the active one now: nothing to restore there
    expect(history.get_by_role("button", name="Restore 2")).to_have_count(0)
    expect(history.get_by_role("button", name="Restore 3")).to_be_visible()
