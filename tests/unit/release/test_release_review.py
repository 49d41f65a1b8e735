"""The release gate through HTTP with the fake backend: request, checks, review by two other
approvers, sealing, download; every refusal clear, audited and leaving a clear state."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlmodel import select

from audit.events import Actor
from console.core import Caller, Sealroom
from console.services import releases as release_service
from console.services.errors import Forbidden
from tests.helpers import (
    bearer,
    change_policy,
    recorded,
    safetensors_bytes,
    supervisor_pass,
)


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("mallory", "engineer"), ("bob", "approver"),
        ("carol", "approver"), ("dave", "approver"), ("audrey", "auditor")]}


@pytest.fixture
def finished(client: FlaskClient, people: dict[str, str], core: Sealroom,
             fake_backend: Any) -> Callable[..., str]:
    """A finished sandbox of alice's whose outbox holds the given files."""

    def make(files: dict[str, bytes] | None = None) -> str:
        created = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]),
                              json={"dataset": "demo", "example": "mlp"})
        sandbox_id = created.get_json()["id"]
        fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
        outbox = core.settings.sandboxes_dir / sandbox_id / "outbox"
        for name, data in (files if files is not None else {
                "model.safetensors": safetensors_bytes({"w": [0.5, -1.25, 3.0]}),
                "metrics.json": json.dumps({"accuracy": 0.9, "n_test": 2000}).encode(),
        }).items():
            (outbox / name).write_bytes(data)
        supervisor_pass(core)  # after the files exist: the exit schedules the hashing
        assert client.get(f"/api/v1/sandboxes/{sandbox_id}",
                          headers=bearer(people["alice"])).get_json()["status"] == "succeeded"
        return str(sandbox_id)

    return make


def _request(client: FlaskClient, token: str, sandbox_id: str,
             files: list[str] | None = None) -> Any:
    return client.post("/api/v1/releases", headers=bearer(token), json={
        "sandbox": sandbox_id,
        "files": ["model.safetensors", "metrics.json"] if files is None else files,
        "justification": "final model for the cardiology paper"})


def test_release_end_to_end(client: FlaskClient, people: dict[str, str], core: Sealroom,
                            finished: Callable[..., str], tmp_path: Path) -> None:
    sandbox_id = finished()
    created = _request(client, people["alice"], sandbox_id)
    assert created.status_code == 201, created.get_json()
    release = created.get_json()
    assert release["status"] == "in_review", release["checks"]
    assert release["checks"]["results"] and all(r["passed"] for r in release["checks"]["results"])
    rid = release["id"]

    first = client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people["bob"]))
    assert first.get_json()["status"] == "in_review" and first.get_json()["approvals"] == ["bob"]
    early = client.get(f"/api/v1/releases/{rid}/bundle", headers=bearer(people["alice"]))
    assert early.status_code == 409
    second = client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people["carol"]))
    assert second.get_json()["status"] == "released", second.get_json()

    for who in ("alice", "bob", "carol"):
        bundle = client.get(f"/api/v1/releases/{rid}/bundle", headers=bearer(people[who]))
        assert bundle.status_code == 200, who
    with tarfile.open(fileobj=io.BytesIO(bundle.data)) as tar:
        tar.extractall(tmp_path / "out", filter="data")
    bundle_dir = tmp_path / "out" / rid
    assert {p.name for p in bundle_dir.iterdir()} == {
        "model.safetensors", "metrics.json", "model.sig", "provenance.intoto.jsonl"}
    key = tmp_path / "release.pem"
    key.write_bytes(client.get("/api/v1/keys/release.pem").data)

    verified = subprocess.run([sys.executable, "-m", "console.cli", "release", "verify",
                               str(bundle_dir), "--key", str(key)],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "bob" in verified.stdout and "carol" in verified.stdout
    (bundle_dir / "metrics.json").write_bytes(b'{"accuracy": 0.99, "n_test": 2000}')
    tampered = subprocess.run([sys.executable, "-m", "console.cli", "release", "verify",
                               str(bundle_dir), "--key", str(key)],
                              capture_output=True, text=True)
    assert tampered.returncode == 1

    downloads = [(e.actor, e.outcome) for e in recorded(core, "release:bundle:download")]
    assert downloads[0][1] != "ok"  # the early attempt, refused and audited
    assert sorted(downloads[1:]) == [("alice", "ok"), ("bob", "ok"), ("carol", "ok")]
    assert [e.outcome for e in recorded(core, "release:bundle:seal")] == ["ok"]


def test_review_refusals(client: FlaskClient, people: dict[str, str], core: Sealroom,
                         finished: Callable[..., str]) -> None:
    rid = _request(client, people["alice"], finished()).get_json()["id"]
    # the requester is no approver: the role guard refuses, and so would the service
    own = client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people["alice"]))
    assert own.status_code == 403
    as_approver = Caller(Actor("alice", "approver", "token"), request_id="t")
    with pytest.raises(Forbidden, match="your own"):
        release_service.approve(core, as_approver, rid)
    assert client.post(f"/api/v1/releases/{rid}/approve",
                       headers=bearer(people["bob"])).status_code == 200
    twice = client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people["bob"]))
    assert twice.status_code == 409 and "already approved" in twice.get_json()["error"]["message"]
    auditor = client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people["audrey"]))
    assert auditor.status_code == 403
    hidden = client.get(f"/api/v1/releases/{rid}", headers=bearer(people["mallory"]))
    assert hidden.status_code == 404
    state = client.get(f"/api/v1/releases/{rid}", headers=bearer(people["alice"])).get_json()
    assert state["status"] == "in_review" and state["approvals"] == ["bob"]
    denied = [e for e in recorded(core, "release:request:approve") if e.outcome == "denied"]
    assert {e.actor for e in denied} == {"alice", "bob"}


