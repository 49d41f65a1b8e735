"""The security officer in a real browser, against the real engine with its supervisor: opens
"Running sandboxes" from the navigation, finds an engineer's running sandbox with its owner,
dataset and age, is asked to confirm the Stop (and nothing happens when she declines), gives
her reason, accepts, and sees it stopped in her words; the record holds one stop, by her.

The page shows only text the console composed (ids, user names, dataset names, statuses,
times): the sandbox's printed line is not on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Dialog, Page, expect

from audit.events import Actor
from console.core import Caller, Sealroom
from console.models import Sandbox
from console.services import accounts, datasets
from console.services import launch as launch_service
from tests.browser import screenshots
from tests.browser.people import log_in
from tests.helpers import OPERATOR, PASSWORD, recorded, write_dataset

pytestmark = [pytest.mark.browser, pytest.mark.docker]

ENGINEER, OFFICER = "ada", "sam"
PRINTED = "SLEEPER-PRINTED-THIS"
SLEEPER = f"import time\nprint('{PRINTED}', flush=True)\ntime.sleep(600)\n".encode()
STOP_TIMEOUT_MS = 60_000  # a stop on a small shared host under load
END_ACTIONS = ("sandbox:sandbox:stop", "sandbox:sandbox:exit", "sandbox:sandbox:oom",
               "sandbox:sandbox:timeout", "sandbox:sandbox:lost")


@pytest.fixture
def sleeper(docker_core: Sealroom, tmp_path: Path) -> str:
    """One running sandbox of the engineer's: a sleeping script on small limits."""
    for name, role in [(ENGINEER, "engineer"), (OFFICER, "security_officer")]:
        accounts.create_user(docker_core, OPERATOR, name, role, PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "src"), "demo",
                              ["role:engineer"])
    order = launch_service.LaunchOrder(datasets=["demo"], code=SLEEPER, code_name="sleep.py",
                                       command="python sleep.py", cpus=0.25, memory_mb=128,
                                       timeout_s=600)
    launched = launch_service.launch(docker_core, Caller(Actor(ENGINEER, "engineer", "test",
                                                               "local")), order)
    assert launched.status == "running"
    return launched.id


def _status(core: Sealroom, sandbox_id: str) -> str:
    with core.read() as session:
        row = session.get(Sandbox, sandbox_id)
    assert row is not None
    return row.status


def test_the_officer_stops_an_engineers_sandbox_from_the_running_page(
        page: Page, docker_core: Sealroom, sleeper: str, tmp_path: Path) -> None:
    log_in(page, OFFICER)
    page.get_by_role("navigation").get_by_role("link", name="Running sandboxes").click()
    expect(page.get_by_role("heading", name="Running sandboxes")).to_be_visible()
    row = page.locator(f"#running-{sleeper}")
    expect(row).to_contain_text(ENGINEER)
    expect(row).to_contain_text("demo@1")
    expect(row).to_contain_text("allows it")
    expect(row.get_by_role("link", name=sleeper)).to_have_attribute(
        "href", f"/lineage/sandboxes/{sleeper}")
    expect(page.locator("main")).not_to_contain_text(PRINTED)

    asked: list[str] = []

    def decline(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    row.get_by_label(f"Why you stop {sleeper}").fill("holding a GPU node it does not use")
    page.once("dialog", decline)
    row.get_by_role("button", name=f"Stop {sleeper}").click()
    assert asked == [f"Stop {sleeper} of {ENGINEER}? Its program is ended now."]
    # declined: the submit was cancelled in the same event, so nothing was sent
    assert _status(docker_core, sleeper) == "running"
    expect(row).to_be_visible()
    screenshots.take(page, "running-sandboxes.png", tmp_path)

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=f"Stop {sleeper}").click()
    expect(page.locator("p.flash[role=status]")).to_have_text(
        f"Sandbox {sleeper} stopped by {OFFICER} (security officer): holding a GPU node it "
        "does not use.", timeout=STOP_TIMEOUT_MS)
    expect(page.locator("#running-none")).to_have_text("No sandbox is running.")

    assert _status(docker_core, sleeper) == "stopped"
    ends = [(e.action, e.actor, e.outcome) for e in recorded(docker_core)
            if e.target == f"sandbox:{sleeper}" and e.action in END_ACTIONS]
    assert ends == [("sandbox:sandbox:stop", OFFICER, "ok")]
