"""Disk quotas and ulimits for real: each sandbox's workspace and outbox are loop-mounted
ext4 volumes of the policy's sizes and /tmp a tmpfs of its size, so writing past any of them
fails with ENOSPC inside the sandbox while the host's disk and the console carry on; the
ulimits (`nofile`, `nproc`, `core` 0) are what a process inside sees.

Every volume made here is removed in teardown, and the tests check that no loop device
still holds one.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from flask import Flask

from console.core import Sealroom
from console.files import secure_data_dir
from console.services import accounts, datasets
from sandbox.backend import LABEL_INSTALLATION
from sandbox.docker_backend import DockerBackend
from sandbox.errors import InvalidUpload
from sandbox.files import UploadLimits
from sandbox.hardening import ULIMITS, assert_hardened
from sandbox.outbox import OutboxRules
from sandbox.spec import SANDBOX_UID, Limits, NetworkPlan, SandboxSpec
from sandbox.storage import LocalStorage
from sandbox.volumes import OUTBOX, WORKSPACE
from tests.engine_fixtures import need_engine
from tests.helpers import OPERATOR, PASSWORD, bearer, change_policy, run_to_success, write_dataset

pytestmark = pytest.mark.docker

INSTALLATION = f"test-quotas-{uuid.uuid4().hex[:12]}"
WORKSPACE_MB, OUTBOX_MB, TMP_MB = 16, 16, 8

#: Writes 64 MB into each of /workspace, /outbox and /tmp (more than any quota here) and
#: says how each ended; keeps a small file in the outbox; reports the ulimits it lives under.
FILLER = """
import errno, json, os, resource, subprocess

def fill(path):
    chunk = b"x" * (1 << 20)
    try:
        with open(path, "wb") as handle:
            for _ in range(64):
                handle.write(chunk)
                handle.flush()
            os.fsync(handle.fileno())
        return "no error"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        if os.path.exists(path):
            os.unlink(path)

with open("/outbox/kept.txt", "w") as handle:
    handle.write("still here\\n")
result = {place: fill(f"/{place}/fill.bin") for place in ("workspace", "outbox", "tmp")}
shell = subprocess.run(["bash", "-c", "ulimit -n; ulimit -u; ulimit -c"], capture_output=True,
                       text=True, check=True).stdout.split()
result["ulimit"] = dict(zip(("n", "u", "c"), shell))
result["rlimit"] = {name: list(resource.getrlimit(getattr(resource, "RLIMIT_" + name.upper())))
                    for name in ("nofile", "nproc", "core")}
