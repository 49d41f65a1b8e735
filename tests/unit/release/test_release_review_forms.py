"""The approver's review through HTTP (pages and API) with the fake backend: a comment with an
approval, an empty rejection as a form error (not a refusal in the release's timeline), the
queue's justification preview and "waiting on me" count, Withdraw only while a request is
open, the sandbox page not offering files already requested, and the confirmations."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from audit.events import Actor
from console.core import Caller, Sealroom
from console.services import releases as release_service
from console.services.errors import BadRequest
from tests.helpers import (
    bearer,
    csrf_from,
    login,
    recorded,
    safetensors_bytes,
    supervisor_pass,
    wait_for_outbox,
)

MODEL = {"model.safetensors": safetensors_bytes({"w": [0.5, -1.25, 3.0]}),
         "metrics.json": json.dumps({"accuracy": 0.9, "n_test": 2000}).encode()}


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("bob", "approver"), ("carol", "approver"),
        ("dave", "approver")]}


@pytest.fixture
def finished(client: FlaskClient, people: dict[str, str], core: Sealroom,
             fake_backend: Any) -> Callable[..., str]:
    """A finished sandbox of alice's whose outbox holds these files."""

    def make(files: dict[str, bytes] | None = None) -> str:
        created = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]),
                              json={"dataset": "demo", "example": "mlp"})
        sandbox_id = str(created.get_json()["id"])
        fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
        outbox = core.settings.sandboxes_dir / sandbox_id / "outbox"
        for name, data in (MODEL if files is None else files).items():
            (outbox / name).write_bytes(data)
        supervisor_pass(core)  # after the files exist: the exit schedules the hashing
        client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(people["alice"]))
        return sandbox_id

    return make


def _request(client: FlaskClient, token: str, sandbox_id: str, files: list[str],
             justification: str = "final model for the cardiology paper") -> dict[str, Any]:
    response = client.post("/api/v1/releases", headers=bearer(token), json={
        "sandbox": sandbox_id, "files": files, "justification": justification})
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


def _logged_in(app: Flask, name: str) -> FlaskClient:
    """A browser of `name`'s own (a fresh cookie jar), logged in through the form."""
    browser = app.test_client()
    login(browser, name)
    return browser


def _timeline(core: Sealroom, release_id: str) -> list[Any]:
    return [e for e in recorded(core) if e.target == f"release:{release_id}"]


# --- approving with a comment -----------------------------------------------------------------


def test_an_approval_comment_is_kept_audited_and_shown(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str]) -> None:
    rid = _request(client, people["alice"], finished(), list(MODEL))["id"]
    by_api = client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people["bob"]),
                         json={"comment": "  checked the metrics against the protocol  "})
    assert by_api.status_code == 200
    assert by_api.get_json()["decisions"] == [{
        "approver": "bob", "decision": "approve",
        "comment": "checked the metrics against the protocol",
        "at": by_api.get_json()["decisions"][0]["at"]}]

    login(client, "carol")
    token = csrf_from(client, f"/releases/{rid}")
    by_form = client.post(f"/releases/{rid}/approve",
                          data={"csrf_token": token, "comment": "weights only, fine"})
    assert by_form.status_code == 303

    approvals = recorded(core, "release:request:approve")
    assert [(e.actor, e.outcome, e.reason) for e in approvals] == [
        ("bob", "ok", "checked the metrics against the protocol"),
        ("carol", "ok", "weights only, fine")]
    body = client.get(f"/api/v1/releases/{rid}", headers=bearer(people["alice"])).get_json()
    assert body["status"] == "released"
    assert [(d["approver"], d["comment"]) for d in body["decisions"]] == [
        ("bob", "checked the metrics against the protocol"), ("carol", "weights only, fine")]
    page = client.get(f"/releases/{rid}").get_data(as_text=True)
    decisions = page[page.index('id="decisions"'):]
    assert "<q>weights only, fine</q>" in decisions
    timeline = page[page.index('id="timeline"'):]
    assert "<strong>bob</strong> approve: checked the metrics against the protocol" in timeline


def test_an_approval_without_a_comment_is_still_an_approval(
        client: FlaskClient, people: dict[str, str], finished: Callable[..., str]) -> None:
    rid = _request(client, people["alice"], finished(), list(MODEL))["id"]
    approved = client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people["bob"]))
    assert approved.status_code == 200
    assert approved.get_json()["decisions"][0]["comment"] == ""


def test_an_over_long_comment_is_refused_before_anything_is_decided(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str]) -> None:
    rid = _request(client, people["alice"], finished(), list(MODEL))["id"]
    refused = client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people["bob"]),
                          json={"comment": "x" * 2001})
    assert refused.status_code == 400
    assert "2000" in refused.get_json()["error"]["message"]
    assert client.get(f"/api/v1/releases/{rid}", headers=bearer(people["bob"])
                      ).get_json()["approvals"] == []
    assert recorded(core, "auth:request:deny")[-1].target == f"POST /api/v1/releases/{rid}/approve"


