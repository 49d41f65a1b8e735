"""The concurrency cap on the real engine: launches sent at once cannot all take the last
places; the refused ones leave no container behind."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import pytest
from flask import Flask

from console.core import Sealroom
from console.services import accounts, datasets
from sandbox.backend import LABEL_INSTALLATION, LABEL_SANDBOX
from tests.helpers import OPERATOR, PASSWORD, bearer, change_policy, write_dataset

pytestmark = pytest.mark.docker

LAUNCHES, CAP = 8, 2


def test_concurrent_launches_on_the_engine_leave_exactly_the_cap_running(
        docker_app: Flask, docker_core: Sealroom, docker_client: docker.DockerClient,
        tmp_path: Path) -> None:
    accounts.create_user(docker_core, OPERATOR, "alice", "engineer", PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "src"), "demo",
                              ["alice"])
    token = accounts.create_token(docker_core, OPERATOR, "alice")
    change_policy(docker_core, {"resources": {"roles": {"engineer": {"max_concurrent": CAP}}}})
    start = threading.Barrier(LAUNCHES)

    def launch(_: int) -> tuple[int, Any]:
        client = docker_app.test_client()
        start.wait()
        response = client.post("/api/v1/sandboxes", headers=bearer(token), json={
            "dataset": "demo", "example": "mlp",
            "command": "python -c 'import time; time.sleep(600)'"})
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(LAUNCHES) as pool:
        answers = list(pool.map(launch, range(LAUNCHES)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201] * CAP + [403] * (LAUNCHES - CAP), answers
    launched = {body["id"] for status, body in answers if status == 201}
    label = f"{LABEL_INSTALLATION}={docker_core.settings.installation_id()}"
    containers = docker_client.containers.list(all=True, filters={"label": label})
    assert {c.labels[LABEL_SANDBOX] for c in containers} == launched
    assert all(c.status == "running" for c in containers)
