"""Projects' volumes for real: loop-mounted ext4 images on this host (root, loop devices),
bound at /workspace by DockerBackend on the real engine. A project keeps its files from one
sandbox to the next; its quota is the filesystem's size, so writing past it fails with
ENOSPC inside the sandbox and nowhere else; the volume is mounted nosuid,nodev, remounted
when needed, and removed without leaving a mount or a loop device behind.

Every volume made here is removed in teardown, and the test checks no loop device still
holds it (the host has few).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.backend import LABEL_INSTALLATION, ContainerState
from sandbox.docker_backend import DockerBackend
from sandbox.hardening import assert_hardened
from sandbox.projects import (
    ProjectExists,
    ProjectFull,
    ProjectNotFound,
    ProjectVolumeError,
    ProjectVolumes,
)
from sandbox.spec import SANDBOX_GID, SANDBOX_UID, NetworkPlan, SandboxSpec
from sandbox.storage import LocalStorage
from tests.engine_fixtures import need_engine
from tests.helpers import run_to_success, staged_sandbox

pytestmark = pytest.mark.docker

INSTALLATION = f"test-projects-{uuid.uuid4().hex[:12]}"
QUOTA_MB = 16


def _loops_over(image: Path) -> str:
    """The loop devices backed by `image` (`losetup -j`), empty when none."""
    found = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True,
                           check=True)
    return found.stdout.strip()


def _mount_options(path: Path) -> tuple[str, set[str]]:
    found = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", "--mountpoint", str(path)],
                           capture_output=True, text=True, check=False)
    kind, _, options = found.stdout.strip().partition(" ")
    return kind, set(options.strip().split(","))


@pytest.fixture
def volumes(tmp_path: Path) -> Iterator[ProjectVolumes]:
    if os.geteuid() != 0:
        need_engine("project volumes need root (mount, loop devices)")
    projects = ProjectVolumes(tmp_path / "projects")
    yield projects
    images = [projects.image(name) for name in projects.names()]
    for name in projects.names():
        projects.remove(name)
    assert [i for i in images if _loops_over(i)] == []
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if str(projects.root) in line]


@pytest.fixture
def storage(tmp_path: Path, volumes: ProjectVolumes) -> LocalStorage:
    return LocalStorage(tmp_path / "sandboxes", projects=volumes)


@pytest.fixture
def backend(storage: LocalStorage, docker_client: docker.DockerClient) -> Iterator[DockerBackend]:
    yield DockerBackend(installation=INSTALLATION, storage=storage)
    # Containers first: the volumes' teardown (later) unmounts what they were bound to.
    label = f"{LABEL_INSTALLATION}={INSTALLATION}"
    for container in docker_client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)


def _project() -> str:
    return f"proj-{uuid.uuid4().hex[:8]}"




def _run(backend: DockerBackend, spec: SandboxSpec) -> bytes:
    return run_to_success(backend, backend.create(spec))


def _result(output: bytes) -> Any:
    (line,) = [x for x in output.decode().splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def _in_project(storage: LocalStorage, image: str, project: str, code: str,
                *, stage: bool = True) -> SandboxSpec:
    sandbox_id = staged_sandbox(storage, "sb-proj", {"job.py": code.encode()})
    if stage:
        storage.stage_into_project(sandbox_id, project)
    return SandboxSpec(sandbox_id=sandbox_id, owner="alice", image=image,
                       command=("python3", "job.py"), project=project)


# --- the volume on this host ----------------------------------------------------------------


def test_a_volume_is_loop_mounted_ext4_nosuid_nodev_and_its_size_is_the_quota(
        volumes: ProjectVolumes) -> None:
    name = _project()
    volumes.create(name, QUOTA_MB)
    with pytest.raises(ProjectExists):
        volumes.create(name, QUOTA_MB)
    image, mountpoint = volumes.image(name), volumes.mountpoint(name)
    assert image.stat().st_size == QUOTA_MB << 20
    assert image.stat().st_blocks * 512 < QUOTA_MB << 20  # sparse
    assert _loops_over(image)
    kind, options = _mount_options(mountpoint)
    assert kind == "ext4" and {"nosuid", "nodev", "rw"} <= options
    workspace = volumes.workspace(name)
    assert workspace == mountpoint / "workspace"
    info = workspace.lstat()
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert (info.st_uid, info.st_gid) == (SANDBOX_UID, SANDBOX_GID)
    assert sorted(p.name for p in mountpoint.iterdir()) == ["lost+found", "workspace"]
    assert list(workspace.iterdir()) == []  # lost+found stays outside what sandboxes see
    used, capacity = volumes.usage(name)
    assert (QUOTA_MB - 4) << 20 < capacity <= QUOTA_MB << 20 and 0 <= used < capacity


def test_a_volume_is_mounted_again_when_needed_with_its_files(volumes: ProjectVolumes) -> None:
    name = _project()
    volumes.create(name, QUOTA_MB)
    (volumes.workspace(name) / "ckpt").write_bytes(b"epoch 7")
    volumes.unmount(name)  # as after a reboot: no mount, no loop device
    assert not os.path.ismount(volumes.mountpoint(name))
    assert not _loops_over(volumes.image(name))
    volumes.unmount(name)  # safe to repeat
    assert (volumes.workspace(name) / "ckpt").read_bytes() == b"epoch 7"
    assert os.path.ismount(volumes.mountpoint(name))
    assert volumes.workspace(name) == volumes.mountpoint(name) / "workspace"  # idempotent
    assert len(_loops_over(volumes.image(name)).splitlines()) == 1  # one mount, not two


def test_removing_a_volume_leaves_no_mount_no_loop_device_no_file(
        volumes: ProjectVolumes) -> None:
    name = _project()
    volumes.create(name, QUOTA_MB)
    image = volumes.image(name)
    volumes.remove(name)
    volumes.remove(name)  # a missing project counts as done
    assert not _loops_over(image) and not image.exists()
    assert not volumes.exists(name) and volumes.names() == ()
    with pytest.raises(ProjectNotFound):
        volumes.workspace(name)
    volumes.create(name, QUOTA_MB)  # the name is free again
    assert list(volumes.workspace(name).iterdir()) == []


def test_copying_into_a_full_volume_says_the_project_is_full(volumes: ProjectVolumes,
                                                             tmp_path: Path) -> None:
    name = _project()
    volumes.create(name, QUOTA_MB)
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "big.bin").write_bytes(os.urandom(1 << 20) * (QUOTA_MB + 2))
    (staged / "train.py").write_text("print(1)\n")
    with pytest.raises(ProjectFull) as caught:
        volumes.copy_in(name, staged)
    assert caught.value.user_message == f"the project {name} is full"
    assert not (volumes.workspace(name) / "big.bin").exists()  # no half-copied file


# --- through the engine ---------------------------------------------------------------------


WRITER = """
import json, os
os.makedirs("/workspace/run1", exist_ok=True)
with open("/workspace/ckpt", "wb") as handle:
    handle.write(b"step 1000")