# --- an empty rejection -----------------------------------------------------------------------


def test_an_empty_reject_is_a_form_error_not_an_event_of_the_release(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str]) -> None:
    """Where bad input is recorded: a rejection without a reason decided nothing about the
    release, so it is not in the release's timeline (that record is official: what was
    requested, checked, viewed, approved, rejected, and who was refused an action on it by
    a rule). It is still audited, at the request level, like every request refused while
    parsing: `auth:request:deny` with the request's method and path as the target (so an
    auditor finds it by actor, by action, or by target `POST /releases/<id>*`) and the
    message the approver was shown. The approver sees the error on the form, next to the
    field, with the page answering 400."""
    rid = _request(client, people["alice"], finished(), list(MODEL))["id"]
    login(client, "bob")
    token = csrf_from(client, f"/releases/{rid}")
    before = len(_timeline(core, rid))

    page = client.post(f"/releases/{rid}/reject", data={"csrf_token": token, "reason": "   "})

    assert page.status_code == 400
    html = page.get_data(as_text=True)
    assert re.search(r'<p class="field-error" id="reject-error" role="alert">Say why the '
                     r'request is rejected\.</p>', html)
    assert 'aria-invalid="true"' in html
    denied = recorded(core, "auth:request:deny")[-1]
    assert (denied.actor, denied.outcome, denied.target, denied.reason) == (
        "bob", "denied", f"POST /releases/{rid}/reject", "say why the request is rejected")
    after = _timeline(core, rid)[before:]
    assert [(e.action, e.outcome) for e in after] == [("release:request:view", "ok")]
    assert not [e for e in _timeline(core, rid) if e.action == "release:request:reject"]
    assert "(denied)" not in html[html.index('id="timeline"'):]
    state = client.get(f"/api/v1/releases/{rid}", headers=bearer(people["bob"])).get_json()
    assert state["status"] == "in_review" and state["decisions"] == []


def test_an_empty_reject_by_api_is_a_400_with_a_message_recorded_per_request(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str]) -> None:
    rid = _request(client, people["alice"], finished(), list(MODEL))["id"]
    for body in ({}, {"reason": ""}, {"reason": " \n "}):
        refused = client.post(f"/api/v1/releases/{rid}/reject", headers=bearer(people["bob"]),
                              json=body)
        assert refused.status_code == 400
        assert refused.get_json()["error"] == {
            "code": "bad_request", "message": "say why the request is rejected"}
    denied = recorded(core, "auth:request:deny")
    assert [e.target for e in denied] == [f"POST /api/v1/releases/{rid}/reject"] * 3
    assert not [e for e in _timeline(core, rid) if e.outcome != "ok"]
    # the service keeps its own check for any other caller, still outside the timeline
    with pytest.raises(BadRequest, match="say why"):
        release_service.reject(core, Caller(Actor("bob", "approver", "token"),
                                            request_id="t"), rid, "  ")
    assert not [e for e in _timeline(core, rid) if e.outcome != "ok"]
    rejected = client.post(f"/api/v1/releases/{rid}/reject", headers=bearer(people["bob"]),
                           json={"reason": "metrics need a confidence interval"})
    assert rejected.get_json()["status"] == "rejected"
    assert rejected.get_json()["decisions"][0]["comment"] == "metrics need a confidence interval"


def test_refusals_by_rule_stay_in_the_timeline(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str]) -> None:
    """A refusal decided by the rules (here: approving twice) is part of the release's
    record, unlike malformed input."""
    rid = _request(client, people["alice"], finished(), list(MODEL))["id"]
    client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people["bob"]))
    twice = client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people["bob"]))
    assert twice.status_code == 409
    assert [(e.action, e.outcome) for e in _timeline(core, rid)
            if e.outcome != "ok"] == [("release:request:approve", "denied")]


# --- the queue --------------------------------------------------------------------------------


