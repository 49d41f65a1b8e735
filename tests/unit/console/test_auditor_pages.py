"""Auditors through HTTP: anyone's sandbox and release pages, read-only; the audit log with
reads hidden and ids as links; the audit public key as a page; counts by event id; what the
platform does by itself recorded as `system`.

Which of the two each view of sandbox output is (the product's one rule): the sandbox page's
facts (status, limits, hashes, positions, counts, lineage) are the console's own words; its
log, outbox names and metrics reach an auditor only through the owner's paid paths, spending
the auditor's own disclosure budget, each showing audited under the auditor's name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import select

from audit.events import Actor, AuditAction, Outcome
from audit.keys import PublicKeys
from console.core import Sealroom
from console.models import DisclosureItem, Sandbox
from console.services import audit_log
from console.services import outbox as outbox_service
from sandbox.training_metrics import MARKER
from tests.helpers import bearer, csrf_from, login, recorded, supervisor_pass
from tests.mocking import FakeBackend, ScriptedOutcome

LOG_LINE = "PLANTED log line from the sandbox"
OUTBOX_NAME = "metrics.json"


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("erin", "engineer"), ("bob", "approver"),
        ("carol", "approver"), ("audrey", "auditor"), ("root", "admin")]}


def _as(app: Flask, name: str) -> FlaskClient:
    client = app.test_client()
    login(client, name)
    return client


def _launched(client: FlaskClient, token: str) -> str:
    created = client.post("/api/v1/sandboxes", headers=bearer(token),
                          json={"dataset": "demo", "example": "mlp"})
    assert created.status_code == 201, created.get_json()
    return str(created.get_json()["id"])


def _finished(core: Sealroom, fake_backend: FakeBackend, client: FlaskClient,
              token: str) -> str:
    sandbox_id = _launched(client, token)
    handle = fake_backend.handle_of(sandbox_id)
    fake_backend.emit(handle, f"{LOG_LINE}\n".encode())
    (fake_backend.storage.outbox(sandbox_id) / OUTBOX_NAME).write_bytes(b'{"accuracy": 0.9}')
    fake_backend.finish(handle, exit_code=0)
    supervisor_pass(core)
    outbox_service.schedule_manifest(core, sandbox_id).result(timeout=60)
    return sandbox_id


def _html(client: FlaskClient, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, (url, response.status_code)
    return response.get_data(as_text=True)


def _number(pattern: str, html: str) -> int:
    found = re.search(pattern, html)
    assert found, pattern
    return int(found.group(1))


def _spent_by(core: Sealroom, user: str) -> list[DisclosureItem]:
    with core.read() as session:
        return list(session.exec(select(DisclosureItem).where(
            DisclosureItem.user == user)).all())


def _released(app: Flask, client: FlaskClient, core: Sealroom, fake_backend: FakeBackend,
              people: dict[str, str]) -> tuple[str, str]:
    sandbox_id = _finished(core, fake_backend, client, people["alice"])
    alice = _as(app, "alice")
    _html(alice, f"/sandboxes/{sandbox_id}")  # alice lists her outbox (paid by her)
    response = alice.post(f"/sandboxes/{sandbox_id}/release", data={
        "csrf_token": csrf_from(alice, f"/sandboxes/{sandbox_id}"), "files": OUTBOX_NAME,
        "justification": "the trained weights, for the paper"})
    assert response.status_code == 302, response.get_data(as_text=True)
    return sandbox_id, response.headers["Location"].rsplit("/", 1)[1]


# --- the sandbox page, read-only -------------------------------------------------------------


def test_an_auditor_reads_anyones_sandbox_page_with_no_action_offered(
        app: Flask, client: FlaskClient, core: Sealroom, fake_backend: FakeBackend,
        people: dict[str, str]) -> None:
    sandbox_id = _finished(core, fake_backend, client, people["alice"])
    audrey = _as(app, "audrey")
    html = _html(audrey, f"/sandboxes/{sandbox_id}")
    assert 'id="read-only"' in html and "alice" in html
    for action in ('id="stop-form"', 'id="release-form"', 'id="build-on"', 'id="ssh-command"'):
        assert action not in html, action
    assert f"/audit/timeline/sandbox/{sandbox_id}" in html
    [view] = [e for e in recorded(core, AuditAction.SANDBOX_VIEW) if e.actor == "audrey"]
    assert json.loads(view.details)["owner"] == "alice"

    # The outbox's names: paid for by the auditor (nobody had seen them), audited as hers.
    assert OUTBOX_NAME in html
    assert {(i.channel, i.user) for i in _spent_by(core, "audrey")} == {("outbox_name",
                                                                         "audrey")}
    assert any(e.actor == "audrey" for e in recorded(core, AuditAction.OUTBOX_VIEW))

    # The log: through the owner's paid, audited path, charged to the auditor.
    live = audrey.get(f"/sandboxes/{sandbox_id}/live")
    assert live.status_code == 200
    assert LOG_LINE in live.get_json()["log"]
    assert "log" in {i.channel for i in _spent_by(core, "audrey")}
    assert any(e.actor == "audrey" for e in recorded(core, AuditAction.LOGS_VIEW))


def test_an_auditor_cannot_act_on_a_sandbox(
        app: Flask, client: FlaskClient, core: Sealroom, fake_backend: FakeBackend,
        people: dict[str, str]) -> None:
    fake_backend.default_outcome = ScriptedOutcome(stays_running=True)
    sandbox_id = _launched(client, people["alice"])
    audrey = _as(app, "audrey")
    html = _html(audrey, f"/sandboxes/{sandbox_id}")
    assert 'id="stop-form"' not in html
    token = csrf_from(audrey, f"/sandboxes/{sandbox_id}")
    assert audrey.post(f"/sandboxes/{sandbox_id}/stop",
                       data={"csrf_token": token}).status_code == 403
    assert audrey.post(f"/sandboxes/{sandbox_id}/release", data={
        "csrf_token": token, "files": "#1", "justification": "x"}).status_code == 403
    with core.read() as session:
        row = session.get(Sandbox, sandbox_id)
    assert row is not None and row.status == "running"
    # an auditor's token reads it through the API (tests/unit/console/test_auditor_api.py),
    # and acts on it no more than the pages let them
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}",
                      headers=bearer(people["audrey"])).status_code == 200
    assert client.post(f"/api/v1/sandboxes/{sandbox_id}/stop",
                       headers=bearer(people["audrey"])).status_code == 403


def test_other_roles_still_do_not_see_someone_elses_sandbox(
        app: Flask, client: FlaskClient, people: dict[str, str]) -> None:
    sandbox_id = _launched(client, people["alice"])
    _html(_as(app, "erin"), f"/sandboxes/{sandbox_id}", 404)  # another engineer
    _html(_as(app, "bob"), f"/sandboxes/{sandbox_id}", 403)  # an approver
    assert _as(app, "bob").get(f"/sandboxes/{sandbox_id}/live").status_code == 403


# --- the release page, read-only -------------------------------------------------------------


def test_an_auditor_reads_anyones_release_page_with_no_action_offered(
        app: Flask, client: FlaskClient, core: Sealroom, fake_backend: FakeBackend,
        people: dict[str, str]) -> None:
    sandbox_id, release_id = _released(app, client, core, fake_backend, people)
    audrey = _as(app, "audrey")
    listing = _html(audrey, "/releases")
    assert "All release requests" in listing and f"/releases/{release_id}" in listing
    html = _html(audrey, f"/releases/{release_id}")
    assert "the trained weights, for the paper" in html  # the justification, a person's words
    assert 'id="read-only"' in html and f"/sandboxes/{sandbox_id}" in html
    for action in ('id="approve"', 'id="reject"', 'id="withdraw"', 'id="download"',
                   'class="file-view"'):
        assert action not in html, action
    assert any(e.actor == "audrey" and e.target == f"release:{release_id}"
               for e in recorded(core, AuditAction.RELEASE_VIEW))
    token = csrf_from(audrey, f"/releases/{release_id}")
    for verb in ("approve", "reject", "withdraw"):
        assert audrey.post(f"/releases/{release_id}/{verb}",
                           data={"csrf_token": token, "reason": "x"}).status_code == 403
    # rendered file views are sandbox bytes: not before the release, as for the requester
    _html(audrey, f"/releases/{release_id}/files/1", 403)
    assert [e.outcome for e in recorded(core, AuditAction.RELEASE_FILE_VIEW)
            if e.actor == "audrey"] == ["denied"]

    # once released the files are out anyway: the auditor may look, as the requester may
    for approver in ("bob", "carol"):
        assert client.post(f"/api/v1/releases/{release_id}/approve",
                           headers=bearer(people[approver])).status_code == 200
    assert 'class="file-view"' in _html(audrey, f"/releases/{release_id}")
    _html(audrey, f"/releases/{release_id}/files/1")
    assert [e.outcome for e in recorded(core, AuditAction.RELEASE_FILE_VIEW)
            if e.actor == "audrey"] == ["denied", "ok"]


# --- the audit log ---------------------------------------------------------------------------


def _seed_reads_and_writes(core: Sealroom) -> None:
    who = Actor("eve", "engineer", "session", "10.0.0.9")
    core.record(who, AuditAction.SANDBOX_VIEW, target="sandbox:sb-seen")
    core.record(who, AuditAction.SANDBOX_LIST, target="sandbox:*")
    core.record(who, AuditAction.REQUEST_SERVE, target="GET /datasets")
    core.record(who, AuditAction.SANDBOX_LAUNCH, target="sandbox:sb-made")
    core.record(who, AuditAction.REQUEST_SERVE, target="POST /projects",
                outcome=Outcome.DENIED)


def test_read_actions_come_from_the_enumeration() -> None:
    assert set(audit_log.READ_ACTIONS) == {
        a.value for a in AuditAction if a.value.split(":")[-1] in ("view", "read", "list")}
    assert AuditAction.SANDBOX_VIEW in audit_log.READ_ACTIONS
    assert AuditAction.RELEASE_APPROVE not in audit_log.READ_ACTIONS


def test_hide_reads_leaves_out_views_lists_and_served_gets(
        app: Flask, client: FlaskClient, core: Sealroom, people: dict[str, str]) -> None:
    _seed_reads_and_writes(core)
    audrey = _as(app, "audrey")
    everything = _html(audrey, "/audit?actor=eve")
    assert "sandbox:sb-seen" in everything and "GET /datasets" in everything
    html = _html(audrey, "/audit?actor=eve&hide_reads=1")
    assert "sandbox:sb-made" in html and "POST /projects" in html
    assert "sandbox:sb-seen" not in html and "GET /datasets" not in html
    assert 'name="hide_reads" value="1" id="hide-reads" checked' in html
    body = client.get("/api/v1/audit/events?actor=eve&hide_reads=1",
                      headers=bearer(people["audrey"])).get_json()
    assert [e["action"] for e in body["events"]] == ["console:request:serve",
                                                      "sandbox:sandbox:launch"]
    assert body["filters"]["hide_reads"] == "1"
    assert client.get("/api/v1/audit/events?hide_reads=yes",
                      headers=bearer(people["audrey"])).status_code == 400
    # the filter is recorded with the read it made
    [last] = [e for e in recorded(core, AuditAction.AUDIT_VIEW) if e.actor == "audrey"][-1:]
    assert json.loads(last.details)["filters"]["hide_reads"] == "1"


def test_a_timeline_hides_reads_on_request(
        app: Flask, client: FlaskClient, core: Sealroom, people: dict[str, str]) -> None:
    sandbox_id = _launched(client, people["alice"])
    core.record(Actor("alice", "engineer", "session"), AuditAction.SANDBOX_VIEW,
                target=f"sandbox:{sandbox_id}")
    audrey = _as(app, "audrey")
    full = _html(audrey, f"/audit/timeline/sandbox/{sandbox_id}")
    assert "sandbox:sandbox:view" in full and 'id="object-page"' in full
    short = _html(audrey, f"/audit/timeline/sandbox/{sandbox_id}?hide_reads=1")
    assert "sandbox:sandbox:view" not in short and "sandbox:sandbox:launch" in short
    hidden = re.search(r"\((\d+) hidden\)", short)
    assert hidden and int(hidden.group(1)) >= 1


def test_ids_in_events_are_links(app: Flask, client: FlaskClient, core: Sealroom,
                                 people: dict[str, str]) -> None:
    core.record(Actor("eve", "engineer", "session"), AuditAction.SANDBOX_LAUNCH,
                target="sandbox:sb-linked")
    core.record(Actor("eve", "engineer", "session"), AuditAction.RELEASE_REQUEST,
                target="release:rel-linked")
    core.record(Actor.system(), AuditAction.USER_CREATE, target="user:eve")
    html = _html(_as(app, "audrey"), "/audit")
    assert 'href="/sandboxes/sb-linked"' in html
    assert 'href="/releases/rel-linked"' in html
    assert 'href="/audit?actor=eve"' in html
    # an admin reads the log but not anyone's pages: the ids lead to their timelines
    admin = _html(_as(app, "root"), "/audit")
    assert 'href="/audit/timeline/sandbox/sb-linked"' in admin
    assert 'href="/sandboxes/sb-linked"' not in admin


# --- the audit key, counts, and who did what -------------------------------------------------


def test_the_audit_public_key_is_a_page_and_a_file(
        app: Flask, core: Sealroom, people: dict[str, str]) -> None:
    audrey = _as(app, "audrey")
    assert 'href="/audit/keys"' in _html(audrey, "/audit")
    assert 'href="/audit/keys"' in _html(audrey, "/audit/chain")
    assert 'href="/audit/keys"' in _html(audrey, "/keys")
    html = _html(audrey, "/audit/keys")
    active = core.audit_public_keys()[0]
    assert active.keyid in html and "BEGIN PUBLIC KEY" in html
    pem = audrey.get(f"/audit/keys/{active.keyid}.pem")
    assert pem.status_code == 200
    assert pem.get_data(as_text=True) == core.audit_public_pem().decode()
    assert PublicKeys([pem.get_data()]).keyids == [active.keyid]
    assert audrey.get("/audit/keys/nope.pem").status_code == 404
    assert [e.actor for e in recorded(core, AuditAction.KEY_VIEW)] == ["audrey"] * 3
    _html(_as(app, "alice"), "/audit/keys", 403)


def test_the_banner_counts_by_event_id_as_the_list_does(
        app: Flask, core: Sealroom, people: dict[str, str]) -> None:
    audrey = _as(app, "audrey")
    verified = _number(r"Intact up to event #(\d+)", _html(audrey, "/audit/chain"))
    for n in range(3):
        core.record(Actor.system(), AuditAction.CONSOLE_START, target="console", n=n)
    html = _html(audrey, "/audit")
    newest = _number(r'data-newest="(\d+)"', html)
    first_row = _number(r'<td><a href="/audit/events/(\d+)"', html)
    assert first_row == newest  # the list's newest row is the banner's newest event
    start = html.index('id="chain-glance"')
    glance = html[start:html.index("</p>", start)]
    assert f"Chain intact up to event #{verified}" in glance
    assert f"{newest - verified} later events (to #{newest}) not verified since" in glance


def test_checkpoints_and_metric_drops_are_recorded_as_system(
        app: Flask, client: FlaskClient, core: Sealroom, fake_backend: FakeBackend,
        people: dict[str, str]) -> None:
    fake_backend.default_outcome = ScriptedOutcome(stays_running=True)
    sandbox_id = _launched(client, people["alice"])
    fake_backend.emit(fake_backend.handle_of(sandbox_id),
                      MARKER + b'{"step": 1, "values": {"loss": NaN}}\n')
    audrey = _as(app, "audrey")
    assert audrey.get(f"/sandboxes/{sandbox_id}/metrics").status_code == 200
    [dropped] = recorded(core, AuditAction.METRICS_DROP)
    assert (dropped.actor, dropped.actor_role) == ("system", "system")
    assert json.loads(dropped.details)["viewer"] == "audrey"
    assert dropped.request_id  # tied to the view that made the platform read the log

    before = len(core.audit_checkpoint_list())
    assert audrey.get("/audit/export").status_code == 200  # signs a checkpoint first
    assert len(core.audit_checkpoint_list()) == before + 1
    html = _html(audrey, "/audit/chain")
    checkpoints = html[html.index('id="checkpoints"'):]
    assert "<td>system</td>" in checkpoints and "audrey" not in checkpoints
    assert not recorded(core, AuditAction.AUDIT_CHECKPOINT)  # not an event, nobody's act
