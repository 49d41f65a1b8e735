"""Work that builds on work, on the real engine: the example trained, then resumed from its
checkpoint in a second sandbox that mounts the first one's outputs read-only; the second
model released, its signed provenance naming both runs and the dataset version, verified
offline. A project's workspace carries the checkpoint from run to run, one writer at a time."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from console.core import Sealroom
from console.services import accounts
from tests.helpers import OPERATOR, PASSWORD, bearer, settled_release, wait_for_outbox
from tests.integration.test_api_launch import engineer, wait_for  # noqa: F401  (fixture)

pytestmark = pytest.mark.docker

MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


def _finished(client: Any, token: str, body: dict[str, object]) -> dict[str, Any]:
    response = client.post("/api/v1/sandboxes", headers=bearer(token),
                           json={"dataset": "demo", "example": "mlp", **body})
    assert response.status_code == 201, response.get_json()
    final = wait_for(client, response.get_json()["id"], token,
                     lambda b: b["status"] not in ("starting", "running"))
    assert final["status"] == "succeeded", final
    return final


def _log(client: Any, token: str, sandbox_id: str) -> str:
    response = client.get(f"/api/v1/sandboxes/{sandbox_id}/logs",
                          headers=bearer(token))
    return str(response.get_data(as_text=True))


def test_resumed_from_an_input_released_with_both_runs_in_its_provenance(
        docker_app: Flask, engineer: str, docker_core: Sealroom,  # noqa: F811
        tmp_path: Path) -> None:
    approvers = {}
    for name in ("bob", "carol"):
        accounts.create_user(docker_core, OPERATOR, name, "approver", PASSWORD)
        approvers[name] = accounts.create_token(docker_core, OPERATOR, name)
    client = docker_app.test_client()
    first = _finished(client, engineer, {})
    # the outputs are hashed in the background once the sandbox has ended
    assert wait_for_outbox(client, engineer, str(first["id"]))["state"] == "ready"

    second = _finished(client, engineer, {"inputs": [first["id"]]})
    assert second["inputs"][0]["sandbox"] == first["id"]
    assert f"resumed from /inputs/{first['id']}/model.safetensors" in \
        _log(client, engineer, str(second["id"]))

    created = client.post("/api/v1/releases", headers=bearer(engineer), json={
        "sandbox": second["id"], "files": ["model.safetensors", "metrics.json"],
        "justification": "the resumed model"})
    assert created.status_code == 201, created.get_json()
    release = settled_release(client, engineer, created.get_json())  # its model is attacked
    assert release["status"] == "in_review", release["checks"]
    rid = release["id"]
    for token in approvers.values():
        approved = client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(token))
        assert approved.status_code == 200, approved.get_json()
    assert approved.get_json()["status"] == "released"

    bundle = client.get(f"/api/v1/releases/{rid}/bundle", headers=bearer(engineer))
    with tarfile.open(fileobj=io.BytesIO(bundle.data)) as tar:
        tar.extractall(tmp_path, filter="data")
    directory = tmp_path / rid
    assert json.loads((directory / "metrics.json").read_bytes())["resumed"] == 1
    key = tmp_path / "release.pem"
    key.write_bytes(client.get("/api/v1/keys/release.pem").data)
    ours = subprocess.run([sys.executable, "-m", "console.cli", "release", "verify",
                           str(directory), "--key", str(key)], capture_output=True, text=True)
    assert ours.returncode == 0, ours.stdout + ours.stderr
    dataset = first["datasets"][0]
    for fact in (str(first["id"]), str(second["id"]), "demo@1", dataset["digest"],
                 str(first["code"]["digest"])):
        assert fact in ours.stdout, (fact, ours.stdout)
    theirs = subprocess.run([str(MODEL_SIGNING), "verify", "key", "--signature",
                             str(directory / "model.sig"), "--public_key", str(key),
                             str(directory)], capture_output=True, text=True)
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr


def test_a_project_carries_the_checkpoint_and_has_one_writer(
        docker_app: Flask, engineer: str, docker_core: Sealroom) -> None:  # noqa: F811
    client = docker_app.test_client()
    created = client.post("/api/v1/projects", headers=bearer(engineer),
                          json={"name": "cardio", "quota_mb": 64})
    assert created.status_code == 201, created.get_json()
    first = _finished(client, engineer, {"project": "cardio"})
    second_response = client.post("/api/v1/sandboxes", headers=bearer(engineer), json={
        "dataset": "demo", "example": "mlp", "project": "cardio",
        "command": "python -c 'import time; time.sleep(3600)'"})
    assert second_response.status_code == 201, second_response.get_json()
    second = second_response.get_json()
    busy = client.post("/api/v1/sandboxes", headers=bearer(engineer),
                       json={"dataset": "demo", "example": "mlp", "project": "cardio"})
    assert busy.status_code == 409
    assert f"in use by {second['id']}" in busy.get_json()["error"]["message"]
    stopped = client.post(f"/api/v1/sandboxes/{second['id']}/stop", headers=bearer(engineer))
    assert stopped.status_code == 200
    third = _finished(client, engineer, {"project": "cardio"})
    assert "resumed from /workspace/checkpoint.safetensors" in \
        _log(client, engineer, str(third["id"]))
    lineage = client.get(f"/api/v1/sandboxes/{third['id']}/lineage",
                         headers=bearer(engineer)).get_json()
    assert lineage["project_parent"] == second["id"]
    assert {a["sandbox"] for a in lineage["ancestors"]} == {first["id"], second["id"]}
