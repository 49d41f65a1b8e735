"""Policies against the real engine: an image rule and a resource rule refuse launches before
any container exists; once the officer allows the image by digest, a launch runs; a newer
policy that forbids the running sandbox lists it, and the officer's stop ends the container."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import docker
import pytest
from flask import Flask
from sqlmodel import select

from audit.chain import verify
from audit.events import Actor
from audit.models import AuditEvent
from console.core import Caller, Sealroom
from console.services import accounts, datasets
from console.services import oversight as oversight_service
from console.services import policy as policy_service
from sandbox.backend import LABEL_INSTALLATION
from tests.helpers import OPERATOR, PASSWORD, bearer, change_policy, write_dataset

pytestmark = pytest.mark.docker

SLEEPER = "python -c 'import time; print(\"up\", flush=True); time.sleep(600)'"


@pytest.fixture
def tokens(docker_core: Sealroom, tmp_path: Path) -> dict[str, str]:
    for name, role in [("alice", "engineer"), ("sam", "security_officer")]:
        accounts.create_user(docker_core, OPERATOR, name, role, PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "src"), "demo",
                              ["alice"])
    return {n: accounts.create_token(docker_core, OPERATOR, n) for n in ("alice", "sam")}


def _containers(client: docker.DockerClient, core: Sealroom) -> list[Any]:
    label = f"{LABEL_INSTALLATION}={core.settings.installation_id()}"
    return list(client.containers.list(all=True, filters={"label": label}))


def _launch(client: Any, token: str, **limits: Any) -> Any:
    return client.post("/api/v1/sandboxes", headers=bearer(token), json={
        "dataset": "demo", "example": "mlp", "command": SLEEPER,
        "limits": {"cpus": 0.5, "memory_mb": 256, **limits}})


def test_image_and_resource_rules_on_the_real_engine(
        docker_app: Flask, docker_core: Sealroom, tokens: dict[str, str],
        docker_client: docker.DockerClient, base_image: Any) -> None:
    client = docker_app.test_client()
    other = "sha256:" + "0" * 64
    change_policy(docker_core, {"images": {"allow_registered": False, "digests": [other]}})
    refused = _launch(client, tokens["alice"])
    assert refused.status_code == 403
    assert refused.get_json()["error"]["rule"] == "images.digests"
    assert _containers(docker_client, docker_core) == []

    change_policy(docker_core, {"images": {"digests": [base_image.digest]},
                                "resources": {"roles": {"engineer": {"max_memory_mb": 512}}}})
    too_big = _launch(client, tokens["alice"], memory_mb=1024)
    assert too_big.status_code == 403
    assert too_big.get_json()["error"]["rule"] == "resources.roles.engineer.max_memory_mb"
    assert _containers(docker_client, docker_core) == []

    allowed = _launch(client, tokens["alice"])
    assert allowed.status_code == 201, allowed.get_json()
    sandbox_id = allowed.get_json()["id"]
    (container,) = _containers(docker_client, docker_core)
    assert container.attrs["Image"] == base_image.digest
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"

    # a newer policy forbids what runs: listed, recorded, and stopped by the officer
    version = change_policy(docker_core, {"resources": {"roles": {"engineer": {
        "max_memory_mb": 128}}}})
    (finding,) = policy_service.forbidden_sandboxes(docker_core)
    assert (finding.id, finding.rule) == (sandbox_id, "resources.roles.engineer.max_memory_mb")
    officer = Caller(Actor("sam", "security_officer", "session", "127.0.0.1"))
    stopped = oversight_service.stop(docker_core, officer, sandbox_id)
    assert stopped.status == "stopped"
    deadline = time.monotonic() + 20
    while _containers(docker_client, docker_core) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _containers(docker_client, docker_core) == []
    with docker_core.transaction() as session:
        events = session.exec(select(AuditEvent).where(
            AuditEvent.target == f"sandbox:{sandbox_id}")).all()
        assert verify(session).ok
    decided = [e for e in events if e.action == "policy:decision:deny"]
    assert json.loads(decided[0].details)["policy_version"] == version
    stop = [e for e in events if e.action == "sandbox:sandbox:stop"][-1]
    assert (stop.actor, json.loads(stop.details)["rule"]) == \
        ("sam", "resources.roles.engineer.max_memory_mb")