print("RESULT " + json.dumps(result), flush=True)
"""


def _loops_over(image: Path) -> str:
    found = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True,
                           check=True)
    return found.stdout.strip()


def _mount_options(path: Path) -> set[str]:
    found = subprocess.run(["findmnt", "-n", "-o", "OPTIONS", "--mountpoint", str(path)],
                           capture_output=True, text=True, check=False)
    return set(found.stdout.strip().split(",")) if found.stdout.strip() else set()


def _mounted_under(root: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(root) in line]


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[LocalStorage]:
    if os.geteuid() != 0:
        need_engine("sandbox volumes need root (mount, loop devices)")
    local = LocalStorage(tmp_path / "sandboxes")
    yield local
    images = [local.volumes.image(p.name, kind) for p in local.root.iterdir()
              for kind in (WORKSPACE, OUTBOX)] if local.root.is_dir() else []
    for entry in local.root.iterdir() if local.root.is_dir() else ():
        local.volumes.remove(entry.name)
    assert [i for i in images if _loops_over(i)] == []
    assert _mounted_under(local.root) == []


@pytest.fixture
def backend(storage: LocalStorage, docker_client: docker.DockerClient) -> Iterator[DockerBackend]:
    yield DockerBackend(installation=INSTALLATION, storage=storage)
    label = f"{LABEL_INSTALLATION}={INSTALLATION}"
    for container in docker_client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)




def _result(output: bytes) -> Any:
    (line,) = [x for x in output.decode().splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def _filler_spec(storage: LocalStorage, image: str) -> SandboxSpec:
    sandbox_id = f"sb-quota-{uuid.uuid4().hex[:8]}"
    limits = Limits(cpus=0.5, memory_mb=256, pids=64, timeout_s=120, tmp_mb=TMP_MB,
                    workspace_mb=WORKSPACE_MB, outbox_mb=OUTBOX_MB)
    storage.create(sandbox_id, limits)
    (storage.workspace(sandbox_id) / "fill.py").write_text(FILLER)
    storage.seal_staging(sandbox_id)
    return SandboxSpec(sandbox_id=sandbox_id, owner="alice", image=image,
                       command=("python3", "fill.py"), limits=limits)


def test_writing_past_each_quota_is_enospc_inside_and_the_ulimits_hold(
        backend: DockerBackend, storage: LocalStorage, python_image: str,
        docker_client: docker.DockerClient) -> None:
    spec = _filler_spec(storage, python_image)
    state = backend.create(spec)
    (container,) = docker_client.containers.list(
        all=True, filters={"label": f"sealroom.sandbox={spec.sandbox_id}"})
    assert assert_hardened(container.attrs, NetworkPlan.NONE) == []
    assert container.attrs["HostConfig"]["Tmpfs"]["/tmp"].endswith(f"size={TMP_MB}m")
    result = _result(run_to_success(backend, state))

    assert {k: result[k] for k in ("workspace", "outbox", "tmp")} == {
        "workspace": "ENOSPC", "outbox": "ENOSPC", "tmp": "ENOSPC"}
    assert result["ulimit"] == {"n": str(ULIMITS["nofile"]), "u": str(ULIMITS["nproc"]),
                                "c": "0"}
    assert result["rlimit"] == {name: [value, value] for name, value in ULIMITS.items()}
    # What the sandbox wrote stayed inside its images, each no larger than its size.
    for kind, size_mb in ((WORKSPACE, WORKSPACE_MB), (OUTBOX, OUTBOX_MB)):
        image = storage.volumes.image(spec.sandbox_id, kind)
        assert os.stat(image).st_blocks * 512 <= size_mb * 1024 * 1024
        assert {"nosuid", "nodev", "rw"} <= _mount_options(
            storage.volumes.mountpoint(spec.sandbox_id, kind))
    assert os.stat(storage.outbox(spec.sandbox_id)).st_uid == SANDBOX_UID


def test_an_ended_sandbox_keeps_its_outbox_read_only_and_lets_go_of_the_rest(
        backend: DockerBackend, storage: LocalStorage, python_image: str) -> None:
    spec = _filler_spec(storage, python_image)
    run_to_success(backend, backend.create(spec))
    storage.release(spec.sandbox_id)
    storage.release(spec.sandbox_id)  # safe to repeat
    volumes = storage.volumes
    workspace_image = volumes.image(spec.sandbox_id, WORKSPACE)
    assert not workspace_image.exists() and not _loops_over(workspace_image)
    assert "ro" in _mount_options(volumes.mountpoint(spec.sandbox_id, OUTBOX))
    listing = storage.list_outbox(spec.sandbox_id, OutboxRules())
    assert [item.path for item in listing.items] == ["kept.txt"]

    # Let go of (a console start does so for every ended sandbox no running one needs) ...
    assert storage.settle(()) == [spec.sandbox_id]
    outbox_image = volumes.image(spec.sandbox_id, OUTBOX)
    assert not _loops_over(outbox_image) and _mounted_under(storage.root) == []
    # ... and mounted again, read-only, when read: by the gate, or as a later input.
    with storage.open_outbox_file(spec.sandbox_id, "kept.txt") as handle:
        assert handle.read() == b"still here\n"
    assert "ro" in _mount_options(volumes.mountpoint(spec.sandbox_id, OUTBOX))
    assert storage.input_path(spec.sandbox_id) == storage.outbox(spec.sandbox_id)
    assert storage.hash_outbox(spec.sandbox_id, OutboxRules()).state == "ready"

    storage.discard(spec.sandbox_id)
    assert not _loops_over(outbox_image) and _mounted_under(storage.root) == []
    assert not (storage.root / spec.sandbox_id).exists()


# --- through the console -------------------------------------------------------------------


@pytest.fixture
def engineer(docker_core: Sealroom, tmp_path: Path) -> str:
    accounts.create_user(docker_core, OPERATOR, "alice", "engineer", PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "src", 100),
                              "demo", ["alice"])
    return accounts.create_token(docker_core, OPERATOR, "alice")


def _launch_script(client: Any, token: str, path: Path) -> Any:
    with path.open("rb") as handle:
        return client.post("/api/v1/sandboxes", headers=bearer(token), data={
            "request": json.dumps({"dataset": "demo", "command": f"python {path.name}",
                                   "limits": {"cpus": 0.5, "memory_mb": 256,
                                              "timeout_s": 120}}),
            "code": (handle, path.name)}, content_type="multipart/form-data")


def _wait(client: Any, token: str, sandbox_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, Any] = client.get(f"/api/v1/sandboxes/{sandbox_id}",
                                          headers=bearer(token)).get_json()
        if body["status"] not in ("starting", "running") or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_a_sandbox_filling_its_quotas_leaves_the_console_working(
        docker_app: Flask, docker_core: Sealroom, engineer: str, tmp_path: Path) -> None:
    change_policy(docker_core, {"resources": {"roles": {"engineer": {
        "max_workspace_mb": WORKSPACE_MB, "max_outbox_mb": OUTBOX_MB, "max_tmp_mb": TMP_MB}}}})
    docker_core.secure_files()  # as at every console start
    client = docker_app.test_client()
    filler = tmp_path / "fill.py"
    filler.write_text(FILLER)
    launched = _launch_script(client, engineer, filler)
    assert launched.status_code == 201, launched.get_json()
    first = launched.get_json()["id"]
    final = _wait(client, engineer, first)
    logs = client.get(f"/api/v1/sandboxes/{first}/logs", headers=bearer(engineer))
    assert final["status"] == "succeeded", (final, logs.get_data(as_text=True))
    result = _result(logs.get_data())
    assert (result["workspace"], result["outbox"], result["tmp"]) == ("ENOSPC",) * 3

    # The console answers, and the next sandbox runs.
    assert client.get("/api/v1/sandboxes", headers=bearer(engineer)).status_code == 200
    hello = tmp_path / "hello.py"
    hello.write_text("print('hello after the flood', flush=True)\n")
    second = _launch_script(client, engineer, hello)
    assert second.status_code == 201, second.get_json()
    done = _wait(client, engineer, second.get_json()["id"])
    assert done["status"] == "succeeded", done
    outbox = client.get(f"/api/v1/sandboxes/{first}/outbox", headers=bearer(engineer))
    assert outbox.status_code == 200, outbox.get_json()

    # Everything the launches made under the data directory is private already.
    assert [str(r) for r in secure_data_dir(docker_core.settings.home, repair=False)] == []


def test_code_larger_than_the_workspace_is_refused_as_the_uploads_fault(
        storage: LocalStorage) -> None:
    sandbox_id = f"sb-big-{uuid.uuid4().hex[:8]}"
    storage.create(sandbox_id, Limits(workspace_mb=WORKSPACE_MB, outbox_mb=OUTBOX_MB))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("weights.bin", b"\0" * (WORKSPACE_MB + 8) * 1024 * 1024)
    with pytest.raises(InvalidUpload, match="does not fit in the sandbox's workspace"):
        storage.stage_upload(sandbox_id, "code.zip", buffer.getvalue(),
                             UploadLimits(1 << 20, 64 << 20, 10))
    storage.discard(sandbox_id)
    assert _mounted_under(storage.root) == []
