"""Auditors review the record through HTTP: filters, keyset paging, event detail, timelines,
chain status (which finds tampering done with plain SQL), export. Reads are audited too."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from audit.events import Actor, AuditAction, Outcome
from console.app import create_app
from console.cli import main
from console.core import Sealroom
from console.services import audit_log
from tests.helpers import bearer, login

Users = Callable[..., tuple[str, str]]


@pytest.fixture
def auditor(make_user: Users) -> str:
    return make_user("audrey", "auditor")[1]


def _events(client: FlaskClient, token: str, **params: Any) -> dict[str, Any]:
    response = client.get("/api/v1/audit/events", headers=bearer(token), query_string=params)
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def _seed(core: Sealroom, count: int) -> None:
    for i in range(count):
        core.record(Actor(f"user{i % 3}", "engineer", "token", "10.0.0.1"),
                    AuditAction.SANDBOX_VIEW, target=f"sandbox:sb-{i % 4}",
                    outcome=Outcome.DENIED if i % 5 == 0 else Outcome.OK, n=i)


def test_only_auditors_and_admins_read_the_log(client: FlaskClient, make_user: Users,
                                               auditor: str) -> None:
    for role in ("engineer", "approver", "security_officer"):
        _, token = make_user(f"x-{role.replace('_', '-')}", role)
        response = client.get("/api/v1/audit/events", headers=bearer(token))
        assert response.status_code == 403
    _, admin = make_user("root", "admin")
    assert client.get("/api/v1/audit/events", headers=bearer(admin)).status_code == 200
    assert client.get("/api/v1/audit/export", headers=bearer(auditor)).status_code == 200


def test_filters_match_exactly_or_by_prefix(client: FlaskClient, core: Sealroom,
                                            auditor: str) -> None:
    _seed(core, 30)
    body = _events(client, auditor, actor="user1", limit=500)
    assert body["events"] and {e["actor"] for e in body["events"]} == {"user1"}
    body = _events(client, auditor, action="sandbox:", outcome="denied", limit=500)
    assert len(body["events"]) == 6
    assert all(e["outcome"] == "denied" and e["action"].startswith("sandbox:")
               for e in body["events"])
    body = _events(client, auditor, target="sandbox:sb-2", limit=500)
    assert {e["target"] for e in body["events"]} == {"sandbox:sb-2"}
    assert [e["details"]["n"] for e in body["events"]] == [26, 22, 18, 14, 10, 6, 2]
    assert _events(client, auditor, target="sandbox:*", limit=500)["events"]
    assert _events(client, auditor, until="2000-01-01")["events"] == []
    assert _events(client, auditor, since="2000-01-01", limit=5)["events"]


def test_bad_filters_are_refused_clearly(client: FlaskClient, auditor: str) -> None:
    for params, words in [({"outcome": "maybe"}, "outcome is one of"),
                          ({"since": "yesterday"}, "not a date"),
                          ({"since": "2026-02-02", "until": "2026-01-01"}, "ends before"),
                          ({"limit": "0"}, "limit"), ({"before": "x"}, "whole number")]:
        response = client.get("/api/v1/audit/events", headers=bearer(auditor),
                              query_string=params)
        assert response.status_code == 400, params
        assert words in response.get_json()["error"]["message"]


def test_keyset_paging_walks_every_event_once(client: FlaskClient, core: Sealroom,
                                              auditor: str) -> None:
    _seed(core, 45)
    seen: list[int] = []
    body = _events(client, auditor, action="sandbox:sandbox:view", limit=10)
    while True:
        seen += [e["id"] for e in body["events"]]
        if not body["older"]:
            break
        response = client.get(body["older"], headers=bearer(auditor))
        body = response.get_json()
    assert len(seen) == 45 and seen == sorted(seen, reverse=True)
    newer = client.get(body["newer"], headers=bearer(auditor)).get_json()
    assert [e["id"] for e in newer["events"]] == seen[-15:-5]


def test_reading_and_exporting_are_themselves_audited(client: FlaskClient, core: Sealroom,
                                                      auditor: str, tmp_path: Path) -> None:
    _events(client, auditor, actor="nobody")
    response = client.get("/api/v1/audit/export", headers=bearer(auditor))
    assert response.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    header, events = lines[0]["header"], [line["event"] for line in lines if "event" in line]
    checkpoints = [line["checkpoint"] for line in lines if "checkpoint" in line]
    assert header["complete"] and header["to_id"] == events[-1]["id"]
    actions = [e["action"] for e in events]
    assert "audit:event:view" in actions
    assert actions[-1] == "audit:event:export"  # the export records itself, then exports
    # ...and ends at a checkpoint signed over its own record
    assert checkpoints[-1]["tree_size"] == events[-1]["id"]
    viewed = [e for e in events if e["action"] == "audit:event:view"][-1]
    assert viewed["actor"] == "audrey"
    assert json.loads(viewed["details"])["filters"] == {"actor": "nobody"}

    # what the console serves verifies offline, with the key it serves
    export, key = tmp_path / "export.jsonl", tmp_path / "audit.pem"
    export.write_bytes(response.get_data())
    key.write_bytes(client.get("/api/v1/keys/audit.pem", headers=bearer(auditor)).get_data())
    result = CliRunner().invoke(main, ["audit", "verify", str(export), "--key", str(key)])
    assert result.exit_code == 0, result.output


def test_event_detail_and_timelines(client: FlaskClient, core: Sealroom, auditor: str) -> None:
    _seed(core, 8)
    first = _events(client, auditor, target="sandbox:sb-1")["events"][-1]
    detail = client.get(f"/api/v1/audit/events/{first['id']}", headers=bearer(auditor))
    assert detail.get_json()["hash"] == first["hash"]
    assert client.get("/api/v1/audit/events/999999", headers=bearer(auditor)).status_code == 404

    login(client, "audrey")
    page = client.get(f"/audit/events/{first['id']}").get_data(as_text=True)
    assert first["hash"] in page and "sandbox:sb-1" in page
    assert client.get("/audit/timeline/sandbox/sb-nope").status_code == 404
    assert client.get("/audit/timeline/user/x").status_code == 404


def test_chain_status_finds_plain_sql_tampering(client: FlaskClient, core: Sealroom,
                                                auditor: str) -> None:
    _seed(core, 12)
    status = client.get("/api/v1/audit/chain", headers=bearer(auditor)).get_json()
    assert status["ok"] and status["first_bad_event"] is None
    database = core.settings.home / "sealroom.db"
    with sqlite3.connect(database) as raw:  # an insider with the file drops the guards first
        raw.execute("DROP TRIGGER audit_event_no_update")
        raw.execute("UPDATE audit_event SET reason = 'nothing to see' WHERE id = 7")
    status = client.get("/api/v1/audit/chain", headers=bearer(auditor)).get_json()
    assert not status["ok"] and status["first_bad_event"] == 7
    assert status["verified_up_to"] == 6

    login(client, "audrey")
    page = client.get("/audit").get_data(as_text=True)
    assert "Chain BROKEN at event 7" in page  # the last verification, at a glance


def test_auditor_pages_filter_and_page(client: FlaskClient, core: Sealroom, auditor: str) -> None:
    _seed(core, 200)
    login(client, "audrey")
    page = client.get("/audit", query_string={"actor": "user2", "outcome": "ok"})
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "user2" in text and "Older" in text
    assert "user1</td>" not in text
    bad = client.get("/audit", query_string={"since": "soon"})
    assert bad.status_code == 400 and "not a date" in bad.get_data(as_text=True)
    export = client.get("/audit/export")
    assert export.headers["Content-Disposition"].endswith("audit-export.jsonl")
    export.get_data()
    export.close()


def test_the_console_finds_a_break_by_itself(core: Sealroom) -> None:
    """No auditor has to ask: the console walks the chain when it starts and then every
    SEALROOM_AUDIT_VERIFY_INTERVAL seconds, and records what it found."""
    _seed(core, 6)
    database = core.settings.home / "sealroom.db"
    with sqlite3.connect(database) as raw:
        raw.execute("DROP TRIGGER audit_event_no_delete")
        raw.execute("DELETE FROM audit_event WHERE id = 4")
    create_app(sealroom=core, supervise=True)
    deadline = time.monotonic() + 20
    while (found := audit_log.last_verification(core)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert found is not None, "the console did not verify the chain on start"
    assert (found["by"], found["ok"], found["first_bad_event"], found["kind"]) == (
        "system", False, 4, "deleted")
