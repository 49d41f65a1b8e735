"""Work that builds on work, through the API with the fake backend: a finished sandbox's
outputs mounted as an input by its owner or a group member, never carrying a dataset to
someone not granted it (directly or through a chain of two); projects with one writer at a
time; dataset versions chosen, pinned and retired; the leak scan and the provenance over
every ancestor."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlmodel import select

from console.core import Sealroom
from console.models import Dataset, Sandbox
from console.services import datasets as dataset_service
from console.services import lineage as lineage_service
from tests.helpers import (
    OPERATOR,
    bearer,
    change_policy,
    recorded,
    safetensors_bytes,
    supervisor_pass,
    wait_for_outbox,
    write_dataset,
)


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str, core: Sealroom,
           tmp_path: Path) -> dict[str, str]:
    tokens = {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("bob", "engineer"), ("carol", "engineer"),
        ("sam", "security_officer"), ("audrey", "auditor")]}
    dataset_service.register_dataset(core, OPERATOR, write_dataset(tmp_path / "secret", 50),
                                     "secret", ["alice"])
    change_policy(core, {"groups": {"team": ["alice", "bob"]},
                         "inputs": {"share_groups": ["team"]}})
    return tokens


def _launch(client: FlaskClient, token: str, **body: Any) -> Any:
    return client.post("/api/v1/sandboxes", headers=bearer(token),
                       json={"datasets": ["demo"], "example": "mlp", **body})


@pytest.fixture
def finished(client: FlaskClient, people: dict[str, str], core: Sealroom,
             fake_backend: Any) -> Callable[..., str]:
    """A finished sandbox whose outbox holds a checkpoint, hashed."""

    def make(who: str = "alice", files: dict[str, bytes] | None = None, **body: Any) -> str:
        created = _launch(client, people[who], **body)
        assert created.status_code == 201, created.get_json()
        sandbox_id = str(created.get_json()["id"])
        outbox = core.settings.sandboxes_dir / sandbox_id / "outbox"
        for name, data in (files or {"ckpt.safetensors": b"weights of " +
                                     sandbox_id.encode()}).items():
            (outbox / name).write_bytes(data)
        fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
        supervisor_pass(core)
        assert wait_for_outbox(client, people[who], sandbox_id)["state"] == "ready"
        return sandbox_id

    return make


def _row(core: Sealroom, sandbox_id: str) -> Sandbox:
    with core.read() as session:
        row = session.get(Sandbox, sandbox_id)
    assert row is not None
    return row


def test_outputs_are_mounted_read_only_and_recorded_with_their_lineage(
        client: FlaskClient, people: dict[str, str], core: Sealroom, fake_backend: Any,
        finished: Callable[..., str]) -> None:
    first = finished(datasets=["secret"])
    response = _launch(client, people["alice"], inputs=[first])
    assert response.status_code == 201, response.get_json()
    second = response.get_json()
    assert second["inputs"][0]["sandbox"] == first
    spec = fake_backend.created_specs[-1]
    assert [i.sandbox_id for i in spec.inputs] == [first]
    assert spec.inputs[0].digest == second["inputs"][0]["digest"]
    assert spec.inputs[0].digest.startswith("sha256:")
    row = _row(core, second["id"])
    assert {(d["name"], d["version"]) for d in json.loads(row.lineage)} == \
        {("demo", 1), ("secret", 1)}
    launch = json.loads(recorded(core, "sandbox:sandbox:launch")[-1].details)
    assert launch["inputs"][0]["sandbox"] == first
    # both directions of the graph
    lineage = client.get(f"/api/v1/sandboxes/{first}/lineage",
                         headers=bearer(people["alice"])).get_json()
    assert [u["sandbox"] for u in lineage["used_by"]] == [second["id"]]
    back = client.get(f"/api/v1/sandboxes/{second['id']}/lineage",
                      headers=bearer(people["alice"])).get_json()
    assert [a["sandbox"] for a in back["ancestors"]] == [first]


def test_a_group_member_may_mount_outputs_of_data_they_are_granted(
        client: FlaskClient, people: dict[str, str], finished: Callable[..., str]) -> None:
    plain = finished()
    assert _launch(client, people["bob"], inputs=[plain]).status_code == 201
    # carol shares no group with alice
    refused = _launch(client, people["carol"], inputs=[plain])
    assert refused.status_code == 403
    assert refused.get_json()["error"]["rule"] == "inputs.share_groups"


def test_outputs_of_a_dataset_never_reach_someone_not_granted_it_even_through_a_chain(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str]) -> None:
    first = finished(datasets=["secret"])
    direct = _launch(client, people["bob"], inputs=[first])
    assert direct.status_code == 403
    assert direct.get_json()["error"]["rule"] == "datasets.secret.allow"
    # alice launches on demo only, reading the first: its outputs carry secret along
    second = finished(inputs=[first])
    chained = _launch(client, people["bob"], inputs=[second])
    assert chained.status_code == 403
    error = chained.get_json()["error"]
    assert error["rule"] == "datasets.secret.allow"
    assert second in error["message"] and "secret" in error["message"]
    event = recorded(core, "sandbox:sandbox:launch")[-1]
    assert (event.outcome, json.loads(event.details)["rule"]) == ("denied",
                                                                  "datasets.secret.allow")
    with core.read() as session:
        assert all(s.owner != "bob" for s in session.exec(select(Sandbox)))


@pytest.mark.parametrize("inputs, status, message", [
    (["sb-000000000000"], 400, "no sandbox 'sb-000000000000' to take inputs from"),
    (["../etc"], 400, "'../etc' is not a sandbox id"),
])
def test_bad_inputs_are_refused_and_audited(client: FlaskClient, people: dict[str, str],
                                            core: Sealroom, inputs: list[str], status: int,
                                            message: str) -> None:
    response = _launch(client, people["alice"], inputs=inputs)
    assert response.status_code == status
    assert response.get_json()["error"]["message"] == message
    assert recorded(core, "sandbox:sandbox:launch")[-1].outcome == "denied"


def test_a_running_sandbox_cannot_be_an_input(client: FlaskClient, people: dict[str, str]
                                              ) -> None:
    running = _launch(client, people["alice"]).get_json()["id"]
    response = _launch(client, people["alice"], inputs=[running])
    assert response.status_code == 409
    assert "has not finished" in response.get_json()["error"]["message"]


def test_a_project_has_one_writer_and_carries_its_lineage(
        client: FlaskClient, people: dict[str, str], core: Sealroom, fake_backend: Any,
        finished: Callable[..., str]) -> None:
    created = client.post("/api/v1/projects", headers=bearer(people["alice"]),
                          json={"name": "cardio", "quota_mb": 64})
    assert created.status_code == 201, created.get_json()
    first = _launch(client, people["alice"], project="cardio", datasets=["secret"])
    assert first.status_code == 201, first.get_json()
    assert fake_backend.created_specs[-1].project == "cardio"
    busy = _launch(client, people["alice"], project="cardio")
    assert busy.status_code == 409
    assert "in use by" in busy.get_json()["error"]["message"]
    first_id = first.get_json()["id"]
    fake_backend.finish(fake_backend.handle_of(first_id), exit_code=0)
    supervisor_pass(core)
    second = _launch(client, people["alice"], project="cardio")
    assert second.status_code == 201, second.get_json()
    row = _row(core, second.get_json()["id"])
    assert row.project_parent == first_id
    assert ("secret", 1) in lineage_service.versions_of(row.lineage)
    # shared with bob by the policy, the project still carries secret: refused
    fake_backend.finish(fake_backend.handle_of(row.id), exit_code=0)
    supervisor_pass(core)
    assert _launch(client, people["bob"], project="cardio").get_json()["error"]["rule"] == \
        "projects.shared.cardio.allow"
    change_policy(core, {"projects": {"shared": {"cardio": {"allow": ["bob"]}}}})
    tainted = _launch(client, people["bob"], project="cardio")
    assert tainted.status_code == 403
    assert tainted.get_json()["error"]["rule"] == "datasets.secret.allow"


def test_project_creation_is_decided_by_the_policy_and_audited(
        client: FlaskClient, people: dict[str, str], core: Sealroom) -> None:
    change_policy(core, {"projects": {"max_quota_mb": 100}})
    refused = client.post("/api/v1/projects", headers=bearer(people["alice"]),
                          json={"name": "big", "quota_mb": 200})
    assert refused.status_code == 403
    assert refused.get_json()["error"]["rule"] == "projects.max_quota_mb"
    assert recorded(core, "sandbox:project:create")[-1].outcome == "denied"
    assert client.post("/api/v1/projects", headers=bearer(people["alice"]),
                       json={"name": "small", "quota_mb": 32}).status_code == 201
    again = client.post("/api/v1/projects", headers=bearer(people["alice"]),
                        json={"name": "small", "quota_mb": 32})
    assert again.status_code == 409
    listed = client.get("/api/v1/projects", headers=bearer(people["bob"])).get_json()
    assert listed["projects"] == []  # not shared with bob


def test_dataset_versions_are_chosen_pinned_and_retired(
        client: FlaskClient, people: dict[str, str], core: Sealroom, fake_backend: Any,
        tmp_path: Path) -> None:
    on_v1 = _launch(client, people["alice"]).get_json()["id"]
    v2 = dataset_service.register_dataset(core, OPERATOR, write_dataset(tmp_path / "v2", 80),
                                          "demo", [])
    assert v2.version == 2
    newest = _launch(client, people["alice"]).get_json()
    assert newest["datasets"][0]["version"] == 2
    older = _launch(client, people["alice"], datasets=["demo@1"]).get_json()
    assert older["datasets"][0]["version"] == 1
    # the running sandbox on version 1 is untouched by the new version
    assert _row(core, on_v1).status == "running"
    for sandbox_id in (newest["id"], older["id"]):
        fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
    supervisor_pass(core)
    retired = client.post("/api/v1/datasets/demo/versions/1/retire",
                          headers=bearer(people["sam"]))
    assert retired.status_code == 200, retired.get_json()
    assert retired.get_json()["files_removed"] is False  # on_v1 still runs on it
    refused = _launch(client, people["alice"], datasets=["demo@1"])
    assert refused.status_code == 400
    assert refused.get_json()["error"]["message"] == "version 1 of dataset 'demo' is retired"
    fake_backend.finish(fake_backend.handle_of(on_v1), exit_code=0)
    supervisor_pass(core)
    with core.read() as session:
        row = session.exec(select(Dataset).where(Dataset.name == "demo")
                           .where(Dataset.version == 1)).one()
    assert row.removed_at is not None and not Path(row.path).exists()
    assert recorded(core, "system:dataset:remove_files")
    change_policy(core, {"datasets": {"demo": {"versions": [1]}}})
    pinned = _launch(client, people["alice"])
    assert pinned.status_code == 400
    assert "no version that may be mounted" in pinned.get_json()["error"]["message"]


def test_the_leak_scan_covers_every_dataset_version_an_ancestor_mounted(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str]) -> None:
    first = finished(datasets=["secret"])
    second = finished(inputs=[first])
    with core.read() as session:
        labels = set(lineage_service.scan_datasets(session, _row(core, second)))
    assert labels == {"demo@1", "secret@1"}


def test_the_auditor_follows_a_dataset_version_to_its_descendants(
        client: FlaskClient, people: dict[str, str], finished: Callable[..., str]) -> None:
    first = finished(datasets=["secret"])
    second = finished(inputs=[first])
    body = client.get("/api/v1/datasets/secret/versions/1/lineage",
                      headers=bearer(people["audrey"])).get_json()
    assert [s["id"] for s in body["sandboxes"]] == [first, second]
    assert [s["mounted"] for s in body["sandboxes"]] == [True, False]
    assert client.get("/api/v1/datasets/secret/versions/1/lineage",
                      headers=bearer(people["alice"])).status_code == 403
    # an engineer sees only the datasets they may use
    names = [d["name"] for d in client.get("/api/v1/datasets",
                                           headers=bearer(people["bob"])).get_json()["datasets"]]
    assert names == ["demo"]


def _release(client: FlaskClient, token: str, sandbox_id: str, files: list[str]) -> Any:
    return client.post("/api/v1/releases", headers=bearer(token), json={
        "sandbox": sandbox_id, "files": files, "justification": "built on earlier work"})


def test_the_leak_scan_catches_rows_of_a_dataset_only_an_ancestor_mounted(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str]) -> None:
    with core.read() as session:
        secret = session.exec(select(Dataset).where(Dataset.name == "secret")).one()
    rows = (Path(secret.path) / "train.csv").read_text().splitlines()[3:6]
    first = finished(datasets=["secret"])
    # the second sandbox mounts only demo, and copies rows of secret out of its input
    second = finished(inputs=[first], files={
        "metrics.csv": ("epoch,loss\n" + "\n".join(rows) + "\n").encode(),
        "model.safetensors": safetensors_bytes({"w": [0.5]})})
    release = _release(client, people["alice"], second,
                       ["metrics.csv", "model.safetensors"]).get_json()
    assert release["status"] == "checks_failed"
    leaks = [r for r in release["checks"]["results"]
             if r["check"] == "leak_scan" and not r["passed"]]
    assert [r["file"] for r in leaks] == ["metrics.csv"]
    assert not any(rows[0] in r["reason"] for r in release["checks"]["results"])


def test_a_new_version_leaves_an_open_release_on_the_old_one_untouched(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        make_user: Callable[..., tuple[str, str]], finished: Callable[..., str],
        tmp_path: Path) -> None:
    approvers = [make_user(name, "approver")[1] for name in ("bob2", "carol2")]
    sandbox_id = finished(files={"model.safetensors": safetensors_bytes({"w": [0.5, 1.5]})})
    release = _release(client, people["alice"], sandbox_id, ["model.safetensors"]).get_json()
    assert release["status"] == "in_review", release["checks"]
    dataset_service.register_dataset(core, OPERATOR, write_dataset(tmp_path / "v2", 70),
                                     "demo", [])
    for token in approvers:
        answer = client.post(f"/api/v1/releases/{release['id']}/approve", headers=bearer(token))
        assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["status"] == "released"
    statement = _statement(core, release["id"])
    names = {d["name"] for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert "dataset:demo@1" in names and "dataset:demo@2" not in names


def _statement(core: Sealroom, release_id: str) -> dict[str, Any]:
    import base64

    from console.models import ReleaseRequest

    with core.read() as session:
        record = session.get(ReleaseRequest, release_id)
    assert record is not None and record.bundle_path
    envelope = json.loads((Path(record.bundle_path) / "provenance.intoto.jsonl").read_text())
    statement: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return statement


def test_a_policy_dry_run_judges_running_sandboxes_on_their_inputs_and_project(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str]) -> None:
    """Taking the shared group away, or a dataset an input descends from, shows up in the
    dry run for the sandboxes running on them, with the rule that would refuse them."""
    import yaml

    from console.services import policy as policy_service

    source = finished(datasets=["secret"])
    reading = finished(inputs=[source])  # alice's, on demo, carrying secret along
    running = _launch(client, people["bob"], inputs=[finished()]).get_json()["id"]
    mine = _launch(client, people["alice"], inputs=[reading]).get_json()["id"]
    policy = core.policy.model_dump(mode="json", exclude={"version"})
    policy["inputs"]["share_groups"] = []
    policy["datasets"]["secret"]["allow"] = ["carol"]
    result = policy_service.dry_run(core, OPERATOR, yaml.safe_dump(policy))
    findings = {(f.id, f.rule) for f in result.sandboxes}
    assert findings == {(running, "inputs.share_groups"), (mine, "datasets.secret.allow")}


def test_a_sandbox_that_mounted_the_outputs_and_continued_the_project_says_both(
        client: FlaskClient, people: dict[str, str], core: Sealroom, fake_backend: Any,
        finished: Callable[..., str]) -> None:
    assert client.post("/api/v1/projects", headers=bearer(people["alice"]),
                       json={"name": "both", "quota_mb": 64}).status_code == 201
    first = finished(project="both")
    second = _launch(client, people["alice"], project="both", inputs=[first]).get_json()["id"]
    lineage = client.get(f"/api/v1/sandboxes/{first}/lineage",
                         headers=bearer(people["alice"])).get_json()
    assert lineage["used_by"] == [{"sandbox": second, "owner": "alice", "status": "running",
                                   "via": "inputs and project"}]