options = [line.split()[5].split(",") + line.split(" - ")[1].split()[2].split(",")
           for line in open("/proc/self/mountinfo") if line.split()[4] == "/workspace"][0]
print("RESULT " + json.dumps({"listing": sorted(os.listdir("/workspace")),
                              "options": options}), flush=True)
"""

READER = """
import json, os
print("RESULT " + json.dumps({"ckpt": open("/workspace/ckpt").read(),
                              "listing": sorted(os.listdir("/workspace"))}), flush=True)
"""


def test_a_projects_workspace_keeps_files_from_one_sandbox_to_the_next(
        backend: DockerBackend, storage: LocalStorage, python_image: str,
        docker_client: docker.DockerClient) -> None:
    project = _project()
    storage.create_project(project, QUOTA_MB)
    first = _in_project(storage, python_image, project, WRITER)
    state = backend.create(first)
    (launcher,) = ContainerState.from_state(state).members
    attrs = docker_client.api.inspect_container(launcher.container)
    assert assert_hardened(attrs, NetworkPlan.NONE, inputs=()) == []
    (mount,) = [m for m in attrs["Mounts"] if m["Destination"] == "/workspace"]
    assert (mount["Source"], mount["RW"]) == (str(storage.projects.workspace(project)), True)
    written = _result(run_to_success(backend, state))
    # The code was staged into the project; lost+found and the volume's root stay unseen.
    assert written["listing"] == ["ckpt", "job.py", "run1"]
    assert {"nosuid", "nodev"} <= set(written["options"])

    second = _in_project(storage, python_image, project, READER)  # its code replaces job.py
    read = _result(_run(backend, second))
    assert read["ckpt"] == "step 1000"
    assert read["listing"] == ["ckpt", "job.py", "run1"]
    # Each sandbox still has its own outbox; its own workspace dir is not what it got.
    assert storage.host_paths(second)[1] == storage.outbox(second.sandbox_id)
    assert list(storage.workspace(second.sandbox_id).iterdir()) == [
        storage.workspace(second.sandbox_id) / "job.py"]
    used, capacity = storage.project_usage(project)
    assert 0 < used < capacity


FILLER = """
import json, os
written, error = 0, None
try:
    with open("/workspace/fill.bin", "wb") as handle:
        while True:
            handle.write(b"\\x5a" * (1 << 20))
            handle.flush()
            os.fsync(handle.fileno())
            written += 1 << 20
