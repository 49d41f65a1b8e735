"""Red team: a sandbox given an earlier sandbox's outputs at /inputs/<id> tries to change
them (probes/input_probe.py: writes, creates, deletes, renames, chmod, links in and out,
device nodes, symlink escapes, remounting, unsharing), on the real engine, alone and on
every rank of a cluster. Every attempt must fail with the error the kernel gives a read-only
mount (or a mount the process may not touch), and the outputs on the host must be byte for
byte, mode for mode, what the earlier sandbox left.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.backend import LABEL_INSTALLATION, BackendState, ContainerState
from sandbox.cluster import rank_output
from sandbox.docker_backend import DockerBackend
from sandbox.errors import InvalidSpec
from sandbox.hardening import assert_hardened
from sandbox.spec import InputMount, Limits, NetworkPlan, SandboxSpec
from sandbox.storage import LocalStorage
from tests.helpers import run_to_success, staged_sandbox

pytestmark = pytest.mark.docker

INSTALLATION = f"test-inputs-{uuid.uuid4().hex[:12]}"
PROBE = Path(__file__).parent / "probes" / "input_probe.py"
MODEL = b"weights " * 4096

#: The earlier sandbox: outputs of the same uid as the reader, and links for it to try.
SOURCE_CODE = f"""
import os
os.makedirs("/outbox/sub/deep")
os.makedirs("/outbox/empty")
with open("/outbox/model.bin", "wb") as handle:
    handle.write({MODEL!r})
with open("/outbox/sub/deep/notes.txt", "w") as handle:
    handle.write("epoch 3")
os.symlink("..", "/outbox/up")
os.symlink("/", "/outbox/root")
"""

_READ_ONLY = {"EROFS"}
_OTHER_MOUNT = {"EXDEV"}
_NOT_ALLOWED = {"EPERM"}
#: How each attempt of the probe must end.
EXPECTED: dict[str, set[str]] = {
    **{name: _READ_ONLY for name in (
        "write", "append", "truncate", "create", "create_at_directory_fd", "mkdir", "mkfifo",
        "unlink", "rmdir", "unlink_link", "rename", "chmod", "chmod_root", "fchmod", "chown",
        "utime", "setxattr", "hardlink_in_input", "symlink_in_input",
        "write_through_workspace_symlink", "write_through_proc_fd", "write_through_link_up",
        "write_through_link_root", "create_beside_inputs")},
    "mknod_in_input": _READ_ONLY | _NOT_ALLOWED,
    "mknod_in_workspace": _NOT_ALLOWED,
    "rename_out_to_workspace": _OTHER_MOUNT,
    "rename_in_from_workspace": _OTHER_MOUNT,
    "hardlink_into_workspace": _OTHER_MOUNT,
    **{name: _NOT_ALLOWED for name in (
        "remount_rw", "remount_rw_command", "bind_over", "umount", "unshare_then_remount")},
}


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "sandboxes")


@pytest.fixture
def backend(storage: LocalStorage, docker_client: docker.DockerClient) -> Iterator[DockerBackend]:
    yield DockerBackend(installation=INSTALLATION, storage=storage)
    label = f"{LABEL_INSTALLATION}={INSTALLATION}"
    for container in docker_client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)




@pytest.fixture
def source(backend: DockerBackend, storage: LocalStorage, python_image: str) -> str:
    """A finished sandbox whose outbox holds files, directories and links."""
    sandbox_id = staged_sandbox(storage, "sb-src", {"make.py": SOURCE_CODE.encode()})
    spec = SandboxSpec(sandbox_id=sandbox_id, owner="alice", image=python_image,
                       command=("python3", "make.py"))
    run_to_success(backend, backend.create(spec))
    return sandbox_id


def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything about a tree a sandbox could change: kinds, modes, owners, times, bytes."""
    found: dict[str, tuple[Any, ...]] = {}
    for top, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = Path(top, name)
            info = path.lstat()
            content = (os.readlink(path) if path.is_symlink() else
                       hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "")
            found[str(path.relative_to(root))] = (
                info.st_mode, info.st_uid, info.st_gid, info.st_size, info.st_mtime_ns,
                info.st_nlink, content)
    return found


