"""An engineer's first session in a real browser against a real engine: log in, launch the
bundled example, watch it train to completion, see the outbox and no way to download it."""

from __future__ import annotations

import re
from pathlib import Path

import docker
import pytest
from playwright.sync_api import Page, expect

from console.core import Sealroom
from sandbox.backend import LABEL_INSTALLATION
from tests.browser import screenshots
from tests.browser.people import TRAINING_TIMEOUT_MS, log_in, open_launch_form

pytestmark = [pytest.mark.browser, pytest.mark.docker]

def test_engineer_trains_the_example_and_sees_the_outbox(page: Page, engineer: str,
                                                         tmp_path: Path) -> None:
    log_in(page, engineer)
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    open_launch_form(page)

    expect(page.get_by_label("Bundled example (MLP)")).to_be_checked()
    expect(page.get_by_label("Dataset")).to_have_value("demo")
    page.get_by_role("button", name="Launch").click()

    expect(page).to_have_url(re.compile(r"/sandboxes/sb-[0-9a-f]+$"))
    expect(page.get_by_role("status").filter(has_text="launched")).to_be_visible()
    status = page.locator("#status")
    expect(status).to_have_text("succeeded", timeout=TRAINING_TIMEOUT_MS)
    # once finished, the page renders again and offers the release form
    expect(page.locator("#release-form")).to_be_visible()
    expect(page.locator("#log")).to_contain_text("epoch")
    outbox = page.locator("#outbox")
    expect(outbox).to_contain_text("model.safetensors")
    expect(outbox).to_contain_text("metrics.json")
    expect(page.locator("#exit-code")).to_have_text("0")
    expect(page.locator("#stop-form")).to_have_count(0)

    # The outbox is listed, never offered: no control anywhere on the page leads out.
    controls = page.locator("a, button, input[type=submit], input[type=button], [role=button]")
    for i in range(controls.count()):
        control = controls.nth(i)
        described = " ".join(filter(None, (
            control.inner_text(), control.get_attribute("href"),
            control.get_attribute("value"), control.get_attribute("aria-label"))))
        assert "download" not in described.lower(), f"a download control: {described!r}"
        assert "/outbox" not in (control.get_attribute("href") or ""), described
        assert control.get_attribute("download") is None, f"a download link: {described!r}"

    # the example's curves (loss, accuracy) are drawn before the picture is taken
    expect(page.locator("#metrics-charts .uplot")).to_have_count(2)
    screenshots.take(page, "sandbox.png", tmp_path)  # README's picture (make docs-images)


def test_wrong_password_shows_the_error(page: Page, engineer: str) -> None:
    log_in(page, engineer, "not the password at all")

    expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    expect(page).to_have_url(re.compile(r"/login$"))
    expect(page.get_by_role("button", name="Log out")).to_have_count(0)


def test_launch_over_the_maximum_shows_the_policy_reason(
        page: Page, engineer: str, docker_core: Sealroom,
        docker_client: docker.DockerClient) -> None:
    log_in(page, engineer)
    open_launch_form(page)
    page.get_by_label("CPUs").fill("32")
    with page.expect_response(lambda r: r.request.method == "POST") as launched:
        page.get_by_role("button", name="Launch").click()

    assert launched.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("32 CPUs asked, at most 2 allowed")
    expect(page.get_by_label("CPUs")).to_have_value("32")  # the form keeps what was typed

    page.get_by_role("navigation").get_by_role("link", name="My sandboxes").click()
    expect(page.get_by_text("No sandboxes yet.")).to_be_visible()
    label = f"{LABEL_INSTALLATION}={docker_core.settings.installation_id()}"
    assert docker_client.containers.list(all=True, filters={"label": label}) == []
    assert list(docker_core.settings.sandboxes_dir.iterdir()) == []
