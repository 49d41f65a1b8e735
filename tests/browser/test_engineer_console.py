"""The engineer's sandbox page and launch form in Chromium against the real engine: the log
follows a job that prints 2,000 lines (and stops following when scrolled up), the running
figures, a shell command (`cd src && python main.py`), and a refused launch that keeps the
form's values and the chosen file."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from console.core import Sealroom
from console.services import accounts, datasets
from tests.browser import screenshots
from tests.browser.people import ENGINEER, log_in, open_launch_form
from tests.helpers import OPERATOR, PASSWORD, write_dataset

pytestmark = [pytest.mark.browser, pytest.mark.docker]

RUN_TIMEOUT_MS = 90_000
AT_END = "el => el.scrollHeight - el.scrollTop - el.clientHeight < 4"

FOLLOWED = b"""\
import time
for n in range(1, 2001):
    print(f"line {n:04d} of 2000: loss {1 / n:.6f}", flush=True)
n = 0
while True:  # keeps printing until stopped, so the test can watch the log move
    n += 1
    print(f"tick {n}", flush=True)
    time.sleep(0.2)
"""


@pytest.fixture
def engineer(docker_core: Sealroom, tmp_path: Path) -> str:
    accounts.create_user(docker_core, OPERATOR, ENGINEER, "engineer", PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "src", 200),
                              "demo", ["role:engineer"])
    return ENGINEER


def _log_in_and_open_the_form(page: Page) -> None:
    log_in(page, ENGINEER)
    open_launch_form(page)


def _upload(page: Page, name: str, data: bytes, command: str, *, shell: bool = False) -> None:
    page.get_by_label("Upload a script (.py) or a zip").check()
    page.get_by_label("Script or zip").set_input_files(
        files=[{"name": name, "mimeType": "application/octet-stream", "buffer": data}])
    page.get_by_label("A shell command" if shell else "A program and its arguments").check()
    page.get_by_label("Command", exact=True).fill(command)


def test_the_log_follows_a_job_that_prints_2000_lines(page: Page, engineer: str,
                                                      tmp_path: Path) -> None:
    """The log is the sandbox's output (it spends the disclosure budget, audited); the
    elapsed time, time left, CPU and memory beside it are the console's own figures."""
    _log_in_and_open_the_form(page)
    _upload(page, "follow.py", FOLLOWED, "python follow.py")
    page.get_by_role("button", name="Launch").click()
    expect(page).to_have_url(re.compile(r"/sandboxes/sb-[0-9a-f]+$"))

    log = page.locator("#log")
    expect(log).to_contain_text("line 2000 of 2000", timeout=RUN_TIMEOUT_MS)
    expect(log).to_contain_text("tick 1")
    page.wait_for_function(f"({AT_END})(document.getElementById('log'))")
    expect(page.locator("#log-follow")).to_have_text("Following the end of the log.")
    expect(page.get_by_role("button", name="Jump to the end")).to_be_hidden()
    assert "line 0001 of 2000" in log.inner_text()  # the whole log, from its first line

    # Scrolled up: the view stays put while the log grows, and offers the way back.
    log.evaluate("el => { el.scrollTop = 0; }")
    expect(page.locator("#log-follow")).to_have_text("Not following: scrolled up.")
    jump = page.get_by_role("button", name="Jump to the end")
    expect(jump).to_be_visible()
    ticks = int(re.findall(r"tick (\d+)", log.inner_text())[-1])
    page.wait_for_function(
        "n => (document.getElementById('log').textContent.match(/tick (\\d+)\\n/g) || [])"
        ".length > n", arg=ticks + 1)
    assert log.evaluate("el => el.scrollTop") == 0

    jump.click()
    page.wait_for_function(f"({AT_END})(document.getElementById('log'))")
    expect(page.locator("#log-follow")).to_have_text("Following the end of the log.")
    # ... and keeps following as more lines come.
    ticks = int(re.findall(r"tick (\d+)", log.inner_text())[-1])
    page.wait_for_function(
        "n => (document.getElementById('log').textContent.match(/tick (\\d+)\\n/g) || [])"
        ".length > n", arg=ticks + 1)
    page.wait_for_function(f"({AT_END})(document.getElementById('log'))")

    expect(page.locator("#elapsed")).to_contain_text("of 30 min 00 s")
    expect(page.locator("#remaining")).to_contain_text(re.compile(r"\d+ min"))
    expect(page.locator("#cpu-use")).to_contain_text("of 1 CPU")
    expect(page.locator("#memory-use")).to_contain_text("of 2,048 MB")
    screenshots.take(page, "log-follows.png", tmp_path)


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_shell_command_runs_and_a_plain_one_that_needs_a_shell_is_refused(
        page: Page, engineer: str, tmp_path: Path) -> None:
    code = _zip({"src/main.py": b"import os\nprint('main.py ran in', os.getcwd())\n"})
    _log_in_and_open_the_form(page)
    _upload(page, "project.zip", code, "cd src && python main.py")  # a plain command
    page.get_by_role("button", name="Launch").click()
    expect(page.get_by_role("alert")).to_contain_text("needs a shell")
    expect(page.get_by_label("Command", exact=True)).to_have_value("cd src && python main.py")

    page.get_by_label("A shell command").check()  # the upload was kept: no file chosen again
    expect(page.locator("#kept-upload")).to_contain_text("project.zip")
    page.get_by_role("button", name="Launch").click()
    expect(page).to_have_url(re.compile(r"/sandboxes/sb-[0-9a-f]+$"))
    expect(page.locator("#status")).to_have_text("succeeded", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#log")).to_contain_text("main.py ran in /workspace/src")
    expect(page.get_by_text("/bin/sh -c 'cd src && python main.py'")).to_be_visible()
    screenshots.take(page, "shell-command.png", tmp_path)


def test_a_refused_launch_keeps_the_forms_values(page: Page, engineer: str,
                                                 tmp_path: Path) -> None:
    _log_in_and_open_the_form(page)
    _upload(page, "train.py", b"print('trained')\n", "python train.py --epochs 3")
    page.get_by_label("CPUs").fill("32")
    page.get_by_label("Memory (MB)").fill("512")
    page.get_by_label("Time limit (s)").fill("300")
    with page.expect_response(lambda r: r.request.method == "POST") as launched:
        page.get_by_role("button", name="Launch").click()
    assert launched.value.status == 403

    expect(page.get_by_role("alert")).to_contain_text("32 CPUs asked, at most 2 allowed")
    expect(page.get_by_label("Dataset version")).to_have_value("demo")
    expect(page.get_by_label("Upload a script (.py) or a zip")).to_be_checked()
    expect(page.get_by_label("A program and its arguments")).to_be_checked()
    expect(page.get_by_label("Command", exact=True)).to_have_value("python train.py --epochs 3")
    expect(page.get_by_label("CPUs")).to_have_value(re.compile(r"^32(\.00)?$"))
    expect(page.get_by_label("Memory (MB)")).to_have_value("512")
    expect(page.get_by_label("Time limit (s)")).to_have_value("300")
    expect(page.locator("#kept-upload")).to_contain_text("train.py")
    screenshots.take(page, "refused-launch.png", tmp_path)

    page.get_by_label("CPUs").fill("1")
    page.get_by_role("button", name="Launch").click()
    expect(page).to_have_url(re.compile(r"/sandboxes/sb-[0-9a-f]+$"))
    expect(page.locator("#status")).to_have_text("succeeded", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#log")).to_contain_text("trained")