def test_download_is_for_the_requester_and_approvers_only(
        client: FlaskClient, people: dict[str, str], finished: Callable[..., str],
        core: Sealroom) -> None:
    rid = _request(client, people["alice"], finished()).get_json()["id"]
    for approver in ("bob", "carol"):
        client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people[approver]))
    assert client.get(f"/api/v1/releases/{rid}/bundle",
                      headers=bearer(people["dave"])).status_code == 403
    assert client.get(f"/api/v1/releases/{rid}/bundle",
                      headers=bearer(people["mallory"])).status_code == 404
    denied = [e for e in recorded(core, "release:bundle:download") if e.outcome == "denied"]
    assert {e.actor for e in denied} == {"dave", "mallory"}


def test_reject_and_withdraw(client: FlaskClient, people: dict[str, str],
                             finished: Callable[..., str]) -> None:
    sandbox_id = finished()
    rid = _request(client, people["alice"], sandbox_id).get_json()["id"]
    no_reason = client.post(f"/api/v1/releases/{rid}/reject", headers=bearer(people["bob"]),
                            json={})
    assert no_reason.status_code == 400
    rejected = client.post(f"/api/v1/releases/{rid}/reject", headers=bearer(people["bob"]),
                           json={"reason": "metrics need a confidence interval"})
    assert rejected.get_json()["status"] == "rejected"
    late = client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people["carol"]))
    assert late.status_code == 409
    again = _request(client, people["alice"], sandbox_id).get_json()["id"]
    withdrawn = client.post(f"/api/v1/releases/{again}/withdraw",
                            headers=bearer(people["alice"]), json={"reason": "wrong epoch"})
    assert withdrawn.get_json()["status"] == "withdrawn"
    not_yours = client.post(f"/api/v1/releases/{again}/withdraw",
                            headers=bearer(people["mallory"]))
    assert not_yours.status_code == 404


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, ("echo owned",))


@pytest.mark.parametrize("files, check", [
    ({"model.pt": pickle.dumps(_Exploit())}, "file_type"),
    ({"model.safetensors": safetensors_bytes({"w": [1.0]}, trailing=b"EXTRA")}, "file_format"),
    ({"metrics.json": json.dumps({"accuracy": 0.9, "note": "great"}).encode()}, "metrics"),
    ({"metrics.json": json.dumps({"accuracy": 0.9, "n": 3}).encode()}, "metrics"),
    ({"model.zip": b"PK\x03\x04rest"}, "file_type"),
])
def test_checks_refuse_bad_outputs(client: FlaskClient, people: dict[str, str], core: Sealroom,
                                   finished: Callable[..., str], files: dict[str, bytes],
                                   check: str) -> None:
    sandbox_id = finished(files)
    response = _request(client, people["alice"], sandbox_id, list(files))
    assert response.status_code == 201
    release = response.get_json()
    assert release["status"] == "checks_failed"
    failed = [r for r in release["checks"]["results"] if not r["passed"]]
    assert check in {r["check"] for r in failed}, failed
    assert all(r["reason"] for r in failed)
    assert client.post(f"/api/v1/releases/{release['id']}/approve",
                       headers=bearer(people["bob"])).status_code == 409
    event = recorded(core, "release:request:check")[-1]
    assert event.outcome == "denied" and event.target == f"release:{release['id']}"


