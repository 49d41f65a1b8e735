"""An MPI cluster through the API on the real engine: the bundled Horovod example trains
data-parallel on 2 ranks to completion, each rank in its own hardened container, and its
model goes through the release gate (checks, two approvals, signed bundle) like a single
sandbox's.

Which of the two kinds of view (the one rule): the sandbox status and the list are the
console's own words and numbers; the log is sandbox bytes, shown through the disclosure
ledger exactly as a single sandbox's (tests/unit/console/test_disclosure.py).
"""

from __future__ import annotations

import json
from typing import Any

import docker
import pytest
from flask import Flask

from console.core import Sealroom
from console.services import accounts
from sandbox.cluster import rank_output
from sandbox.hardening import assert_hardened
from sandbox.spec import NetworkPlan
from tests.helpers import OPERATOR, PASSWORD, bearer, settled_release, wait_for_outbox
from tests.integration.test_api_launch import engineer, wait_for  # noqa: F401  (fixture)

pytestmark = pytest.mark.docker


def test_a_two_rank_horovod_job_trains_and_its_model_passes_the_gate(
    docker_app: Flask, engineer: str, docker_core: Sealroom,  # noqa: F811
    docker_client: docker.DockerClient, horovod_image: Any,
) -> None:
    approvers = {}
    for name in ("bob", "carol"):
        accounts.create_user(docker_core, OPERATOR, name, "approver", PASSWORD)
        approvers[name] = accounts.create_token(docker_core, OPERATOR, name)
    client = docker_app.test_client()
    created = client.post("/api/v1/sandboxes", headers=bearer(engineer), json={
        "dataset": "demo", "example": "mlp-horovod", "kind": "mpi", "ranks": 2,
        "limits": {"cpus": 1, "memory_mb": 2048}})
    assert created.status_code == 201, created.get_json()
    sandbox = created.get_json()
    assert sandbox["image_digest"] == horovod_image.digest

    containers = docker_client.containers.list(
        all=True, filters={"label": f"sealroom.sandbox={sandbox['id']}"})
    assert len(containers) == 2
    launcher = next(c for c in containers if c.labels["sealroom.member"] == "main")
    for container in containers:
        attrs = container.attrs
        assert assert_hardened(attrs, NetworkPlan.MEMBERS_ONLY, launcher.id) == []
        assert attrs["HostConfig"]["NetworkMode"] in ("none", f"container:{launcher.id}")

    final = wait_for(client, sandbox["id"], engineer, lambda b: b["status"] != "running",
                     timeout=300)
    logs = client.get(f"/api/v1/sandboxes/{sandbox['id']}/logs", headers=bearer(engineer))
    text = logs.get_data(as_text=True)
    assert final["status"] == "succeeded", (final, text)
    assert b"epoch 5/5" in rank_output(logs.data, 0) and b"rank 1/2" in rank_output(logs.data, 1)
    one = client.get(f"/api/v1/sandboxes/{sandbox['id']}/logs?rank=1", headers=bearer(engineer))
    assert b"rank 1/2" in one.data and b"epoch" not in one.data and b"<stdout>" not in one.data

    outbox = wait_for_outbox(client, engineer, sandbox["id"])
    names = {f["name"]: f for f in outbox["files"]}
    assert {"model.safetensors", "metrics.json"} <= set(names)
    outbox = docker_core.storage.outbox(sandbox["id"])
    metrics = json.loads((outbox / "metrics.json").read_text())
    assert metrics["ranks"] == 2 and metrics["accuracy"] > 0.8
    # Nothing of the cluster is left: containers and its keys went with it.
    assert not docker_client.containers.list(
        all=True, filters={"label": f"sealroom.sandbox={sandbox['id']}"})
    assert not (docker_core.settings.sandboxes_dir / sandbox["id"] / "mpi").exists()

    release = client.post("/api/v1/releases", headers=bearer(engineer), json={
        "sandbox": sandbox["id"], "files": ["model.safetensors", "metrics.json"],
        "justification": "the data-parallel example"})
    assert release.status_code == 201, release.get_json()
    settled = settled_release(client, engineer, release.get_json())  # its model is attacked
    assert settled["status"] == "in_review", settled["checks"]
    rid = release.get_json()["id"]
    for token in approvers.values():
        approved = client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(token))
        assert approved.status_code == 200, approved.get_json()
    assert approved.get_json()["status"] == "released"
    assert client.get(f"/api/v1/releases/{rid}/bundle",
                      headers=bearer(engineer)).status_code == 200
