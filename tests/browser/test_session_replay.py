"""An auditor in a real browser finds a terminal session and replays its recording: the
vendored asciinema-player, loaded by our own script under the replay page's CSP, draws the
text the session printed, and the browser reports no CSP violation.

Kinds of view (the one rule): the Sessions list and the session page are console-composed
text; the replay re-shows the recording's output, bytes charged to the disclosure ledger when
the gateway first sent them, so it spends nothing new and is audited.
"""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from audit.events import AuditAction
from console.core import Sealroom
from console.services import accounts
from tests.browser.people import log_in
from tests.helpers import OPERATOR, PASSWORD, record_terminal_session, recorded

pytestmark = [pytest.mark.browser, pytest.mark.docker]

# Collects what the page's own CSP refused (Playwright's init script is not bound by it).
_CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


def test_auditor_replays_a_terminal_session(page: Page, docker_core: Sealroom) -> None:
    accounts.create_user(docker_core, OPERATOR, "audrey", "auditor", PASSWORD)
    terminal = record_terminal_session(
        docker_core, user="alice", sandbox_id="sb-replay",
        output=[b"$ python train.py\r\n", b"epoch 1/3 loss=0.51\r\n",
                "r\u00e9sum\u00e9 ".encode()[:3], "r\u00e9sum\u00e9 ".encode()[3:],
                b"done: accuracy \x1b[1;32m0.93\x1b[0m \x1b[38;5;208mwarm\x1b[0m "
                b"\x1b[38;2;10;20;200mtrue\x1b[0m\r\n"])
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.add_init_script(_CSP_WATCH)

    log_in(page, "audrey")
    page.get_by_role("navigation").get_by_role("link", name="Sessions").click()
    expect(page.get_by_role("heading", name="Terminal sessions")).to_be_visible()
    row = page.locator("#sessions tbody tr", has_text=terminal.id)
    expect(row).to_contain_text("alice")
    expect(row).to_contain_text("sb-replay")
    row.get_by_role("link", name=terminal.id).click()

    expect(page.get_by_role("heading", name="Terminal session")).to_contain_text(terminal.id)
    expect(page.locator("#recording-state")).to_have_text("intact")
    player = page.locator("#player")
    expect(player.locator(".ap-player")).to_be_visible()
    player.get_by_role("button", name="Play").click()
    terminal_text = player.locator(".ap-term")
    expect(terminal_text).to_contain_text("epoch 1/3 loss=0.51")
    expect(terminal_text).to_contain_text("résumé done: accuracy 0.93 warm true")

    violations = page.evaluate("window.__cspViolations")
    assert violations == [], violations
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors
    views = recorded(docker_core, AuditAction.SSH_RECORDING_VIEW.value)
    assert views and views[-1].actor == "audrey"
    assert json.loads(views[-1].details)["session"] == terminal.id
