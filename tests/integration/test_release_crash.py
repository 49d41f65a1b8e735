"""A console killed with -9 while sealing a release leaves no half-released bundle, and the
next start finishes the sealing: the bundle then verifies and the record is consistent."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import struct
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from sqlmodel import select

from audit.chain import verify
from audit.models import AuditEvent
from console.core import Sealroom
from console.models import ReleaseRequest
from console.services import accounts, datasets, images
from console.settings import Settings
from sandbox.backend import LABEL_INSTALLATION
from sandbox.gate.verify import verify_bundle
from sandbox.storage import LocalStorage
from tests.helpers import OPERATOR, PASSWORD, bearer, free_port, serve_console, write_dataset

pytestmark = pytest.mark.docker

#: The sandbox waits for the big file to be in its outbox, then trains.
WAIT_THEN_TRAIN = ("python -c \"import os, runpy, time\n"
                   "while not os.path.exists('/outbox/big.safetensors'): time.sleep(0.1)\n"
                   "runpy.run_path('train.py', run_name='__main__')\"")
BIG_TENSOR_BYTES = 400 << 20  # large enough that sealing takes a moment to catch


def _big_safetensors(path: Path) -> None:
    header = json.dumps({"w": {"dtype": "U8", "shape": [BIG_TENSOR_BYTES],
                               "data_offsets": [0, BIG_TENSOR_BYTES]}}).encode()
    header += b" " * (-len(header) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(header)) + header)
        # 1 MiB of random bytes (no dataset row, and no text for the leak scan to decode)
        block = random.Random(7).randbytes(1 << 20)
        for _ in range(BIG_TENSOR_BYTES >> 20):
            out.write(block)


def test_kill_during_sealing_then_restart_finishes_it(
        settings: Settings, base_image: Any, tmp_path: Path,
        docker_client: docker.DockerClient) -> None:
    core = Sealroom(settings)
    images.register_image(core, OPERATOR, "base", base_image.tag, base_image.digest)
    tokens = {}
    for name, role in [("alice", "engineer"), ("bob", "approver"), ("carol", "approver")]:
        accounts.create_user(core, OPERATOR, name, role, PASSWORD)
        tokens[name] = accounts.create_token(core, OPERATOR, name)
    datasets.register_dataset(core, OPERATOR, write_dataset(tmp_path / "d", 2000), "demo",
                              ["role:engineer"])
    staged = settings.home / "big.safetensors"
    _big_safetensors(staged)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    process = serve_console(settings.home, port)
    try:
        sandbox = requests.post(f"{api}/sandboxes", headers=bearer(tokens["alice"]), timeout=60,
                                json={"dataset": "demo", "example": "mlp",
                                      "command": WAIT_THEN_TRAIN}).json()
        # Put there while the sandbox runs (it trains once the file is there), as its own
        # output would be: the outbox is listed and hashed once, when it ends. Copied onto
        # the outbox's volume outside the sandbox's view first, so the move is one rename.
        outbox = LocalStorage(settings.sandboxes_dir).outbox(sandbox["id"])
        shutil.copyfile(staged, outbox.parent / "big.safetensors")
        os.replace(outbox.parent / "big.safetensors", outbox / "big.safetensors")
        deadline = time.monotonic() + 120
        while requests.get(f"{api}/sandboxes/{sandbox['id']}", headers=bearer(tokens["alice"]),
                           timeout=30).json()["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        release = requests.post(f"{api}/releases", headers=bearer(tokens["alice"]), timeout=300,
                                json={"sandbox": sandbox["id"], "justification": "crash test",
                                      "files": ["big.safetensors", "metrics.json"]}).json()
        assert release["status"] == "in_review", release
        rid = release["id"]
        requests.post(f"{api}/releases/{rid}/approve", headers=bearer(tokens["bob"]), timeout=30)

        release_dir = settings.home / "releases" / rid
        def last_approval() -> None:
            with contextlib.suppress(requests.ConnectionError):  # the console dies mid-call
                requests.post(f"{api}/releases/{rid}/approve", headers=bearer(tokens["carol"]),
                              timeout=300)

        threading.Thread(target=last_approval, daemon=True).start()
        deadline = time.monotonic() + 60
        while not list(release_dir.glob("bundle.partial-*")):
            assert not (release_dir / "bundle").exists(), "sealing finished before the kill"
            assert time.monotonic() < deadline, "sealing never started"
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

        assert not (release_dir / "bundle").exists()
        check = Sealroom(settings)
        with check.transaction() as session:
            record = session.get(ReleaseRequest, rid)
            assert record is not None and record.status == "approved"
        check.close()

        process = serve_console(settings.home, port)  # resumes sealing on start
        body = requests.get(f"{api}/releases/{rid}", headers=bearer(tokens["alice"]),
                            timeout=60).json()
        assert body["status"] == "released", body
        assert not list(release_dir.glob("bundle.partial-*"))
        key = requests.get(f"{api}/keys/release.pem", timeout=10).content
        result = verify_bundle(release_dir / "bundle", key)
        assert sorted(result.approvers) == ["bob", "carol"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        label = f"{LABEL_INSTALLATION}={settings.installation_id()}"
        for container in docker_client.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)
    with core.transaction() as session:
        assert verify(session).ok
        seals = session.exec(select(AuditEvent).where(
            AuditEvent.action == "release:bundle:seal")).all()
        assert [e.outcome for e in seals] == ["ok"]
