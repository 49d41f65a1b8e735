"""Declared tables in a released metrics file, through HTTP with the fake backend: a dominated
cell fails the checks naming the policy rule, and the policy's switch lets it through.

Which it is: the check reasons shown (API and the release page, to the requester too, before
any approval) are text the gate composed: table and cell positions and the policy's numbers,
never a table name from the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from console.core import Sealroom
from tests.helpers import bearer, change_policy, login, recorded, supervisor_pass

#: A cost table whose second cell is dominated: its two largest are 950 of 1000.
DOMINATED = json.dumps({
    "accuracy": 0.9,
    "frequency_tables": {"admissions_by_ward": [120, 45, 30]},
    "magnitude_tables": {"cost_jane_doe_ward": [[1000, 20, 100, 90], [1000, 20, 900, 50]]},
}).encode()


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("bob", "approver"), ("carol", "approver")]}


@pytest.fixture
def request_release(client: FlaskClient, people: dict[str, str], core: Sealroom,
                    fake_backend: Any) -> Callable[[dict[str, bytes]], Any]:
    """alice's release request for these outbox files of a finished sandbox; the response."""

    def make(files: dict[str, bytes]) -> Any:
        created = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]),
                              json={"dataset": "demo", "example": "mlp"})
        sandbox_id = created.get_json()["id"]
        fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
        outbox = core.settings.sandboxes_dir / sandbox_id / "outbox"
        for name, data in files.items():
            (outbox / name).write_bytes(data)
        supervisor_pass(core)  # after the files exist: the exit schedules the hashing
        client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(people["alice"]))
        return client.post("/api/v1/releases", headers=bearer(people["alice"]), json={
            "sandbox": sandbox_id, "files": list(files), "justification": "ward cost paper"})

    return make


def test_a_dominated_cell_fails_the_checks_naming_the_rule(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        request_release: Callable[[dict[str, bytes]], Any]) -> None:
    response = request_release({"metrics.json": DOMINATED})

    assert response.status_code == 201, response.get_json()
    release = response.get_json()
    assert release["status"] == "checks_failed"
    [failed] = [r for r in release["checks"]["results"] if not r["passed"]]
    assert (failed["check"], failed["file"], failed["limit"], failed["rule"]) == (
        "metrics", "metrics.json", "dominance_k", "release.dominance_k")
    assert failed["reason"].startswith(
        "has 1 of 5 declared table cell(s) that could disclose individuals (acro's rules): "
        "magnitude table 1, cell 2: dominance (n=2, k=90%)")
    assert "jane" not in json.dumps(release["checks"]).lower()
    assert client.post(f"/api/v1/releases/{release['id']}/approve",
                       headers=bearer(people["bob"])).status_code == 409
    event = recorded(core, "release:request:check")[-1]
    assert event.outcome == "denied" and event.target == f"release:{release['id']}"

    login(client, "alice")
    page = client.get(f"/releases/{release['id']}").get_data(as_text=True)
    assert "magnitude table 1, cell 2: dominance (n=2, k=90%)" in page
    assert "policy rule <code>release.dominance_k</code>" in page
    assert "jane" not in page.lower()


def test_with_both_dominance_rules_off_the_same_file_goes_to_review(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        request_release: Callable[[dict[str, bytes]], Any]) -> None:
    change_policy(core, {"release": {"dominance_rule": False, "p_percent_rule": False}})

    release = request_release({"metrics.json": DOMINATED}).get_json()

    assert release["status"] == "in_review", release["checks"]
    [metrics] = [r for r in release["checks"]["results"] if r["check"] == "metrics"]
    assert metrics["reason"].endswith(
        "2 declared table(s), 5 cell(s) (2 of magnitude) pass acro's rules: threshold (each "
        "cell's count at least 10)")


def test_a_small_count_in_a_declared_table_names_small_count_k(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        request_release: Callable[[dict[str, bytes]], Any]) -> None:
    metrics = json.dumps({"frequency_tables": {"t": [120, 3]}}).encode()
    release = request_release({"metrics.json": metrics}).get_json()
    assert release["status"] == "checks_failed"
    [failed] = [r for r in release["checks"]["results"] if not r["passed"]]
    assert failed["rule"] == "release.small_count_k"
    assert "frequency table 1, cell 2: threshold: a count below 10" in failed["reason"]
