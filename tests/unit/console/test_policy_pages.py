"""The security officer's pages through HTTP: the active policy, history and diff, checking
as you type (JSON, CSRF header), dry run then activation with a reason, stopping a
running sandbox the active policy forbids; and the console's sessions ending as the policy
says, the log budget in the live view. The dry run's diff and restore: test_policy_editor_pages."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from console.core import Sealroom
from console.services import policy as policy_service
from tests.helpers import bearer, change_policy, csrf_from, login, recorded


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("sam", "security_officer"), ("audrey", "auditor")]}


def _html(response: Any) -> str:
    return str(response.get_data(as_text=True))


def test_officer_lands_on_the_policy_page(client: FlaskClient, core: Sealroom,
                                          people: dict[str, str]) -> None:
    login(client, "sam")
    page = client.get("/", follow_redirects=True)
    html = _html(page)
    assert page.request.path == "/policy"
    assert "version 2" in html and "dataset demo registered" in html
    assert "Edit policy" in html and "Restore 1" in html
    assert recorded(core, "policy:policy:view")[-1].actor == "sam"


def test_auditor_reads_but_cannot_edit(client: FlaskClient, people: dict[str, str]) -> None:
    login(client, "audrey")
    html = _html(client.get("/policy"))
    assert "Edit policy" not in html and "Restore" not in html
    assert client.get("/policy/edit").status_code == 403
    assert client.get("/policy/versions/1").status_code == 200


def test_engineer_cannot_see_the_policy_pages(client: FlaskClient,
                                              people: dict[str, str]) -> None:
    login(client, "alice")
    assert client.get("/policy").status_code == 403


def test_diff_between_versions(client: FlaskClient, core: Sealroom,
                               people: dict[str, str]) -> None:
    login(client, "sam")
    html = _html(client.get("/policy?a=1&b=2"))
    assert '<span class="del">-datasets: {}</span>' in html
    assert '<span class="add">+  demo:</span>' in html
    assert "identical" in _html(client.get("/policy?a=2&b=2"))
    assert "no policy version 9" in _html(client.get("/policy?a=1&b=9"))


def test_check_as_you_type_needs_the_csrf_header(client: FlaskClient,
                                                 people: dict[str, str]) -> None:
    login(client, "sam")
    page = _html(client.get("/policy/edit"))
    token = re.search(r'data-csrf="([^"]+)"', page)
    assert token and 'id="policy-text"' in page
    text = policy_service.active_version(client.application.extensions["sealroom"]).text
    bad = text.replace("max_pids: 512", "max_pids: 5")
    assert client.post("/policy/check", json={"yaml": bad}).status_code == 400  # no CSRF
    response = client.post("/policy/check", json={"yaml": bad},
                           headers={"X-CSRFToken": token.group(1)})
    body = response.get_json()
    line = next(n for n, row in enumerate(bad.splitlines(), 1) if "max_pids: 5" in row)
    assert body["valid"] is False
    assert body["problems"] == [{"line": line, "path": "resources.default.max_pids",
                                 "message": "must be greater than or equal to 16"}]
    good = client.post("/policy/check", json={"yaml": text},
                       headers={"X-CSRFToken": token.group(1)}).get_json()
    assert (good["valid"], good["problems"]) == (True, [])
    assert [w["path"] for w in good["warnings"]] == ["release.approvals_needed"]  # no approvers


def _dry_run(client: FlaskClient, text: str) -> Any:
    return client.post("/policy/dry-run", data={
        "csrf_token": csrf_from(client, "/policy/edit"), "yaml": text, "base_version": "2"})


def test_edit_dry_run_activate(client: FlaskClient, core: Sealroom,
                               people: dict[str, str]) -> None:
    sandbox_id = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]), json={
        "dataset": "demo", "example": "mlp", "limits": {"cpus": 2}}).get_json()["id"]
    login(client, "sam")
    text = policy_service.active_version(core).text
    invalid = _dry_run(client, text.replace("max_cpus: 2.0", "max_cpus: -2"))
    assert invalid.status_code == 400
    assert "resources.roles.engineer.max_cpus: must be greater than 0" in _html(invalid)

    new = text.replace("max_cpus: 2.0", "max_cpus: 1.5")
    dry = _dry_run(client, new)
    html = _html(dry)
    assert dry.status_code == 200 and "Activate version 3" in html
    assert sandbox_id in html and "resources.roles.engineer.max_cpus" in html
    sha = re.search(r'name="dry_run_sha256" value="([0-9a-f]{64})"', html)
    assert sha
    token = csrf_from(client, "/policy/edit")
    form = {"csrf_token": token, "yaml": new, "base_version": "2",
            "dry_run_sha256": sha.group(1)}

    no_reason = client.post("/policy/activate", data={**form, "reason": ""})
    assert no_reason.status_code == 400 and core.policy.version == 2
    edited = client.post("/policy/activate", data={**form, "reason": "x",
                                                   "yaml": new + "\n# changed\n"})
    assert edited.status_code == 409 and "changed since its dry run" in _html(edited)
    assert core.policy.version == 2

    done = client.post("/policy/activate", data={**form, "reason": "fewer CPUs"},
                       follow_redirects=True)
    html = _html(done)
    assert "Policy version 3 is active" in html
    assert core.policy.version == 3 and core.policy.resources.for_role("engineer").max_cpus == 1.5
    assert recorded(core, "policy:policy:activate")[-1].reason == "fewer CPUs"

    # the running sandbox the new version forbids is listed, and the officer stops it
    listed = re.search(r'<table class="list" id="forbidden">(.*?)</table>', html, re.S)
    assert listed and sandbox_id in listed.group(1)
    stopped = client.post(f"/policy/sandboxes/{sandbox_id}/stop",
                          data={"csrf_token": csrf_from(client, "/policy")},
                          follow_redirects=True)
    # the message says what was recorded: the stop, by whom, and why
    assert f"Sandbox {sandbox_id} stopped by sam: policy version 3 forbids it" in _html(stopped)
    assert "None: every running sandbox is within the active policy." in _html(stopped)
    event = recorded(core, "sandbox:sandbox:stop")[-1]
    details = json.loads(event.details)
    assert event.actor == "sam" and (details["rule"], details["policy_version"]) == \
        ("resources.roles.engineer.max_cpus", 3)
    status = client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(people["alice"]))
    assert status.get_json()["status"] == "stopped"


def test_the_officer_cannot_stop_an_allowed_sandbox(client: FlaskClient, core: Sealroom,
                                                    people: dict[str, str]) -> None:
    sandbox_id = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]), json={
        "dataset": "demo", "example": "mlp"}).get_json()["id"]
    login(client, "sam")
    response = client.post(f"/policy/sandboxes/{sandbox_id}/stop",
                           data={"csrf_token": csrf_from(client, "/policy")},
                           follow_redirects=True)
    assert "the active policy allows this sandbox" in _html(response)
    assert recorded(core, "sandbox:sandbox:stop")[-1].outcome == "denied"
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(people["alice"])
                      ).get_json()["status"] == "running"


# --- sessions and logs, as the policy says -------------------------------------------------


@pytest.mark.parametrize("key, rule", [("seen_at", "sessions.idle_timeout_s"),
                                       ("login_at", "sessions.absolute_timeout_s")])
def test_sessions_end_as_the_policy_says(client: FlaskClient, core: Sealroom,
                                         people: dict[str, str], key: str, rule: str) -> None:
    change_policy(core, {"sessions": {"idle_timeout_s": 60, "absolute_timeout_s": 600}})
    login(client, "alice")
    assert client.get("/sandboxes").status_code == 200
    with client.session_transaction() as session:
        session[key] = time.time() - (61 if key == "seen_at" else 601)
    response = client.get("/sandboxes")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert "Your session has ended" in _html(client.get("/login"))
    assert client.get("/sandboxes").status_code == 302  # logged out for good
    event = recorded(core, "auth:session:logout")[-1]
    assert event.actor == "alice" and json.loads(event.details)["rule"] == rule


def test_polling_does_not_keep_a_session_alive(client: FlaskClient, core: Sealroom,
                                               people: dict[str, str]) -> None:
    change_policy(core, {"sessions": {"idle_timeout_s": 60}})
    sandbox_id = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]), json={
        "dataset": "demo", "example": "mlp"}).get_json()["id"]
    login(client, "alice")
    with client.session_transaction() as session:
        session["seen_at"] = time.time() - 50
    assert client.get(f"/sandboxes/{sandbox_id}/live").status_code == 200
    with client.session_transaction() as session:
        assert session["seen_at"] < time.time() - 45  # the poll did not count as activity
        session["seen_at"] = time.time() - 61
    expired = client.get(f"/sandboxes/{sandbox_id}/live")
    assert expired.status_code == 401
    assert expired.get_json()["error"]["code"] == "session_expired"


def test_session_cookie_lasts_the_policys_absolute_timeout(client: FlaskClient, core: Sealroom,
                                                           people: dict[str, str]) -> None:
    from email.utils import parsedate_to_datetime

    change_policy(core, {"sessions": {"idle_timeout_s": 300, "absolute_timeout_s": 3600}})
    cookie = login(client, "alice").headers["Set-Cookie"]
    expires = re.search(r"Expires=([^;]+)", cookie)
    assert expires
    remaining = parsedate_to_datetime(expires.group(1)).timestamp() - time.time()
    assert 3500 < remaining <= 3600


def test_live_view_says_when_the_log_budget_is_used_up(client: FlaskClient, core: Sealroom,
                                                       people: dict[str, str],
                                                       fake_backend: Any) -> None:
    change_policy(core, {"disclosure": {"per_sandbox_bytes": 256}})
    sandbox_id = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]), json={
        "dataset": "demo", "example": "mlp"}).get_json()["id"]
    fake_backend.emit(fake_backend.handle_of(sandbox_id), b"y" * 300)
    login(client, "alice")
    first = client.get(f"/sandboxes/{sandbox_id}/live").get_json()
    assert (first["log"][:10], first["offset"]) == ("epoch 1/1\n", 256)
    second = client.get(f"/sandboxes/{sandbox_id}/live?offset=256").get_json()
    assert second["rule"] == "disclosure.per_sandbox_bytes"
    assert "disclosure budget of 256 bytes" in second["log_refused"]
    assert second["sandbox"]["status"] == "running"
    quiet = client.get(f"/sandboxes/{sandbox_id}/live?offset=256&log=0").get_json()
    assert "log_refused" not in quiet