def _check(report: dict[str, Any]) -> None:
    assert report["read"] == hashlib.sha256(MODEL).hexdigest()  # readable, only read-only
    assert "ro" in report["options"].split(","), report["options"]
    attempts = report["attempts"]
    assert set(attempts) == set(EXPECTED)
    wrong = {name: outcome for name, outcome in attempts.items()
             if outcome not in EXPECTED[name]}
    assert wrong == {}, f"rank {report['rank']}: {wrong}"


def _reports(output: bytes, ranks: int) -> dict[int, dict[str, Any]]:
    found = {}
    for rank in range(ranks):
        text = (rank_output(output, rank) if ranks > 1 else output).decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("RESULT "):
                record = json.loads(line.removeprefix("RESULT "))
                found[record["rank"]] = record
    return found


def _members_sealed(docker_client: docker.DockerClient, state: BackendState, source: str,
                    outbox: Path) -> None:
    found = ContainerState.from_state(state)
    assert found.inputs == (source,)
    for member in found.members:
        attrs = docker_client.api.inspect_container(member.container)
        assert assert_hardened(attrs, found.plan, found.network, inputs=[source]) == []
        (mount,) = [m for m in attrs["Mounts"] if m["Destination"].startswith("/inputs")]
        assert (mount["Destination"], mount["Source"], mount["RW"]) == (
            f"/inputs/{source}", str(outbox), False)


def test_an_input_stays_read_only_however_the_sandbox_tries(
        backend: DockerBackend, storage: LocalStorage, source: str, python_image: str,
        docker_client: docker.DockerClient) -> None:
    outbox = storage.input_path(source)
    before = _snapshot(outbox)
    reader = staged_sandbox(storage, "sb-reader", {"input_probe.py": PROBE.read_bytes()})
    spec = SandboxSpec(sandbox_id=reader, owner="bob", image=python_image,
                       command=("python3", "input_probe.py", source),
                       inputs=(InputMount(source, "sha256:" + "ab" * 32),))
    state = backend.create(spec)
    _members_sealed(docker_client, state, source, outbox)
    reports = _reports(run_to_success(backend, state), 1)
    assert sorted(reports) == [0]
    _check(reports[0])
    assert _snapshot(outbox) == before
    # Nothing of the input was carried into the reader's own places by a link or a move.
    assert not [p.name for p in storage.workspace(reader).iterdir()
                if p.name.startswith(("hard-", "stolen-"))]


def test_every_rank_of_a_cluster_sees_the_input_read_only(
        backend: DockerBackend, storage: LocalStorage, source: str, horovod_image: Any,
        docker_client: docker.DockerClient) -> None:
    outbox = storage.input_path(source)
    before = _snapshot(outbox)
    reader = staged_sandbox(storage, "sb-mpi-reader", {"input_probe.py": PROBE.read_bytes()})
    spec = SandboxSpec(sandbox_id=reader, owner="bob", image=horovod_image.tag,
                       command=("python", "input_probe.py", source),
                       network=NetworkPlan.MEMBERS_ONLY, ranks=2,
                       limits=Limits(cpus=1, memory_mb=1024, pids=256),
                       inputs=(InputMount(source),))
    state = backend.create(spec)
    _members_sealed(docker_client, state, source, outbox)
    output = run_to_success(backend, state)
    reports = _reports(output, 2)
    assert sorted(reports) == [0, 1], output
    for report in reports.values():
        _check(report)
    assert _snapshot(outbox) == before


def test_an_input_whose_outputs_are_not_kept_is_refused(
        backend: DockerBackend, storage: LocalStorage, python_image: str,
        docker_client: docker.DockerClient) -> None:
    reader = staged_sandbox(storage, "sb-reader", {})
    spec = SandboxSpec(sandbox_id=reader, owner="bob", image=python_image,
                       command=("true",), inputs=(InputMount("sb-never-ran"),))
    with pytest.raises(InvalidSpec, match="not kept"):
        backend.create(spec)
    assert backend.list_owned() == []