def test_output_embedding_dataset_rows_is_refused(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str]) -> None:
    from sqlmodel import select as sql_select

    from console.models import Dataset

    with core.transaction() as session:
        dataset = session.exec(sql_select(Dataset)).one()
    rows = (Path(dataset.path) / "train.csv").read_text().splitlines()[5:8]
    leaky = ("epoch,loss\n" + "\n".join(rows) + "\n").encode()
    sandbox_id = finished({"metrics.csv": leaky,
                           "model.safetensors": safetensors_bytes(
                               {"w": [1.0]}, metadata={"note": rows[0]})})
    release = _request(client, people["alice"], sandbox_id,
                       ["metrics.csv", "model.safetensors"]).get_json()
    assert release["status"] == "checks_failed"
    leaks = {r["file"] for r in release["checks"]["results"]
             if r["check"] == "leak_scan" and not r["passed"]}
    assert leaks == {"metrics.csv", "model.safetensors"}
    assert not any(rows[0] in r["reason"] for r in release["checks"]["results"])


def test_file_over_the_size_cap(client: FlaskClient, people: dict[str, str], core: Sealroom,
                                finished: Callable[..., str]) -> None:
    change_policy(core, {"release": {"max_file_mb": 1}})
    big = safetensors_bytes({"w": [0.0] * (300 * 1024)})
    sandbox_id = finished({"model.safetensors": big})
    response = _request(client, people["alice"], sandbox_id, ["model.safetensors"])
    assert response.status_code == 400  # refused while copying: a huge file is never stored
    body = response.get_json()
    assert "larger than" in body["error"]["message"]
    assert body["error"]["rule"] == "release.max_file_mb"
    assert recorded(core, "release:request:create")[-1].outcome == "denied"


@pytest.mark.parametrize("payload, status, fragment", [
    ({"sandbox": "sb-000000000000", "files": ["a.json"], "justification": "x"}, 404, "sandbox"),
    ({"files": ["a.json"], "justification": "x"}, 400, "strings"),
    ({"sandbox": "SANDBOX", "files": "a.json", "justification": "x"}, 400, "list"),
])
def test_bad_release_requests(client: FlaskClient, people: dict[str, str], core: Sealroom,
                              payload: dict[str, Any], status: int, fragment: str) -> None:
    response = client.post("/api/v1/releases", headers=bearer(people["alice"]), json=payload)
    assert response.status_code == status
    assert fragment in response.get_json()["error"]["message"]
    with core.transaction() as session:
        from console.models import ReleaseRequest

        assert session.exec(select(ReleaseRequest)).all() == []


def test_request_refusals_leave_nothing(client: FlaskClient, people: dict[str, str],
                                        core: Sealroom, finished: Callable[..., str],
                                        fake_backend: Any) -> None:
    sandbox_id = finished()
    not_listed = "not in the outbox listing"
    for files, fragment in [(["../../secret_key"], "not a plain relative file name"),
                            (["missing.json"], not_listed),
                            (["#99"], not_listed), ([], "at least one")]:
        response = _request(client, people["alice"], sandbox_id, files)
        assert response.status_code == 400 and fragment in response.get_json()["error"]["message"]
    empty = client.post("/api/v1/releases", headers=bearer(people["alice"]), json={
        "sandbox": sandbox_id, "files": ["metrics.json"], "justification": "  "})
    assert empty.status_code == 400
    other = _request(client, people["mallory"], sandbox_id)
    assert other.status_code == 404
    running = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]),
                          json={"dataset": "demo", "example": "mlp"}).get_json()["id"]
    assert _request(client, people["alice"], running).status_code == 409
    with core.transaction() as session:
        from console.models import ReleaseRequest

        assert session.exec(select(ReleaseRequest)).all() == []
    assert len([e for e in recorded(core, "release:request:create")
                if e.outcome == "denied"]) == 7
