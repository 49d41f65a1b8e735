"""The walking skeleton against the real engine: the example trains to completion in a
sandbox launched through the API, hardened as promised, with outputs in the outbox."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest
from flask import Flask
from sqlmodel import select

from audit.chain import verify
from audit.models import AuditEvent
from console.core import Sealroom
from console.services import accounts, datasets
from sandbox.hardening import assert_hardened
from sandbox.spec import NetworkPlan
from tests.helpers import OPERATOR, PASSWORD, bearer, wait_for_outbox, write_dataset

pytestmark = pytest.mark.docker


@pytest.fixture
def engineer(docker_core: Sealroom, tmp_path: Path) -> str:
    accounts.create_user(docker_core, OPERATOR, "alice", "engineer", PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "src", 10_000),
                              "demo", ["alice"])
    return accounts.create_token(docker_core, OPERATOR, "alice")


def wait_for(client: Any, sandbox_id: str, token: str, done: Callable[[dict[str, Any]], bool],
             timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(token)).get_json()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def test_example_trains_to_completion(docker_app: Flask, engineer: str,
                                      docker_client: docker.DockerClient,
                                      docker_core: Sealroom) -> None:
    client = docker_app.test_client()
    response = client.post("/api/v1/sandboxes", headers=bearer(engineer), json={
        "dataset": "demo", "example": "mlp", "limits": {"cpus": 1, "memory_mb": 2048}})
    assert response.status_code == 201, response.get_json()
    sandbox = response.get_json()
    assert sandbox["status"] == "running"

    # While it runs, the container is hardened exactly as promised.
    (container,) = docker_client.containers.list(
        all=True, filters={"label": f"sealroom.sandbox={sandbox['id']}"})
    attrs = container.attrs
    assert assert_hardened(attrs, NetworkPlan.NONE) == []
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True and not host["Privileged"]
    assert "/tmp" in host["Tmpfs"]
    assert host["Memory"] == 2048 * 1024 * 1024 and host["NanoCpus"] == 1_000_000_000
    assert host["PidsLimit"] == 256
    assert attrs["Config"]["User"] == "10001:10001"
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert set(mounts) == {"/data/demo", "/workspace", "/outbox"}
    assert mounts["/data/demo"]["RW"] is False
    assert attrs["Config"]["Labels"]["sealroom.owner"] == "alice"
    assert attrs["Image"] == sandbox["image_digest"]

    final = wait_for(client, sandbox["id"], engineer, lambda b: b["status"] != "running")
    logs = client.get(f"/api/v1/sandboxes/{sandbox['id']}/logs", headers=bearer(engineer))
    assert final["status"] == "succeeded", (final, logs.get_data(as_text=True))
    assert final["exit_code"] == 0
    assert "epoch" in logs.get_data(as_text=True)

    outbox = wait_for_outbox(client, engineer, sandbox["id"])
    assert outbox["state"] == "ready"
    names = {f["name"]: f for f in outbox["files"]}
    assert {"model.safetensors", "metrics.json"} <= set(names)
    assert names["model.safetensors"]["size"] > 0
    assert len(names["model.safetensors"]["sha256"]) == 64
    metrics_path = docker_core.storage.outbox(sandbox["id"]) / "metrics.json"
    assert json.loads(metrics_path.read_text())["accuracy"] > 0.8

    # the container is gone once it ended; the log was kept
    assert not docker_client.containers.list(
        all=True, filters={"label": f"sealroom.sandbox={sandbox['id']}"})
    with docker_core.transaction() as session:
        actions = [e.action for e in session.exec(select(AuditEvent)).all()
                   if e.target == f"sandbox:{sandbox['id']}"]
        assert verify(session).ok
    for action in ("sandbox:code:upload", "sandbox:sandbox:launch", "sandbox:sandbox:start",
                   "sandbox:sandbox:exit", "sandbox:logs:view", "sandbox:outbox:view"):
        assert action in actions


def test_stop_and_time_limit(docker_app: Flask, engineer: str, docker_core: Sealroom,
                             tmp_path: Path) -> None:
    client = docker_app.test_client()
    script = tmp_path / "sleep.py"
    script.write_text("import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n")
    with script.open("rb") as handle:
        response = client.post("/api/v1/sandboxes", headers=bearer(engineer), data={
            "request": json.dumps({"dataset": "demo", "command": "python sleep.py",
                                   "limits": {"timeout_s": 600}}),
            "code": (handle, "sleep.py")}, content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()
    sandbox_id = response.get_json()["id"]
    stopped = client.post(f"/api/v1/sandboxes/{sandbox_id}/stop", headers=bearer(engineer))
    assert stopped.get_json()["status"] == "stopped"
    again = client.post(f"/api/v1/sandboxes/{sandbox_id}/stop", headers=bearer(engineer))
    assert again.status_code == 200 and again.get_json()["status"] == "stopped"

    response = client.post("/api/v1/sandboxes", headers=bearer(engineer), json={
        "dataset": "demo", "command": "python -c 'import time; time.sleep(600)'",
        "example": "mlp", "limits": {"timeout_s": 2}})
    sandbox_id = response.get_json()["id"]
    final = wait_for(client, sandbox_id, engineer, lambda b: b["status"] != "running", 60)
    assert final["status"] == "timed_out"
    assert "time limit" in final["reason"]


def test_oom_kill_is_detected(docker_app: Flask, engineer: str) -> None:
    client = docker_app.test_client()
    response = client.post("/api/v1/sandboxes", headers=bearer(engineer), json={
        "dataset": "demo", "example": "mlp", "limits": {"memory_mb": 96},
        "command": "python -c \"b = bytearray(512 * 1024 * 1024); print(len(b))\""})
    assert response.status_code == 201, response.get_json()
    final = wait_for(client, response.get_json()["id"], engineer,
                     lambda b: b["status"] != "running", 60)
    assert final["status"] == "oom_killed", final
    assert "out of memory" in final["reason"]


def test_failing_script_shows_its_exit_code(docker_app: Flask, engineer: str) -> None:
    client = docker_app.test_client()
    response = client.post("/api/v1/sandboxes", headers=bearer(engineer), json={
        "dataset": "demo", "example": "mlp", "command": "python -c 'raise SystemExit(3)'"})
    final = wait_for(client, response.get_json()["id"], engineer,
                     lambda b: b["status"] != "running", 60)
    assert final["status"] == "failed" and final["exit_code"] == 3


def test_launch_fails_closed_on_the_real_engine_when_audit_cannot_be_written(
        docker_app: Flask, engineer: str, docker_client: docker.DockerClient,
        docker_core: Sealroom) -> None:
    """With the audit store unwritable, the refused launch leaves no container on the engine
    (the container made before the audited transaction is removed unstarted), no row, no
    directory."""
    from sandbox.backend import LABEL_INSTALLATION

    with docker_core.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_event "
            "BEGIN SELECT RAISE(ABORT, 'audit store unwritable'); END")
    response = docker_app.test_client().post(
        "/api/v1/sandboxes", headers=bearer(engineer),
        json={"dataset": "demo", "example": "mlp", "limits": {"cpus": 1, "memory_mb": 2048}})
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["error"]["code"] == "audit_unavailable"
    label = f"{LABEL_INSTALLATION}={docker_core.settings.installation_id()}"
    assert docker_client.containers.list(all=True, filters={"label": label}) == []
    from console.models import Sandbox

    with docker_core.transaction() as session:
        assert session.exec(select(Sandbox)).all() == []
    assert list(docker_core.settings.sandboxes_dir.iterdir()) == []
