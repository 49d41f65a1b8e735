"""Stopping many sandboxes on the real engine while the supervisor runs: each ends `stopped`
by the person who stopped it, with one end event, never `failed` with the exit code the stop
caused (143). The orders of the race are forced one by one with the fake backend in
tests/unit/console/test_stop_race.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from console.core import Sealroom
from console.services import accounts, datasets
from tests.helpers import OPERATOR, PASSWORD, bearer, change_policy, recorded, write_dataset

pytestmark = pytest.mark.docker

SANDBOXES = 20
SLEEPER = "import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n"
#: Small enough for 20 at once on a small host: a sleeping Python needs little.
LIMITS = {"cpus": 0.25, "memory_mb": 128, "timeout_s": 600}
END_ACTIONS = ("sandbox:sandbox:stop", "sandbox:sandbox:exit", "sandbox:sandbox:oom",
               "sandbox:sandbox:timeout", "sandbox:sandbox:lost")
WAIT_S = 300  # a bound on joining the stopping threads, never a delay


@pytest.fixture
def alice(docker_core: Sealroom, tmp_path: Path) -> str:
    accounts.create_user(docker_core, OPERATOR, "alice", "engineer", PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "src"), "demo",
                              ["alice"])
    change_policy(docker_core, {"resources": {"roles": {"engineer": {
        "max_concurrent": SANDBOXES, "max_workspace_mb": 32, "max_outbox_mb": 16,
        "max_tmp_mb": 16}}}})
    return accounts.create_token(docker_core, OPERATOR, "alice")


def _launch(docker_app: Flask, token: str, script: Path) -> str:
    with script.open("rb") as handle:
        response = docker_app.test_client().post(
            "/api/v1/sandboxes", headers=bearer(token), content_type="multipart/form-data",
            data={"request": json.dumps({"dataset": "demo", "command": "python sleep.py",
                                         "limits": LIMITS}),
                  "code": (handle, "sleep.py")})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["status"] == "running"
    return str(response.get_json()["id"])


def test_20_sandboxes_stopped_at_once_while_the_supervisor_runs_end_stopped_once(
        docker_app: Flask, docker_core: Sealroom, alice: str, tmp_path: Path) -> None:
    # The supervisor takes an exit code 143 as final at once: the race with the stop is at
    # its widest (the console waits a few seconds, for an engine shutting down).
    docker_core.engine_watch.settle_s = 0
    script = tmp_path / "sleep.py"
    script.write_text(SLEEPER)
    ids = [_launch(docker_app, alice, script) for _ in range(SANDBOXES)]
    start = threading.Barrier(SANDBOXES)
    answers: dict[str, Any] = {}

    def stop(sandbox_id: str) -> None:
        client = docker_app.test_client()
        start.wait(WAIT_S)
        response = client.post(f"/api/v1/sandboxes/{sandbox_id}/stop", headers=bearer(alice))
        answers[sandbox_id] = (response.status_code, response.get_json())

    threads = [threading.Thread(target=stop, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(t.is_alive() for t in threads)

    assert {(code, body["status"]) for code, body in answers.values()} == {(200, "stopped")}, \
        answers
    client = docker_app.test_client()
    for sandbox_id in ids:
        body = client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(alice)).get_json()
        assert (body["status"], body["reason"]) == ("stopped", "stopped by alice"), body
        ends = [(e.action, e.actor, e.outcome) for e in recorded(docker_core)
                if e.target == f"sandbox:{sandbox_id}" and e.action in END_ACTIONS]
        assert ends == [("sandbox:sandbox:stop", "alice", "ok")], (sandbox_id, ends)
