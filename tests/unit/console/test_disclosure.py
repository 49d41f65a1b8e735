"""The disclosure ledger through HTTP with the fake backend.

Which of the two each view is (the product's one rule):
- log text and outbox NAMES are sandbox bytes: they spend the disclosure budget, per sandbox
  and per user and day, and every showing or refusal is audited;
- outbox positions, kinds, sizes, hashes and "file 17 (name withheld)" are text and numbers
  the console composed itself;
- the officer's page, API and CLI show only the console's own counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from console.core import Sealroom
from console.services import outbox as outbox_service
from tests.helpers import (
    bearer,
    change_policy,
    login,
    recorded,
    supervisor_pass,
    wait_for_outbox,
)

ROW = "P00017,1951-03-02,F,diabetes type 2,6.1"  # what an insider would name a file after


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("erin", "engineer"), ("sam", "security_officer"),
        ("audrey", "auditor"), ("bob", "approver")]}


def _launch(client: FlaskClient, token: str) -> str:
    created = client.post("/api/v1/sandboxes", headers=bearer(token),
                          json={"dataset": "demo", "example": "mlp"})
    assert created.status_code == 201, created.get_json()
    return str(created.get_json()["id"])


def _log(client: FlaskClient, token: str, sandbox_id: str, offset: int = 0) -> Any:
    return client.get(f"/api/v1/sandboxes/{sandbox_id}/logs?offset={offset}",
                      headers=bearer(token))


def _spent(core: Sealroom, sandbox_id: str) -> int:
    from console.services import disclosure

    with core.transaction() as session:
        return disclosure.sandbox_total(session, sandbox_id)


# --- logs ------------------------------------------------------------------------------------


def test_rereading_is_free_and_new_bytes_anywhere_spend(client: FlaskClient, core: Sealroom,
                                                       people: dict[str, str],
                                                       fake_backend: Any) -> None:
    change_policy(core, {"disclosure": {"per_sandbox_bytes": 1024}})
    sandbox_id = _launch(client, people["alice"])
    handle = fake_backend.handle_of(sandbox_id)
    fake_backend.emit(handle, b"a" * 500)
    first = _log(client, people["alice"], sandbox_id)
    assert first.status_code == 200 and len(first.get_data()) == 510
    assert _spent(core, sandbox_id) == 512  # two 256-byte blocks
    for _ in range(3):  # the same bytes again: nothing more spent
        assert _log(client, people["alice"], sandbox_id).get_data() == first.get_data()
    assert _spent(core, sandbox_id) == 512
    # The engine rotates its log and the sandbox writes new records: position 0 still holds
    # the first bytes (the console's own copy), and the new ones spend.
    fake_backend.rotate(handle)
    fake_backend.emit(handle, b"b" * 600)
    again = _log(client, people["alice"], sandbox_id)
    assert again.get_data().startswith(first.get_data())
    assert again.headers["X-Log-Total"] == "1110"
    assert _spent(core, sandbox_id) == 1024
    assert len(again.get_data()) == 1024  # four blocks, then the budget ends
    refused = _log(client, people["alice"], sandbox_id, offset=1024)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["rule"] == "disclosure.per_sandbox_bytes"
    assert _log(client, people["alice"], sandbox_id, offset=0).status_code == 200  # still free
    shown = [json.loads(e.details) for e in recorded(core, "sandbox:logs:view")
             if e.outcome == "ok"]
    assert sum(d["spent"] for d in shown) == 1024
    assert [e.outcome for e in recorded(core, "sandbox:logs:view")].count("denied") == 1


def test_a_saved_log_follows_the_same_ledger(client: FlaskClient, core: Sealroom,
                                             people: dict[str, str], fake_backend: Any) -> None:
    change_policy(core, {"disclosure": {"per_sandbox_bytes": 256}})
    sandbox_id = _launch(client, people["alice"])
    handle = fake_backend.handle_of(sandbox_id)
    fake_backend.emit(handle, b"c" * 400)
    assert len(_log(client, people["alice"], sandbox_id).get_data()) == 256
    fake_backend.finish(handle, exit_code=0)
    supervisor_pass(core)
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(people["alice"])
                      ).get_json()["status"] == "succeeded"
    assert handle not in fake_backend.sandboxes  # removed: the log is the console's copy
    assert len(_log(client, people["alice"], sandbox_id).get_data()) == 256
    assert _log(client, people["alice"], sandbox_id, offset=256).status_code == 403
    assert _log(client, people["alice"], sandbox_id, offset=-10).status_code == 403


def test_the_daily_budget_spans_a_users_sandboxes(client: FlaskClient, core: Sealroom,
                                                  people: dict[str, str],
                                                  fake_backend: Any) -> None:
    change_policy(core, {"disclosure": {"per_sandbox_bytes": 4096,
                                        "per_user_daily_bytes": 768}})
    one, two = _launch(client, people["alice"]), _launch(client, people["alice"])
    for sandbox_id in (one, two):
        fake_backend.emit(fake_backend.handle_of(sandbox_id), b"d" * 600)
    assert len(_log(client, people["alice"], one).get_data()) == 610  # 768 spent
    refused = _log(client, people["alice"], two)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["rule"] == "disclosure.per_user_daily_bytes"
    erin = _launch(client, people["erin"])  # another user has their own day
    fake_backend.emit(fake_backend.handle_of(erin), b"e" * 100)
    assert _log(client, people["erin"], erin).status_code == 200


# --- the outbox ------------------------------------------------------------------------------


def _finished_with(client: FlaskClient, core: Sealroom, token: str, fake_backend: Any,
                   files: dict[str, bytes]) -> str:
    sandbox_id = _launch(client, token)
    outbox = core.settings.sandboxes_dir / sandbox_id / "outbox"
    for name, data in files.items():
        (outbox / name).parent.mkdir(parents=True, exist_ok=True)
        (outbox / name).write_bytes(data)
    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
    supervisor_pass(core)
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(token)
                      ).get_json()["status"] == "succeeded"
    return sandbox_id


def test_names_are_shown_only_by_rule_and_budget(client: FlaskClient, core: Sealroom,
                                                 people: dict[str, str],
                                                 fake_backend: Any) -> None:
    change_policy(core, {"disclosure": {"per_sandbox_bytes": 40}})
    sandbox_id = _finished_with(client, core, people["alice"], fake_backend, {
        "model.safetensors": b"w", "metrics.json": b"{}", ROW: b"", "a/b/c/d/deep.txt": b"",
        "x" * 65: b"", "zz-last-name-over-budget.bin": b"z"})
    listing = wait_for_outbox(client, people["alice"], sandbox_id)
    assert listing["state"] == "ready"
    labels = [f["label"] for f in listing["files"]]
    text = json.dumps(listing)
    assert ROW not in text and "x" * 65 not in text and "deep.txt" not in text
    assert "metrics.json" in labels and "model.safetensors" in labels  # 12 + 17 bytes
    withheld = [f for f in listing["files"] if f["withheld"]]
    assert all(re.fullmatch(r"file \d+ \(name withheld\)", f["label"]) for f in withheld)
    assert all(f["name"] is None for f in withheld)
    assert len(withheld) == 3  # the row, the long name, and one past the budget
    assert "a/b/c/d" in labels  # a directory too deep to enter is listed, not walked
    assert listing["disclosure"]["rule"] == "disclosure.per_sandbox_bytes"
    assert "40 bytes for this sandbox is spent" in listing["disclosure"]["message"]
    assert _spent(core, sandbox_id) == len("metrics.json") + len("model.safetensors") + 7
    again = wait_for_outbox(client, people["alice"], sandbox_id)
    assert again["files"] == listing["files"] and _spent(core, sandbox_id) == 36
    event = recorded(core, "sandbox:outbox:view")[-1]
    details = json.loads(event.details)
    assert (details["names_shown"], details["names_withheld"]) == (3, 3)
    assert recorded(core, "sandbox:outbox:hash")[-1].outcome == "ok"


def test_a_withheld_file_is_requested_by_position_and_never_named(
        client: FlaskClient, core: Sealroom, people: dict[str, str], fake_backend: Any) -> None:
    sandbox_id = _finished_with(client, core, people["alice"], fake_backend,
                                {f"{ROW}.json": b'{"accuracy": 0.9}'})
    listing = wait_for_outbox(client, people["alice"], sandbox_id)
    (item,) = listing["files"]
    assert item["withheld"] and item["sha256"]
    login(client, "alice")
    page = client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    assert ROW not in page and f'value="#{item["position"]}"' in page  # offered by position
    guessed = client.post("/api/v1/releases", headers=bearer(people["alice"]), json={
        "sandbox": sandbox_id, "files": [f"{ROW}.json"], "justification": "guess"})
    assert guessed.status_code == 400  # a withheld name, even guessed right, is not accepted
    created = client.post("/api/v1/releases", headers=bearer(people["alice"]), json={
        "sandbox": sandbox_id, "files": [f"#{item['position']}"], "justification": "metrics"})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert ROW not in json.dumps(body)
    assert body["files"][0]["name"] == item["label"]
    assert {r["file"] for r in body["checks"]["results"] if r["file"]} == {item["label"]}
    for event in recorded(core):
        assert ROW not in f"{event.reason} {event.details} {event.target}"
    page = client.get(f"/releases/{body['id']}").get_data(as_text=True)
    assert ROW not in page and item["label"] in page
    page = client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    # the file is in a request now: listed by its label with a link, not offered again
    assert ROW not in page and f'value="#{item["position"]}"' not in page
    assert f"{item['label']}: <a href=\"/releases/{body['id']}\"" in page


def test_the_running_outbox_is_closed_unless_the_policy_opens_it(
        client: FlaskClient, core: Sealroom, people: dict[str, str], fake_backend: Any) -> None:
    sandbox_id = _launch(client, people["alice"])
    (core.settings.sandboxes_dir / sandbox_id / "outbox" / "early.txt").write_bytes(b"1")
    url = f"/api/v1/sandboxes/{sandbox_id}/outbox"
    closed = client.get(url, headers=bearer(people["alice"]))
    assert closed.status_code == 403
    assert recorded(core, "sandbox:outbox:view")[-1].outcome == "denied"
    login(client, "alice")
    page = client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    assert "listed once the sandbox has ended" in page and "early.txt" not in page
    change_policy(core, {"disclosure": {"outbox": {"list_while_running": True}}})
    opened = client.get(url, headers=bearer(people["alice"])).get_json()
    assert opened["state"] == "running"
    assert [(f["label"], f["sha256"]) for f in opened["files"]] == [("early.txt", None)]


def test_an_outbox_past_the_hashing_cap_is_reported_not_hashed(
        client: FlaskClient, core: Sealroom, people: dict[str, str], fake_backend: Any) -> None:
    change_policy(core, {"disclosure": {"outbox": {"max_hash_files": 2}}})
    sandbox_id = _finished_with(client, core, people["alice"], fake_backend,
                                {f"f{i}.txt": b"x" for i in range(3)})
    listing = wait_for_outbox(client, people["alice"], sandbox_id)
    assert listing["state"] == "over_cap" and "max_hash_files" in listing["detail"]
    assert all(f["sha256"] is None for f in listing["files"])
    refused = client.post("/api/v1/releases", headers=bearer(people["alice"]), json={
        "sandbox": sandbox_id, "files": ["f0.txt"], "justification": "x"})
    assert refused.status_code == 400 and "hashing cap" in refused.get_json()["error"]["message"]


def test_the_manifest_is_made_again_after_a_crash(client: FlaskClient, core: Sealroom,
                                                  people: dict[str, str],
                                                  fake_backend: Any) -> None:
    """A console that died before hashing: the next listing schedules it again."""
    sandbox_id = _finished_with(client, core, people["alice"], fake_backend, {"m.json": b"{}"})
    wait_for_outbox(client, people["alice"], sandbox_id)
    from console.models import OutboxManifest

    with core.transaction() as session:
        row = session.get(OutboxManifest, sandbox_id)
        session.delete(row)
    assert wait_for_outbox(client, people["alice"], sandbox_id)["state"] == "ready"
    assert outbox_service.manifest_items(core, sandbox_id)[0] is not None


# --- what the officer sees -------------------------------------------------------------------


def test_officers_see_each_users_spending(client: FlaskClient, core: Sealroom,
                                          people: dict[str, str], fake_backend: Any) -> None:
    sandbox_id = _launch(client, people["alice"])
    fake_backend.emit(fake_backend.handle_of(sandbox_id), b"f" * 300)
    _log(client, people["alice"], sandbox_id)
    for who in ("sam", "audrey"):
        body = client.get("/api/v1/disclosure?user=alice", headers=bearer(people[who]))
        assert body.status_code == 200
        usage = body.get_json()
        assert usage["spent_today"] == 512 and usage["limit_per_day"] == 4 << 20
        assert usage["sandboxes"][0]["sandbox"] == sandbox_id
        assert usage["sandboxes"][0]["channels"] == {"log": 512}
    today = client.get("/api/v1/disclosure", headers=bearer(people["sam"])).get_json()
    assert today["users"] == [{"user": "alice", "spent": 512, "limit": 4 << 20}]
    for who in ("alice", "bob"):
        assert client.get("/api/v1/disclosure?user=alice",
                          headers=bearer(people[who])).status_code == 403
    assert recorded(core, "policy:disclosure:view")[-1].target == "disclosure:today"
    login(client, "sam")
    page = client.get("/disclosure?user=alice").get_data(as_text=True)
    assert sandbox_id in page and "512" in page
    # Every channel has its column, and the id leads where this viewer may go: an officer to
    # the sandbox's lineage, an auditor to its read-only page.
    assert "<th>Metrics (bytes)</th><th>Terminal (bytes)</th>" in page
    assert f'href="/lineage/sandboxes/{sandbox_id}"' in page
    auditor = client.application.test_client()
    login(auditor, "audrey")
    page = auditor.get("/disclosure?user=alice").get_data(as_text=True)
    assert f'href="/sandboxes/{sandbox_id}"' in page


def test_the_cli_shows_a_users_spending(core: Sealroom, people: dict[str, str],
                                        client: FlaskClient, fake_backend: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from console.cli import main

    sandbox_id = _launch(client, people["alice"])
    fake_backend.emit(fake_backend.handle_of(sandbox_id), b"g" * 10)
    _log(client, people["alice"], sandbox_id)
    monkeypatch.setenv("SEALROOM_HOME", str(core.settings.home))
    result = CliRunner().invoke(main, ["policy", "disclosure", "alice"])
    assert result.exit_code == 0, result.output
    assert "alice: 256 of 4,194,304 bytes today" in result.output
    assert sandbox_id in result.output
