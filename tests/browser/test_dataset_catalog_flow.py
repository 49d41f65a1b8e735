"""The dataset catalog in a real browser (Chromium), on the console served with the fake
backend: an engineer opens "What's in it?" next to the launch form's dataset select and sees
the chosen version's description, its files' columns and its README (as text); the link
follows the select. What the catalog shows is the dataset as the platform's people
registered it, never sandbox output."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from console.core import Sealroom
from console.services import datasets as dataset_service
from tests.browser import screenshots
from tests.browser.conftest import open_page
from tests.browser.people import log_in
from tests.helpers import OPERATOR

pytestmark = [pytest.mark.browser]

# The unit tests show a README's markup as text (tests/unit/console/test_dataset_catalog.py);
# this one is the picture in the user guide, so it reads as a real README.
README = ("# Ward vitals\n\nHourly vitals of 40 synthetic patients on one ward, for the demo."
          "\n\n- heart rate in bpm\n- temperature in °C\n")


@pytest.fixture
def engineer(make_user: Callable[..., tuple[str, str]], dataset: str, core: Sealroom,
             tmp_path: Path) -> str:
    """alice, who may use `demo` (version 1) and `vitals` (a CSV and a README.md)."""
    source = tmp_path / "vitals"
    source.mkdir()
    (source / "README.md").write_text(README, encoding="utf-8")
    (source / "vitals.csv").write_text("patient,hour,heart_rate,temperature\n1,0,61,36.8\n")
    dataset_service.register_dataset(core, OPERATOR, source, "vitals", ["role:engineer"])
    return make_user("alice")[0]


@pytest.fixture
def page(browser: Browser, served: str) -> Iterator[Page]:
    """A page on the console served with the fake backend (no engine needed)."""
    yield from open_page(browser, served)


def test_an_engineer_opens_the_catalog_from_the_launch_form(page: Page, engineer: str,
                                                           tmp_path: Path) -> None:
    log_in(page, engineer)
    page.get_by_role("navigation").get_by_role("link", name="New sandbox").click()
    select = page.get_by_label("Dataset version")
    link = page.get_by_role("link", name="What's in it?")
    expect(link).to_have_attribute("href", "/datasets/demo")
    select.select_option("vitals")
    expect(link).to_have_attribute("href", "/datasets/vitals")

    with page.expect_popup() as opened:
        link.click()
    catalog = opened.value
    expect(catalog).to_have_title("Dataset vitals · Sealroom")
    expect(catalog.locator("#catalog-description")).to_contain_text(
        "Hourly vitals of 40 synthetic patients on one ward, for the demo.")
    row = catalog.locator("#catalog-files tr", has_text="vitals.csv")
    expect(row.locator("code.column")).to_have_text(
        ["patient", "hour", "heart_rate", "temperature"])
    expect(catalog.locator("#catalog-readme")).to_contain_text("- temperature in °C")
    screenshots.take(catalog, "dataset-catalog.png", tmp_path)

    # the demo's own catalog, from the versions table of the datasets page
    catalog.get_by_role("navigation").get_by_role("link", name="Datasets").click()
    catalog.locator("#versions-demo").get_by_role("link", name="what's in it").click()
    expect(catalog).to_have_title("What's in demo@1 · Sealroom")
    expect(catalog.locator("#catalog-files tr", has_text="train.csv")
           .locator("code.column").last).to_have_text("label")
    expect(catalog.locator("#catalog-readme")).to_contain_text("Sealroom demo dataset")