def test_the_queue_previews_justifications_and_counts_what_waits_on_me(
        client: FlaskClient, app: Flask, people: dict[str, str],
        finished: Callable[..., str]) -> None:
    """What the queue shows is console records and people's words: the justification was
    typed by the requester into the console's form (a person, not the sandbox), and the file
    labels are the names the policy lets be shown. No sandbox bytes: the one rule holds."""
    long = "Model for the methods section.\n\nTrained on cohort 1 " + "with care " * 30
    first = _request(client, people["alice"], finished(), list(MODEL), long)["id"]
    second = _request(client, people["alice"], finished(), list(MODEL), "short one")["id"]
    third = _request(client, people["alice"], finished(), list(MODEL), "rejected one")["id"]
    client.post(f"/api/v1/releases/{third}/reject", headers=bearer(people["carol"]),
                json={"reason": "no"})
    client.post(f"/api/v1/releases/{second}/approve", headers=bearer(people["bob"]))

    bob = _logged_in(app, "bob")
    page = bob.get("/releases").get_data(as_text=True)
    queue = page[page.index('id="queue"'):page.index("All release requests")]
    assert first in queue and second not in queue and third not in queue
    preview = re.search(r'<td class="justification">([^<]*)</td>', queue)
    assert preview is not None
    assert preview.group(1).startswith("Model for the methods section. Trained on cohort 1")
    assert preview.group(1).endswith("…")
    assert len(preview.group(1)) <= release_service_preview()
    assert "1 request waiting on you" in page
    assert re.search(r'id="waiting-count"[^>]*>1</span>', page)

    dave = _logged_in(app, "dave")
    page = dave.get("/releases").get_data(as_text=True)
    assert "2 requests waiting on you" in page
    assert re.search(r'id="waiting-count"[^>]*>2</span>', dave.get("/keys").get_data(
        as_text=True)), "the count is in the navigation on every page"

    alice = _logged_in(app, "alice")
    assert 'id="waiting-count"' not in alice.get("/releases").get_data(as_text=True)


def release_service_preview() -> int:
    from console.web.releases import JUSTIFICATION_PREVIEW

    return JUSTIFICATION_PREVIEW


def test_an_empty_queue_says_so_and_shows_no_count(
        client: FlaskClient, people: dict[str, str]) -> None:
    login(client, "bob")
    page = client.get("/releases").get_data(as_text=True)
    assert "Nothing is waiting for you." in page and 'id="waiting-count"' not in page


# --- withdraw and the sandbox's release form ------------------------------------------------


def test_a_request_whose_checks_failed_offers_no_withdraw(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str]) -> None:
    sandbox_id = finished({"metrics.json": json.dumps({"accuracy": 0.9, "note": "x"}).encode()})
    failed = _request(client, people["alice"], sandbox_id, ["metrics.json"])
    assert failed["status"] == "checks_failed"
    login(client, "alice")
    page = client.get(f"/releases/{failed['id']}").get_data(as_text=True)
    assert 'id="withdraw"' not in page
    refused = client.post(f"/api/v1/releases/{failed['id']}/withdraw",
                          headers=bearer(people["alice"]))
    assert refused.status_code == 409 and "checks failed" in refused.get_json()["error"]["message"]

    open_one = _request(client, people["alice"], finished(), list(MODEL))["id"]
    page = client.get(f"/releases/{open_one}").get_data(as_text=True)
    assert re.search(r'<form [^>]*id="withdraw-form"[^>]*data-confirm="Withdraw', page)


def test_the_sandbox_page_does_not_offer_files_already_requested(
        client: FlaskClient, people: dict[str, str], finished: Callable[..., str]) -> None:
    sandbox_id = finished()
    assert wait_for_outbox(client, people["alice"], sandbox_id)["state"] == "ready"
    login(client, "alice")
    page = client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    assert 'id="request-release"' in page and 'id="already-requested"' not in page

    rid = _request(client, people["alice"], sandbox_id, ["model.safetensors"])["id"]
    page = client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    held = page[page.index('id="already-requested"'):page.index('id="release-form"')]
    assert f'href="/releases/{rid}">{rid}</a>' in held and "model.safetensors" in held
    offered = page[page.index('id="release-form"'):]
    assert 'value="metrics.json"' in offered and 'value="model.safetensors"' not in offered

    second = _request(client, people["alice"], sandbox_id, ["metrics.json"])["id"]
    page = client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    assert 'id="release-form"' not in page and 'id="request-release"' not in page
    assert "Every file in the outbox is already in a release request" in page
    assert f'href="/releases/{second}"' in page

    client.post(f"/api/v1/releases/{rid}/reject", headers=bearer(people["bob"]),
                json={"reason": "wrong epoch"})
    page = client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    offered = page[page.index('id="release-form"'):]
    assert 'value="model.safetensors"' in offered, "a rejected request frees its files"


# --- confirmations ------------------------------------------------------------------------------


def test_destructive_forms_ask_first_and_every_page_loads_the_script(
        client: FlaskClient, people: dict[str, str], finished: Callable[..., str]) -> None:
    rid = _request(client, people["alice"], finished(), list(MODEL))["id"]
    login(client, "bob")
    page = client.get(f"/releases/{rid}").get_data(as_text=True)
    assert '<script src="/static/confirm.js" defer></script>' in page
    assert re.search(r'id="approve-form"\s+data-confirm="Approve ' + rid + r'\?"', page)
    assert re.search(r'id="reject-form"\s+data-confirm="Reject ' + rid, page)
    assert "<script>" not in page  # the CSP allows no inline script
    script = client.get("/static/confirm.js")
    assert script.status_code == 200 and b"data-confirm" in script.data
    script.close()

    client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people["carol"]))
    page = client.get(f"/releases/{rid}").get_data(as_text=True)
    assert "the last approval needed" in page