except OSError as exc:
    error = exc.errno
try:
    with open("/tmp/still-writable", "wb") as handle:  # the sandbox's other places still work
        handle.write(b"x" * 4096)
    tmp = "ok"
except OSError as exc:
    tmp = exc.errno
print("RESULT " + json.dumps({"written": written, "errno": error, "tmp": tmp}), flush=True)
"""


def test_writing_past_the_quota_fails_with_enospc_inside_the_sandbox_only(
        backend: DockerBackend, storage: LocalStorage, python_image: str,
        tmp_path: Path) -> None:
    project = _project()
    storage.create_project(project, QUOTA_MB)
    image = storage.projects.image(project)
    report = _result(_run(backend, _in_project(storage, python_image, project, FILLER)))
    assert report["errno"] == errno.ENOSPC
    assert (QUOTA_MB - 4) << 20 <= report["written"] < QUOTA_MB << 20
    assert report["tmp"] == "ok"
    # The host's filesystem held only the image, which never grew past the quota.
    assert image.stat().st_size == QUOTA_MB << 20
    assert image.stat().st_blocks * 512 <= QUOTA_MB << 20
    used, capacity = storage.project_usage(project)
    assert capacity - used < 1 << 20
    # The console is told in words when it stages code into a full project.
    again = staged_sandbox(storage, "sb-proj", {"job.py": b"x" * (2 << 20)})
    with pytest.raises(ProjectFull, match=f"the project {project} is full"):
        storage.stage_into_project(again, project)


def test_a_missing_project_fails_the_create_and_leaves_nothing(
        backend: DockerBackend, storage: LocalStorage, python_image: str) -> None:
    spec = _in_project(storage, python_image, "proj-missing", "pass", stage=False)
    with pytest.raises(ProjectNotFound):
        backend.create(spec)
    assert backend.list_owned() == []


HOLDER = """
import signal
with open("/workspace/alive", "w") as handle:
    handle.write("yes")
signal.pause()
"""


def _until(condition: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_volume_a_running_sandbox_holds_is_never_mounted_twice(
        backend: DockerBackend, storage: LocalStorage, python_image: str) -> None:
    """Unmounted on the host while a sandbox still runs on it, the filesystem lives on in
    the container: mounting the image again (a second loop device) would corrupt it."""
    project = _project()
    storage.create_project(project, QUOTA_MB)
    image, workspace = storage.projects.image(project), storage.projects.workspace(project)
    state = backend.create(_in_project(storage, python_image, project, HOLDER))
    backend.start(state)
    _until(lambda: (workspace / "alive").exists(), "the sandbox never wrote its file")
    storage.unmount_project(project)
    assert _loops_over(image)  # the container still holds it
    with pytest.raises(ProjectVolumeError, match="still in use"):
        storage.projects.workspace(project)
    backend.stop(state, timeout_s=1)
    backend.remove(state)
    _until(lambda: not _loops_over(image), "the loop device outlived the sandbox")
    assert (storage.projects.workspace(project) / "alive").read_text() == "yes"
