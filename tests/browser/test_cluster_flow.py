"""An engineer launches an MPI cluster from the form in a real browser against a real engine:
two ranks of the bundled Horovod example train to completion, and the log's rank selector
shows each rank's own lines (rank 0's epochs, rank 1's greeting)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from console.core import Sealroom
from tests.browser.people import log_in, open_launch_form

pytestmark = [pytest.mark.browser, pytest.mark.docker]

# Two ranks on the shared cores: the Horovod example takes longer than the single one.
TRAINING_TIMEOUT_MS = 300_000


def test_engineer_trains_a_two_rank_cluster_and_reads_each_ranks_log(
        page: Page, engineer: str, docker_core: Sealroom,  # noqa: F811
        horovod_image: Any, tmp_path: Path) -> None:
    log_in(page, engineer)
    open_launch_form(page)
    expect(page.locator("#max-ranks")).to_contain_text("2 to 4 for a cluster")
    page.get_by_label("Example to run").select_option("mlp-horovod")
    page.get_by_label("An MPI cluster of N ranks").check()
    page.get_by_label("Ranks (N)").fill("2")
    page.get_by_label("Memory (MB)").fill("2048")
    page.get_by_role("button", name="Launch").click()

    expect(page).to_have_url(re.compile(r"/sandboxes/sb-[0-9a-f]+$"))
    expect(page.locator("#kind")).to_have_text("MPI cluster of 2 ranks")
    expect(page.locator("#status")).to_have_text("succeeded", timeout=TRAINING_TIMEOUT_MS)
    # once finished, the page renders again (the outbox's release form): then read the log
    expect(page.locator("#release-form")).to_be_visible(timeout=60_000)
    log = page.locator("#log")
    expect(log).to_contain_text("[1,1]<stdout>:rank 1/2")

    ranks = page.get_by_label("Log of")
    ranks.select_option(label="rank 0")
    expect(log).to_contain_text("epoch 5/5")
    expect(log).not_to_contain_text("rank 1/2")
    expect(log).not_to_contain_text("<stdout>")

    ranks.select_option(label="rank 1")
    expect(log).to_contain_text("rank 1/2")
    expect(log).not_to_contain_text("epoch")

    ranks.select_option(label="all ranks")
    expect(log).to_contain_text("[1,0]<stdout>:epoch 5/5")
    # Each rank logged its shard's loss (sealroom.log_metrics): one chart, a line per rank.
    chart = page.locator('#metrics figure[data-metric="shard_loss"]')
    expect(chart).to_be_visible()
    expect(chart.locator(".u-legend")).to_contain_text("rank 1")
    expect(page.locator("#metrics-progress-text")).to_contain_text("Step 5 of 5")
