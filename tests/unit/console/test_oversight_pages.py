"""The security officer's page and API of every running sandbox, through HTTP: every user's
live sandbox with its owner, datasets, kind, image, age and what the active policy says of
it; the officer's Stop (the policy's words for a sandbox it forbids, the officer's reason for
one it allows), recorded as every stop is; read-only for auditors, closed to other roles.

Which of the two this view of sandboxes is (the product's one rule): only text the console
composed itself (ids, user names, dataset names and versions, image names, statuses, counts
and times). A line the sandbox printed and a file it wrote are on neither the page nor the
API's answer, and reading the list spends nobody's disclosure budget.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import select

from audit.events import AuditAction
from console.core import Sealroom
from console.models import DisclosureItem
from tests.helpers import bearer, change_policy, csrf_from, login, recorded, supervisor_pass
from tests.mocking import FakeBackend, ScriptedOutcome

PLANTED_LOG = "PLANTED-LOG-LINE-from-the-sandbox"
PLANTED_FILE = "PLANTED-outbox-name.txt"


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str,
           fake_backend: FakeBackend) -> dict[str, str]:
    fake_backend.default_outcome = ScriptedOutcome(stays_running=True)
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("erin", "engineer"), ("bob", "approver"),
        ("sam", "security_officer"), ("audrey", "auditor"), ("root", "admin")]}


def _as(app: Flask, name: str) -> FlaskClient:
    client = app.test_client()
    login(client, name)
    return client


def _launched(client: FlaskClient, token: str, **limits: float) -> str:
    created = client.post("/api/v1/sandboxes", headers=bearer(token), json={
        "dataset": "demo", "example": "mlp", "limits": {"timeout_s": 3600, **limits}})
    assert created.status_code == 201, created.get_json()
    return str(created.get_json()["id"])


def _row(html: str, sandbox_id: str) -> str:
    found = re.search(rf'<tr id="running-{sandbox_id}">(.*?)</tr>', html, re.S)
    assert found, f"{sandbox_id} is not listed"
    return found.group(1)


def _status(client: FlaskClient, token: str, sandbox_id: str) -> str:
    return str(client.get(f"/api/v1/sandboxes/{sandbox_id}",
                          headers=bearer(token)).get_json()["status"])


def test_the_officer_sees_every_users_running_sandbox_and_only_console_text(
        app: Flask, client: FlaskClient, core: Sealroom, fake_backend: FakeBackend,
        people: dict[str, str]) -> None:
    mine = _launched(client, people["alice"])
    theirs = _launched(client, people["erin"])
    ended = _launched(client, people["alice"])
    for sandbox_id in (mine, theirs):  # what the sandboxes wrote
        fake_backend.emit(fake_backend.handle_of(sandbox_id), f"{PLANTED_LOG}\n".encode())
        (fake_backend.storage.outbox(sandbox_id) / PLANTED_FILE).write_bytes(b"x")
    client.post(f"/api/v1/sandboxes/{ended}/stop", headers=bearer(people["alice"]))
    sam = _as(app, "sam")

    page = sam.get("/oversight/sandboxes")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "<title>Running sandboxes" in html
    assert 'href="/oversight/sandboxes"' in html  # in the officer's navigation
    assert ended not in html
    for sandbox_id, owner in ((mine, "alice"), (theirs, "erin")):
        row = _row(html, sandbox_id)
        assert f'href="/lineage/sandboxes/{sandbox_id}"' in row  # the id is a link
        assert f"<td>{owner}</td>" in row and "demo@1" in row
        assert "sealroom/base:test" in row
        assert "single, runc" in row and "allows it" in row
        assert 'data-confirm="Stop ' in html and 'name="reason" required' in row
    assert PLANTED_LOG not in html and PLANTED_FILE not in html

    api = client.get("/api/v1/oversight/sandboxes", headers=bearer(people["sam"]))
    body = api.get_json()
    assert api.status_code == 200 and body["policy_version"] == core.policy.version
    listed = {s["id"]: s for s in body["sandboxes"]}
    assert set(listed) == {mine, theirs}
    assert listed[theirs]["owner"] == "erin" and listed[theirs]["forbidden"] is None
    assert listed[theirs]["datasets"] == [{"name": "demo", "version": 1}]
    assert (listed[theirs]["kind"], listed[theirs]["runtime"]) == ("single", "runc")
    assert listed[theirs]["time_limit_s"] == 3600 and listed[theirs]["age_s"] >= 0
    assert PLANTED_LOG not in api.get_data(as_text=True)
    assert PLANTED_FILE not in api.get_data(as_text=True)

    # every listing is audited, with how many it showed; nobody's budget was spent
    lists = [e for e in recorded(core, AuditAction.SANDBOX_LIST) if e.actor == "sam"]
    assert len(lists) == 2 and json.loads(lists[-1].details)["shown"] == 2
    with core.read() as session:
        assert session.exec(select(DisclosureItem)).all() == []


def test_the_officer_stops_an_allowed_sandbox_only_with_a_reason(
        app: Flask, client: FlaskClient, core: Sealroom, people: dict[str, str]) -> None:
    sandbox_id = _launched(client, people["alice"])
    sam = _as(app, "sam")
    token = csrf_from(sam, "/oversight/sandboxes")
    refused = sam.post(f"/oversight/sandboxes/{sandbox_id}/stop",
                       data={"csrf_token": token, "reason": "  "}, follow_redirects=True)
    assert "the active policy allows this sandbox: say why you stop it" in \
        refused.get_data(as_text=True)
    assert recorded(core, "sandbox:sandbox:stop")[-1].outcome == "denied"
    assert _status(client, people["alice"], sandbox_id) == "running"

    done = sam.post(f"/oversight/sandboxes/{sandbox_id}/stop",
                    data={"csrf_token": token, "reason": "mining, not training"},
                    follow_redirects=True)
    html = done.get_data(as_text=True)
    said = f"Sandbox {sandbox_id} stopped by sam (security officer): mining, not training."
    assert said in html and "No sandbox is running." in html
    event = recorded(core, "sandbox:sandbox:stop")[-1]
    details = json.loads(event.details)
    assert (event.actor, event.outcome, event.target) == ("sam", "ok", f"sandbox:{sandbox_id}")
    assert (details["owner"], details["officer_reason"], details["allowed"]) == \
        ("alice", "mining, not training", True)
    # the owner sees it stopped, with the officer's words
    status = client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(people["alice"]))
    assert status.get_json()["status"] == "stopped"
    assert "mining, not training" in status.get_json()["reason"]
    # stopping twice is fine
    again = sam.post(f"/oversight/sandboxes/{sandbox_id}/stop", data={"csrf_token": token})
    assert again.status_code == 303


def test_a_sandbox_the_policy_forbids_is_stopped_in_the_policys_words(
        app: Flask, client: FlaskClient, core: Sealroom, people: dict[str, str]) -> None:
    sandbox_id = _launched(client, people["erin"], cpus=2)
    version = change_policy(core, {"resources": {"roles": {"engineer": {"max_cpus": 1.0}}}})
    sam = _as(app, "sam")
    html = sam.get("/oversight/sandboxes").get_data(as_text=True)
    row = _row(html, sandbox_id)
    assert "forbids it" in row and "resources.roles.engineer.max_cpus" in row
    assert 'name="reason"' not in row  # the policy's words are the reason
    policy_page = sam.get("/policy").get_data(as_text=True)
    assert 'id="all-running" href="/oversight/sandboxes"' in policy_page \
        or 'href="/oversight/sandboxes" id="all-running"' in policy_page

    response = client.post(f"/api/v1/oversight/sandboxes/{sandbox_id}/stop",
                           headers=bearer(people["sam"]))
    assert response.status_code == 200 and response.get_json()["status"] == "stopped"
    assert response.get_json()["reason"].startswith(
        f"stopped by sam: policy version {version} forbids it")
    details = json.loads(recorded(core, "sandbox:sandbox:stop")[-1].details)
    assert (details["rule"], details["policy_version"]) == \
        ("resources.roles.engineer.max_cpus", version)


def test_the_api_stop_needs_a_reason_for_an_allowed_sandbox(
        client: FlaskClient, core: Sealroom, people: dict[str, str]) -> None:
    sandbox_id = _launched(client, people["alice"])
    url = f"/api/v1/oversight/sandboxes/{sandbox_id}/stop"
    sam = bearer(people["sam"])
    missing = client.post(url, headers=sam, json={})
    assert missing.status_code == 400
    assert missing.get_json()["error"]["message"] == \
        "the active policy allows this sandbox: say why you stop it"
    assert client.post(url, headers=sam, json={"reason": 3}).status_code == 400
    assert client.post(url, headers=sam, json={"reason": "x" * 501}).status_code == 400
    assert client.post("/api/v1/oversight/sandboxes/sb-nope/stop", headers=sam,
                       json={"reason": "x"}).status_code == 404
    assert _status(client, people["alice"], sandbox_id) == "running"
    done = client.post(url, headers=sam, json={"reason": "a leak suspected"})
    assert done.status_code == 200 and done.get_json()["status"] == "stopped"


def test_auditors_read_the_page_without_a_stop_and_other_roles_do_not_see_it(
        app: Flask, client: FlaskClient, core: Sealroom, people: dict[str, str]) -> None:
    sandbox_id = _launched(client, people["alice"])
    audrey = _as(app, "audrey")
    html = audrey.get("/oversight/sandboxes").get_data(as_text=True)
    row = _row(html, sandbox_id)
    assert f'href="/sandboxes/{sandbox_id}"' in row  # the auditor's read-only sandbox page
    assert "Stop" not in row and "Read only." in html
    token = csrf_from(audrey, "/oversight/sandboxes")
    assert audrey.post(f"/oversight/sandboxes/{sandbox_id}/stop",
                       data={"csrf_token": token, "reason": "x"}).status_code == 403
    assert client.get("/api/v1/oversight/sandboxes",
                      headers=bearer(people["audrey"])).status_code == 200
    assert client.post(f"/api/v1/oversight/sandboxes/{sandbox_id}/stop",
                       headers=bearer(people["audrey"]),
                       json={"reason": "x"}).status_code == 403
    for name in ("alice", "bob", "root"):
        other = _as(app, name)
        assert other.get("/oversight/sandboxes").status_code == 403, name
        assert 'href="/oversight/sandboxes"' not in other.get("/account").get_data(
            as_text=True), name
        assert client.get("/api/v1/oversight/sandboxes",
                          headers=bearer(people[name])).status_code == 403, name
    assert _status(client, people["alice"], sandbox_id) == "running"


def test_the_cli_lists_and_stops_as_the_officer(
        served: str, client: FlaskClient, people: dict[str, str]) -> None:
    from click.testing import CliRunner

    from console.cli import main

    sandbox_id = _launched(client, people["alice"])
    sam = ["--url", served, "--token", people["sam"]]
    listed = CliRunner().invoke(main, ["sandbox", "running", *sam])
    assert listed.exit_code == 0, listed.output
    assert sandbox_id in listed.output and "alice" in listed.output
    assert "demo@1" in listed.output and "allowed" in listed.output
    assert "1 sandbox running, starting or stopping; active policy version" in listed.output

    refused = CliRunner().invoke(main, ["sandbox", "stop-any", sandbox_id, *sam])
    assert refused.exit_code == 1
    assert "the active policy allows this sandbox: say why you stop it" in refused.output
    stopped = CliRunner().invoke(main, ["sandbox", "stop-any", sandbox_id, "--reason",
                                        "quota review", *sam])
    assert stopped.exit_code == 0, stopped.output
    assert stopped.output.strip() == \
        f"{sandbox_id} stopped: stopped by sam (security officer): quota review"
    engineer = CliRunner().invoke(main, ["sandbox", "running", "--url", served,
                                         "--token", people["alice"]])
    assert engineer.exit_code == 1 and "your role may not" in engineer.output


def test_a_cluster_is_listed_with_its_ranks_and_members(
        app: Flask, client: FlaskClient, core: Sealroom, people: dict[str, str]) -> None:
    created = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]), json={
        "dataset": "demo", "example": "mlp-horovod", "kind": "mpi", "ranks": 2})
    assert created.status_code == 201, created.get_json()
    sandbox_id = created.get_json()["id"]
    supervisor_pass(core)  # the supervisor notes each member's state
    html = _as(app, "sam").get("/oversight/sandboxes").get_data(as_text=True)
    row = _row(html, sandbox_id)
    assert "cluster of 2" in row and "sealroom/horovod:test" in row
    body = client.get("/api/v1/oversight/sandboxes", headers=bearer(people["sam"])).get_json()
    [listed] = body["sandboxes"]
    assert (listed["kind"], listed["ranks"]) == ("mpi", 2)
    assert [m["state"] for m in listed["members"]] == ["running", "running"]
    assert "(running, running)" in row
