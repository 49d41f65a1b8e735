"""Against the real engine: reconciliation on console start, the engine being down, and a
console killed with -9 in the middle of a run losing nothing."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from sqlmodel import select

from audit.chain import verify
from audit.models import AuditEvent
from console.app import create_app
from console.core import Sealroom
from console.models import Sandbox
from console.services import accounts, datasets, images
from console.services import sandboxes as sandbox_service
from console.settings import Settings
from sandbox.backend import LABEL_INSTALLATION, LABEL_OWNER, LABEL_SANDBOX
from tests.helpers import (
    OPERATOR,
    PASSWORD,
    bearer,
    free_port,
    recorded,
    serve_console,
    write_dataset,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def token(docker_core: Sealroom, tmp_path: Path) -> str:
    accounts.create_user(docker_core, OPERATOR, "alice", "engineer", PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "d"), "demo",
                              ["role:engineer"])
    return accounts.create_token(docker_core, OPERATOR, "alice")


def _sleeper(client: Any, token: str) -> str:
    response = client.post("/api/v1/sandboxes", headers=bearer(token), json={
        "dataset": "demo", "example": "mlp",
        "command": "python -c 'import time; time.sleep(300)'"})
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def test_orphans_are_removed_and_vanished_sandboxes_marked_lost(
        docker_core: Sealroom, token: str, docker_client: docker.DockerClient,
        base_image: Any) -> None:
    client = create_app(sealroom=docker_core).test_client()
    kept = _sleeper(client, token)
    vanished = _sleeper(client, token)
    installation = docker_core.settings.installation_id()
    orphan = docker_client.containers.create(
        base_image.digest, ["sleep", "300"], network_mode="none",
        labels={LABEL_SANDBOX: "sb-orphan00000", LABEL_OWNER: "alice",
                LABEL_INSTALLATION: installation})
    stranger = docker_client.containers.create(
        base_image.digest, ["sleep", "300"], network_mode="none",
        labels={LABEL_SANDBOX: "sb-stranger000", LABEL_OWNER: "bob",
                LABEL_INSTALLATION: "another-installation"})
    try:
        docker_client.containers.list(all=True, filters={
            "label": f"{LABEL_SANDBOX}={vanished}"})[0].remove(force=True)

        sandbox_service.reconcile(docker_core)

        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(orphan.id)
        docker_client.containers.get(stranger.id)  # other installations are left alone
        with docker_core.transaction() as session:
            assert session.get(Sandbox, vanished).status == "lost"  # type: ignore[union-attr]
            assert session.get(Sandbox, kept).status == "running"  # type: ignore[union-attr]
        assert [e.target for e in recorded(docker_core, "system:container:remove_orphan")] == \
            ["sandbox:sb-orphan00000"]
        lost = recorded(docker_core, "sandbox:sandbox:lost")
        assert [(e.target, e.actor) for e in lost] == [(f"sandbox:{vanished}", "system")]
    finally:
        stranger.remove(force=True)


def _installation(settings: Settings, base_image: Any, tmp_path: Path) -> tuple[Sealroom, str]:
    """A separate installation with the image registered, an engineer and the demo data."""
    core = Sealroom(settings)
    images.register_image(core, OPERATOR, "base", base_image.tag, base_image.digest)
    accounts.create_user(core, OPERATOR, "alice", "engineer", PASSWORD)
    datasets.register_dataset(core, OPERATOR, write_dataset(tmp_path / "d"), "demo",
                              ["role:engineer"])
    return core, accounts.create_token(core, OPERATOR, "alice")


def test_engine_down_gives_503_and_leaves_nothing(settings: Settings, base_image: Any,
                                                  tmp_path: Path) -> None:
    import dataclasses

    down = dataclasses.replace(settings, docker_host="unix:///nonexistent/docker.sock")
    core, token = _installation(down, base_image, tmp_path)
    client = create_app(sealroom=core).test_client()
    started = time.monotonic()
    response = client.post("/api/v1/sandboxes", headers=bearer(token),
                           json={"dataset": "demo", "example": "mlp"})
    assert time.monotonic() - started < 30  # no wait for the 60 s operation timeout
    assert response.status_code == 503
    assert "engine is not available" in response.get_json()["error"]["message"]
    assert recorded(core, "sandbox:sandbox:launch")[-1].outcome == "failed"
    with core.transaction() as session:
        assert session.exec(select(Sandbox)).all() == []
    assert list(down.sandboxes_dir.iterdir()) == []


def test_console_killed_mid_run_loses_nothing(settings: Settings, base_image: Any,
                                              tmp_path: Path,
                                              docker_client: docker.DockerClient) -> None:
    core, token = _installation(settings, base_image, tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v1/sandboxes"
    process = serve_console(settings.home, port)
    try:
        created = requests.post(url, headers=bearer(token), timeout=60, json={
            "dataset": "demo", "example": "mlp",
            "command": "python -c 'import time; print(\"working\", flush=True); "
                       "time.sleep(4); print(\"done\", flush=True)'"})
        assert created.status_code == 201, created.text
        sandbox_id = created.json()["id"]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        time.sleep(6)  # the sandbox finishes while no console is running

        process = serve_console(settings.home, port)  # reconciles on start
        body = requests.get(f"{url}/{sandbox_id}", headers=bearer(token), timeout=30).json()
        assert body["status"] == "succeeded", body
        log = requests.get(f"{url}/{sandbox_id}/logs", headers=bearer(token), timeout=30)
        assert "working" in log.text and "done" in log.text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        label = f"{LABEL_INSTALLATION}={settings.installation_id()}"
        for container in docker_client.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)
    with core.transaction() as session:
        assert verify(session).ok
        starts = session.exec(select(AuditEvent).where(
            AuditEvent.action == "system:console:start")).all()
        assert len(starts) == 2
    assert (settings.sandboxes_dir / sandbox_id / "log-0.txt").exists()  # the console's copy
