"""An engineer watches a training job's curves grow in Chromium while it runs, against the
real engine: the chart is drawn by the console's bundled uPlot from points that spent the
disclosure budget (sandbox output, paid for); progress and notes are the console's words."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from console.core import Sealroom
from tests.browser.people import log_in, open_launch_form

pytestmark = [pytest.mark.browser, pytest.mark.docker]

# Slow on purpose (inside the sandbox): the test watches it while it runs, then stops it.
JOB = b"""
import time
from sealroom import declare_total_steps, log_metrics
declare_total_steps(2000)
for step in range(1, 2001):
    log_metrics(step, loss=1.0 / step, accuracy=1 - 1.0 / step)
    time.sleep(0.25)  # 8 points a second: under the default 600 a minute
"""


def test_curves_grow_while_the_job_runs(page: Page, engineer: str,  # noqa: F811
                                        docker_core: Sealroom, tmp_path: Path) -> None:
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if _csp(m) else None)
    job = tmp_path / "curves.py"
    job.write_bytes(JOB)
    log_in(page, engineer)
    open_launch_form(page)
    page.get_by_label("Upload a script (.py) or a zip").check()
    page.get_by_label("Script or zip").set_input_files(str(job))
    page.get_by_role("textbox", name="Command").fill("python curves.py")
    page.get_by_role("button", name="Launch").click()
    expect(page).to_have_url(re.compile(r"/sandboxes/sb-[0-9a-f]+$"))

    box = page.locator("#metrics")
    chart = box.locator('figure[data-metric="loss"] canvas')
    expect(chart).to_be_visible(timeout=120_000)
    expect(box.locator('figure[data-metric="accuracy"]')).to_be_visible()
    expect(page.locator("#metrics-progress-text")).to_contain_text(re.compile(r"of 2,000"))
    # Live: the count of points drawn grows while the status still says running.
    first = int(box.get_attribute("data-points") or "0")
    expect(box).not_to_have_attribute("data-points", str(first), timeout=60_000)
    expect(page.locator("#status")).to_have_text("running")
    assert int(box.get_attribute("data-points") or "0") > first

    page.once("dialog", lambda dialog: dialog.accept())  # "Stop sb-...?"
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#status")).not_to_have_text("running", timeout=60_000)
    assert violations == []


def _csp(message: ConsoleMessage) -> bool:
    return "Content Security Policy" in message.text or "Refused to" in message.text
