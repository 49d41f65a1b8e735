"""The example model released end to end through the API against the real engine: trained in
a hardened sandbox, requested, checked, approved by two other people, sealed, downloaded, and
verified offline by `sealroom release verify` and by the stock `model_signing` tool."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from flask import Flask

from console.core import Sealroom
from console.services import accounts
from tests.helpers import OPERATOR, PASSWORD, bearer, settled_release
from tests.integration.test_api_launch import engineer, wait_for  # noqa: F401  (fixture)

pytestmark = pytest.mark.docker

MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


def test_example_model_released_and_verified(docker_app: Flask, engineer: str,  # noqa: F811
                                             docker_core: Sealroom, tmp_path: Path) -> None:
    approvers = {}
    for name in ("bob", "carol"):
        accounts.create_user(docker_core, OPERATOR, name, "approver", PASSWORD)
        approvers[name] = accounts.create_token(docker_core, OPERATOR, name)
    client = docker_app.test_client()
    sandbox = client.post("/api/v1/sandboxes", headers=bearer(engineer),
                          json={"dataset": "demo", "example": "mlp"}).get_json()
    final = wait_for(client, sandbox["id"], engineer, lambda b: b["status"] != "running")
    assert final["status"] == "succeeded", final

    created = client.post("/api/v1/releases", headers=bearer(engineer), json={
        "sandbox": sandbox["id"], "files": ["model.safetensors", "metrics.json"],
        "justification": "the example model, for the methods section"})
    assert created.status_code == 201, created.get_json()
    # The example describes its model, so the gate attacks it before anyone reviews it.
    release = settled_release(client, engineer, created.get_json())
    assert release["status"] == "in_review", release["checks"]
    checks = {r["check"] for r in release["checks"]["results"]}
    assert {"file_type", "file_format", "file_size", "total_size", "metrics", "leak_scan",
            "model_risk"} <= checks
    attacks = release["checks"]["model_risk"]["attacks"]["model.safetensors"]
    assert {a["attack"] for a in attacks} == {"lira", "worstcase"}
    rid = release["id"]
    for name, token in approvers.items():
        approved = client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(token))
        assert approved.status_code == 200, approved.get_json()
    assert approved.get_json()["status"] == "released"

    bundle = client.get(f"/api/v1/releases/{rid}/bundle", headers=bearer(engineer))
    assert bundle.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(bundle.data)) as tar:
        tar.extractall(tmp_path, filter="data")
    directory = tmp_path / rid
    metrics = json.loads((directory / "metrics.json").read_bytes())
    assert 0.5 < metrics["accuracy"] <= 1.0
    key = tmp_path / "release.pem"
    key.write_bytes(client.get("/api/v1/keys/release.pem").data)

    ours = subprocess.run([sys.executable, "-m", "console.cli", "release", "verify",
                           str(directory), "--key", str(key)], capture_output=True, text=True)
    assert ours.returncode == 0, ours.stdout + ours.stderr
    for fact in ("alice", "bob, carol", "demo", final["image_digest"], "Model risk  attacked"):
        assert fact in ours.stdout, (fact, ours.stdout)
    theirs = subprocess.run([str(MODEL_SIGNING), "verify", "key", "--signature",
                             str(directory / "model.sig"), "--public_key", str(key),
                             str(directory)], capture_output=True, text=True)
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
