"""An auditor's API token reads what the auditor's pages show, and no more: anyone's sandbox
(GET /api/v1/sandboxes/<id>) and anyone's release request (GET /api/v1/releases and
/api/v1/releases/<id>), read-only and each read audited under the auditor's name; the
sandbox's log, outbox names and metrics through the owner's paid paths, on the auditor's own
disclosure budget; every write still answers 403.

Which of the two these views are (the product's one rule): the sandbox's and the request's
records are the console's own words (ids, statuses, limits, hashes, counts, times) and the
requester's (the justification, the file names sent for review, as on the pages); no line
the sandbox printed is in them, and reading them spends nobody's disclosure budget. The log and
the outbox names are sandbox output: each showing is charged to the auditor and audited."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import select

from audit.events import AuditAction
from console.core import Sealroom
from console.models import DisclosureItem
from tests.helpers import bearer, recorded
from tests.mocking import FakeBackend
from tests.unit.console.test_auditor_pages import (
    LOG_LINE,
    OUTBOX_NAME,
    _finished,
    _launched,
    _released,
)


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("erin", "engineer"), ("bob", "approver"),
        ("audrey", "auditor"), ("sam", "security_officer")]}


def _spent(core: Sealroom, user: str) -> list[DisclosureItem]:
    with core.read() as session:
        return list(session.exec(select(DisclosureItem).where(
            DisclosureItem.user == user)).all())


def test_an_auditor_token_reads_anyones_sandbox_audited_and_without_its_output(
        client: FlaskClient, core: Sealroom, fake_backend: FakeBackend,
        people: dict[str, str]) -> None:
    sandbox_id = _launched(client, people["alice"])
    fake_backend.emit(fake_backend.handle_of(sandbox_id), f"{LOG_LINE}\n".encode())
    audrey = bearer(people["audrey"])
    response = client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=audrey)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["id"], body["owner"], body["status"]) == (sandbox_id, "alice", "running")
    assert LOG_LINE not in response.get_data(as_text=True)
    [view] = [e for e in recorded(core, AuditAction.SANDBOX_VIEW)
              if e.request_id == response.headers["X-Request-Id"]]
    assert view.actor == "audrey" and view.target == f"sandbox:{sandbox_id}"
    assert json.loads(view.details) == {"owner": "alice", "read_only": True}
    assert _spent(core, "audrey") == []
    # the owner's own read is not recorded as someone else's view
    own = client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(people["alice"]))
    assert recorded(core, AuditAction.SANDBOX_VIEW,
                    request_id=own.headers["X-Request-Id"]) == []
    # another engineer still cannot tell it exists; an officer has no sandbox read
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}",
                      headers=bearer(people["erin"])).status_code == 404
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}",
                      headers=bearer(people["sam"])).status_code == 403
    assert client.get("/api/v1/sandboxes/sb-nope", headers=audrey).status_code == 404


def test_an_auditor_token_writes_nothing(client: FlaskClient, core: Sealroom,
                                         people: dict[str, str]) -> None:
    sandbox_id = _launched(client, people["alice"])
    audrey = bearer(people["audrey"])
    writes = [("/api/v1/sandboxes", {"dataset": "demo", "example": "mlp"}),
              (f"/api/v1/sandboxes/{sandbox_id}/stop", {}),
              ("/api/v1/releases", {"sandbox": sandbox_id, "files": ["x"]})]
    for path, body in writes:
        response = client.post(path, headers=audrey, json=body)
        assert response.status_code == 403, path
        assert response.get_json()["error"]["code"] == "forbidden"
    # its own list of sandboxes is an engineer's: an auditor has none (the running ones of
    # everyone are at /api/v1/oversight/sandboxes)
    assert client.get("/api/v1/sandboxes", headers=audrey).status_code == 403
    denied = [e for e in recorded(core, AuditAction.REQUEST_DENIED) if e.actor == "audrey"]
    assert len(denied) == 4
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}",
                      headers=bearer(people["alice"])).get_json()["status"] == "running"


def test_an_auditor_token_reads_anyones_release_request_and_cannot_decide_it(
        app: Flask, client: FlaskClient, core: Sealroom, fake_backend: FakeBackend,
        people: dict[str, str]) -> None:
    _, release_id = _released(app, client, core, fake_backend, people)
    audrey = bearer(people["audrey"])
    listed = client.get("/api/v1/releases", headers=audrey)
    assert listed.status_code == 200
    assert [r["id"] for r in listed.get_json()["releases"]] == [release_id]
    [listing] = recorded(core, AuditAction.RELEASE_LIST,
                         request_id=listed.headers["X-Request-Id"])
    assert listing.actor == "audrey" and json.loads(listing.details)["shown"] == 1
    assert client.get("/api/v1/releases?status=released",
                      headers=audrey).get_json()["releases"] == []

    shown = client.get(f"/api/v1/releases/{release_id}", headers=audrey)
    assert shown.status_code == 200
    body = shown.get_json()
    assert (body["id"], body["requester"], body["status"]) == (release_id, "alice",
                                                                "in_review")
    [view] = recorded(core, AuditAction.RELEASE_VIEW, request_id=shown.headers["X-Request-Id"])
    assert (view.actor, view.target) == ("audrey", f"release:{release_id}")
    # the files' contents are sandbox bytes: not while the request is open (as on the page)
    assert client.get(f"/api/v1/releases/{release_id}/files/1/view",
                      headers=audrey).status_code == 403
    for action in ("approve", "reject", "withdraw"):
        response = client.post(f"/api/v1/releases/{release_id}/{action}", headers=audrey,
                               json={"comment": "x", "reason": "x"})
        assert response.status_code == 403, action
    assert client.get(f"/api/v1/releases/{release_id}/bundle",
                      headers=audrey).status_code == 403
    assert client.get(f"/api/v1/releases/{release_id}", headers=bearer(
        people["alice"])).get_json()["status"] == "in_review"
    assert _spent(core, "audrey") == []


def test_an_auditor_token_reads_the_log_and_outbox_names_on_the_auditors_own_budget(
        client: FlaskClient, core: Sealroom, fake_backend: FakeBackend,
        people: dict[str, str]) -> None:
    """The sandbox's output, as on the auditor's page: through the owner's paid paths, each
    showing charged to the auditor (not the owner) and audited under the auditor's name."""
    sandbox_id = _finished(core, fake_backend, client, people["alice"])
    audrey = bearer(people["audrey"])
    log = client.get(f"/api/v1/sandboxes/{sandbox_id}/logs?format=json", headers=audrey)
    assert log.status_code == 200 and LOG_LINE in log.get_json()["log"]
    outbox = client.get(f"/api/v1/sandboxes/{sandbox_id}/outbox", headers=audrey)
    assert outbox.status_code == 200
    assert [f["name"] for f in outbox.get_json()["files"]] == [OUTBOX_NAME]
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}/metrics",
                      headers=audrey).status_code == 200
    assert {i.channel for i in _spent(core, "audrey")} == {"log", "outbox_name"}
    assert _spent(core, "alice") == []
    assert any(e.actor == "audrey" for e in recorded(core, AuditAction.LOGS_VIEW))
    assert any(e.actor == "audrey" for e in recorded(core, AuditAction.OUTBOX_VIEW))
    # another engineer still reads none of it
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}/logs",
                      headers=bearer(people["erin"])).status_code == 404
