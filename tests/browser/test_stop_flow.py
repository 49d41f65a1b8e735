"""An engineer stops running sandboxes from their pages in a real browser, against the real
engine with its supervisor running: every page shows the `stopped` badge and a message
naming the same stop, and the record holds it once, never `failed` (issue 17: a stop once
showed "Sandbox stopped." next to a failed badge, "exited with code 143")."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Dialog, Page, expect

from audit.events import Actor
from console.core import Caller, Sealroom
from console.services import accounts, datasets
from console.services import launch as launch_service
from tests.browser import screenshots
from tests.browser.people import ENGINEER, log_in
from tests.helpers import OPERATOR, PASSWORD, change_policy, recorded, write_dataset

pytestmark = [pytest.mark.browser, pytest.mark.docker]

SANDBOXES = 20
SLEEPER = b"import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n"
END_ACTIONS = ("sandbox:sandbox:stop", "sandbox:sandbox:exit", "sandbox:sandbox:oom",
               "sandbox:sandbox:timeout", "sandbox:sandbox:lost")
STOP_TIMEOUT_MS = 60_000  # a stop on a small shared host under load


@pytest.fixture
def sleepers(docker_core: Sealroom, tmp_path: Path) -> list[str]:
    """Twenty running sandboxes of the engineer's, each a sleeping script on small limits."""
    accounts.create_user(docker_core, OPERATOR, ENGINEER, "engineer", PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "src"), "demo",
                              ["role:engineer"])
    change_policy(docker_core, {"resources": {"roles": {"engineer": {
        "max_concurrent": SANDBOXES, "max_workspace_mb": 32, "max_outbox_mb": 16,
        "max_tmp_mb": 16}}}})
    caller = Caller(Actor(ENGINEER, "engineer", "test", "local"))
    order = launch_service.LaunchOrder(datasets=["demo"], code=SLEEPER, code_name="sleep.py",
                                       command="python sleep.py", cpus=0.25, memory_mb=128,
                                       timeout_s=600)
    launched = [launch_service.launch(docker_core, caller, order) for _ in range(SANDBOXES)]
    assert {s.status for s in launched} == {"running"}
    # The supervisor takes an exit code 143 as final at once: the race with the stop is at
    # its widest (the console otherwise waits a few seconds, for an engine shutting down).
    docker_core.engine_watch.settle_s = 0
    return [s.id for s in launched]


def _log_in(page: Page) -> None:
    log_in(page, ENGINEER)
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def _accept(dialog: Dialog) -> None:
    dialog.accept()  # a confirmation before a stop, where the page asks for one


def test_stopping_20_running_sandboxes_from_their_pages_never_records_failed(
        page: Page, docker_core: Sealroom, sleepers: list[str], tmp_path: Path) -> None:
    _log_in(page)
    # One after another, each from its own page in a tab of its own, as a person would, while
    # the page polls its sandbox and the supervisor keeps passing. A tab is closed once its
    # stop is shown: a stopped page reloads itself when its outbox settles, which would abort
    # a navigation started in the same tab. (Twenty tabs polling at once made the test a load
    # test of a small shared host.)
    for sandbox_id in sleepers:
        tab = page.context.new_page()
        tab.on("dialog", _accept)
        tab.goto(f"/sandboxes/{sandbox_id}")
        expect(tab.locator("#status")).to_have_text("running")
        tab.locator("#stop-form").get_by_role("button", name="Stop").click()
        expect(tab.locator("p.flash[role=status]")).to_have_text(
            f"Sandbox {sandbox_id} stopped by {ENGINEER}.", timeout=STOP_TIMEOUT_MS)
        expect(tab.locator("#status")).to_have_text("stopped")
        expect(tab.locator("#reason")).to_have_text(f"stopped by {ENGINEER}")
        expect(tab.locator("#stop-form")).to_have_count(0)
        if sandbox_id == sleepers[-1]:
            screenshots.take(tab, "stopped.png", tmp_path)
        tab.close()

    events = recorded(docker_core)
    for sandbox_id in sleepers:
        ends = [(e.action, e.actor, e.outcome) for e in events
                if e.target == f"sandbox:{sandbox_id}" and e.action in END_ACTIONS]
        assert ends == [("sandbox:sandbox:stop", ENGINEER, "ok")], (sandbox_id, ends)
    # The list says the same of every one.
    page.goto("/sandboxes")
    expect(page.locator("#sandboxes .status")).to_have_text(["stopped"] * SANDBOXES)
