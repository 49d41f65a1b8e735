"""The engine the project manages restarted under a running sandbox. With live-restore (how
the host bootstrap configures it) the sandbox keeps running and its log goes on; without it,
the sandbox ends with a reason saying the engine stopped it, its log intact, and no container
left behind, without waiting for the console to restart.

This test stops and starts the host's dockerd, so it needs root and an engine this host runs
(a `/var/run/docker.pid`); it restores live-restore whatever happens."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from flask import Flask

from console.core import Sealroom
from tests.helpers import bearer
from tests.integration.test_api_launch import engineer, wait_for  # noqa: F401  (fixture)

pytestmark = pytest.mark.docker

DAEMON_JSON = Path("/etc/docker/daemon.json")
PID_FILE = Path("/var/run/docker.pid")
#: Prints a numbered line every 0.1 s until told to stop (a file in its workspace).
JOB = b"""\
import os, sys, time
for tick in range(3000):
    print(f"tick {tick}", flush=True)
    if os.path.exists("/workspace/stop"):
        sys.exit(0)
    time.sleep(0.1)
"""


def _engine_pid() -> int:
    if os.geteuid() != 0 or not PID_FILE.is_file():
        pytest.skip("restarting the engine needs root and a dockerd this host runs")
    return int(PID_FILE.read_text().strip())


def _until(what: str, check: Any, attempts: int = 600) -> Any:
    for _ in range(attempts):
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _answers() -> bool:
    try:
        docker.from_env().ping()
        return True
    except Exception:  # noqa: BLE001 - not answering yet
        return False


def _running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie has stopped: it only waits to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _restart_engine() -> None:
    pid = _engine_pid()
    command = [c.decode() for c in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    os.kill(pid, signal.SIGTERM)
    _until("dockerd to stop", lambda: not _running(pid), attempts=900)
    # Started as the host bootstrap starts it: detached, so it is never this test's child.
    subprocess.run(["sh", "-c", 'setsid nohup "$@" >>/var/log/sealroom-dockerd.log 2>&1 '
                    "</dev/null &", "sh", *command], check=True)
    _until("dockerd to answer", _answers, attempts=900)


def _live_restore(enabled: bool) -> None:
    config = json.loads(DAEMON_JSON.read_text()) if DAEMON_JSON.is_file() else {}
    config["live-restore"] = enabled
    DAEMON_JSON.write_text(json.dumps(config, indent=2) + "\n")
    os.kill(_engine_pid(), signal.SIGHUP)  # live-restore is reloadable
    _until(f"live-restore {enabled}",
           lambda: docker.from_env().info().get("LiveRestoreEnabled") is enabled)


@pytest.fixture
def live_restore_kept() -> Iterator[None]:
    _engine_pid()
    try:
        yield
    finally:
        if _answers():
            _live_restore(True)


def _launch(client: Any, token: str) -> str:
    response = client.post("/api/v1/sandboxes", headers=bearer(token),
                           data={"request": json.dumps({"dataset": "demo",
                                                        "command": "python job.py"}),
                                 "code": (io.BytesIO(JOB), "job.py")},
                           content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def _log(client: Any, token: str, sandbox_id: str) -> str:
    return str(client.get(f"/api/v1/sandboxes/{sandbox_id}/logs",
                          headers=bearer(token)).get_data(as_text=True))


def _ticks(text: str) -> list[int]:
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith("tick ")]


def test_with_live_restore_the_sandbox_keeps_running_and_its_log_goes_on(
        docker_app: Flask, engineer: str, docker_core: Sealroom,  # noqa: F811
        live_restore_kept: None) -> None:
    _live_restore(True)
    client = docker_app.test_client()
    sandbox_id = _launch(client, engineer)
    _until("the first ticks", lambda: len(_ticks(_log(client, engineer, sandbox_id))) >= 3)
    _restart_engine()
    before = max(_ticks(_log(client, engineer, sandbox_id)))
    _until("ticks after the restart",
           lambda: max(_ticks(_log(client, engineer, sandbox_id)) or [0]) > before + 5)
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}",
                      headers=bearer(engineer)).get_json()["status"] == "running"
    (docker_core.backend.storage.workspace(sandbox_id) / "stop").touch()
    final = wait_for(client, sandbox_id, engineer,
                     lambda b: b["status"] not in ("starting", "running"))
    assert final["status"] == "succeeded", final
    ticks = _ticks(_log(client, engineer, sandbox_id))
    assert ticks == list(range(len(ticks)))  # every line, once, in order


def test_without_live_restore_it_ends_saying_so_with_its_log_and_nothing_left(
        docker_app: Flask, engineer: str, docker_core: Sealroom,  # noqa: F811
        live_restore_kept: None) -> None:
    _live_restore(False)
    client = docker_app.test_client()
    sandbox_id = _launch(client, engineer)
    _until("the first ticks", lambda: len(_ticks(_log(client, engineer, sandbox_id))) >= 3)
    _restart_engine()
    final = wait_for(client, sandbox_id, engineer,
                     lambda b: b["status"] not in ("starting", "running"))
    assert final["status"] == "failed", final
    assert final["reason"].startswith("ended when the container engine stopped"), final
    ticks = _ticks(_log(client, engineer, sandbox_id))
    assert len(ticks) >= 3 and ticks == list(range(len(ticks)))
    _until("its container to be removed", lambda: not docker.from_env().containers.list(
        all=True, filters={"label": f"sealroom.sandbox={sandbox_id}"}))
