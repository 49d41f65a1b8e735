"""Checks that hold when requests race, with the fake backend: the concurrency cap counted
again where the sandbox is inserted (20 launches at once against a cap of 4), and release
file names judged at request by the one rule sealing uses."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import select

from console.core import Sealroom
from console.models import ReleaseRequest, Sandbox
from sandbox.gate.sealing import InvalidReleaseName, check_release_name
from tests.helpers import bearer, change_policy, recorded, supervisor_pass

# --- the concurrency cap -------------------------------------------------------------------


def test_20_concurrent_launches_against_a_cap_of_4_leave_exactly_4_running(
        app: Flask, core: Sealroom, make_user: Callable[..., tuple[str, str]],
        dataset: str) -> None:
    version = change_policy(core, {"resources": {"roles": {"engineer": {"max_concurrent": 4}}}})
    token = make_user("alice")[1]
    start = threading.Barrier(20)

    def launch(_: int) -> tuple[int, Any]:
        client = app.test_client()
        start.wait()
        response = client.post("/api/v1/sandboxes", headers=bearer(token),
                               json={"dataset": "demo", "example": "mlp"})
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(launch, range(20)))
    statuses = [status for status, _ in answers]
    assert statuses.count(201) == 4, answers
    assert statuses.count(403) == 16, answers
    refusals = {body["error"]["rule"] for status, body in answers if status == 403}
    assert refusals == {"resources.roles.engineer.max_concurrent"}
    with core.read() as session:
        rows = list(session.exec(select(Sandbox)).all())
    assert sorted(r.status for r in rows) == ["running"] * 4
    denied = [e for e in recorded(core, "sandbox:sandbox:launch") if e.outcome == "denied"]
    assert len(denied) == 16
    assert {json.loads(e.details)["rule"] for e in denied} == \
        {"resources.roles.engineer.max_concurrent"}
    assert {json.loads(e.details)["policy_version"] for e in denied} == {version}
    # Nothing of a refused launch is left behind: no containers, no workspaces.
    sandbox_dirs = {p.name for p in core.settings.sandboxes_dir.iterdir() if p.is_dir()}
    assert sandbox_dirs <= {r.id for r in rows}


# --- release names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "./x.json", "../x.json", "a/../x.json", "a/./x.json", "/etc/passwd", "a//x.json",
    "a/", "", "a\\x.json", "x\x00.json", "x\n.json", "x\u200b.json", "model.sig",
    "provenance.intoto.jsonl", ".git/config", "x" * 256])
def test_the_one_rule_for_release_names_refuses_what_cannot_be_sealed(name: str) -> None:
    with pytest.raises(InvalidReleaseName):
        check_release_name(name)


@pytest.mark.parametrize("name", ["x.json", "a/b/x.json", "model.safetensors", ".hidden"])
def test_plain_relative_names_pass_the_rule(name: str) -> None:
    assert check_release_name(name) == name


@pytest.fixture
def finished(client: FlaskClient, core: Sealroom, make_user: Callable[..., tuple[str, str]],
             dataset: str, fake_backend: Any) -> Callable[[dict[str, bytes]], tuple[str, str]]:
    """A finished sandbox of alice's whose outbox holds `files`; (alice's token, its id)."""
    token = make_user("alice")[1]

    def make(files: dict[str, bytes]) -> tuple[str, str]:
        created = client.post("/api/v1/sandboxes", headers=bearer(token),
                              json={"dataset": "demo", "example": "mlp"})
        sandbox_id = str(created.get_json()["id"])
        fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
        outbox = core.settings.sandboxes_dir / sandbox_id / "outbox"
        for name, data in files.items():
            (outbox / name).write_bytes(data)
        supervisor_pass(core)  # the exit schedules the hashing
        return token, sandbox_id

    return make


def _request(client: FlaskClient, token: str, sandbox_id: str, files: list[str]) -> Any:
    return client.post("/api/v1/releases", headers=bearer(token), json={
        "sandbox": sandbox_id, "files": files, "justification": "the paper's figures"})


def _releases(core: Sealroom) -> list[ReleaseRequest]:
    with core.read() as session:
        return list(session.exec(select(ReleaseRequest)).all())


def test_a_release_name_sealing_would_refuse_is_refused_at_request(
        client: FlaskClient, core: Sealroom,
        finished: Callable[[dict[str, bytes]], tuple[str, str]]) -> None:
    token, sandbox_id = finished({"x.json": b"{}"})
    response = _request(client, token, sandbox_id, ["./x.json"])
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == \
        "'./x.json' is not a plain relative file name"
    event = recorded(core, "release:request:create")[-1]
    assert (event.outcome, event.reason) == ("denied",
                                             "'./x.json' is not a plain relative file name")
    assert _releases(core) == []
    assert _request(client, token, sandbox_id, ["x.json"]).status_code == 201


def test_an_outbox_file_named_like_the_bundles_own_files_is_refused_at_request(
        client: FlaskClient, core: Sealroom,
        finished: Callable[[dict[str, bytes]], tuple[str, str]]) -> None:
    token, sandbox_id = finished({"model.sig": b"{}"})
    response = _request(client, token, sandbox_id, ["model.sig"])
    assert response.status_code == 400
    assert "reserved in a release bundle" in response.get_json()["error"]["message"]
    assert _releases(core) == []


def test_a_withheld_name_sealing_would_refuse_is_refused_without_being_shown(
        client: FlaskClient, core: Sealroom,
        finished: Callable[[dict[str, bytes]], tuple[str, str]]) -> None:
    token, sandbox_id = finished({"secret\\name.json": b"{}"})  # a backslash: never shown
    response = _request(client, token, sandbox_id, ["#1"])
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert message == "file 1 (name withheld) cannot be released: its name is not a plain " \
        "relative file name"
    assert "secret" not in json.dumps([e.details + e.reason for e in recorded(core)])
    assert _releases(core) == []
