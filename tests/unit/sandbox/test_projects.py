"""`ProjectVolumes` without mounting anything: names, the lifecycle, failing closed, and
copying code into a workspace earlier sandboxes wrote (links, swapped names) safely.

The volumes here are `FakeProjectVolumes` (plain directories, the real naming, locking,
copying and removal); quotas, ENOSPC and remounting on real loop-mounted ext4 are in
tests/integration/test_project_volumes.py.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import ProjectVolumeError, SandboxError
from sandbox.projects import (
    MIN_QUOTA_MB,
    InvalidProject,
    ProjectExists,
    ProjectNotFound,
    ProjectVolumes,
)
from sandbox.spec import SANDBOX_UID
from tests.mocking import FakeProjectVolumes


@pytest.fixture
def volumes(tmp_path: Path) -> FakeProjectVolumes:
    return FakeProjectVolumes(tmp_path / "projects")


@pytest.fixture
def code(tmp_path: Path) -> Path:
    tree = tmp_path / "staged"
    (tree / "pkg").mkdir(parents=True)
    (tree / "train.py").write_text("print('train')\n")
    (tree / "pkg" / "model.py").write_text("WIDTH = 3\n")
    (tree / "run.sh").write_text("#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    return tree


def test_errors_are_the_packages(volumes: FakeProjectVolumes) -> None:
    assert issubclass(ProjectVolumeError, SandboxError)
    for error in (InvalidProject, ProjectExists, ProjectNotFound):
        assert issubclass(error, ProjectVolumeError)


@pytest.mark.parametrize("name", ["", "Upper", "../x", "a/b", ".lock", "x" * 64, "-lead"])
def test_names_share_the_sandbox_id_alphabet(volumes: FakeProjectVolumes, name: str) -> None:
    with pytest.raises(InvalidProject):
        volumes.create(name, MIN_QUOTA_MB)
    for call in (volumes.exists, volumes.workspace, volumes.usage, volumes.remove):
        with pytest.raises(InvalidProject):
            call(name)


@pytest.mark.parametrize("quota", [0, MIN_QUOTA_MB - 1, -5, 1 << 40, True, 16.5, "32"])
def test_quota_out_of_bounds_is_refused_and_makes_nothing(volumes: FakeProjectVolumes,
                                                          quota: Any) -> None:
    with pytest.raises(InvalidProject):
        volumes.create("proj", quota)
    assert not volumes.exists("proj")


def test_lifecycle(volumes: FakeProjectVolumes) -> None:
    assert not volumes.exists("proj") and volumes.names() == ()
    volumes.create("proj", 32)
    assert volumes.exists("proj") and volumes.names() == ("proj",)
    with pytest.raises(ProjectExists):
        volumes.create("proj", 32)
    workspace = volumes.workspace("proj")
    assert workspace == volumes.root / "proj" / "fs" / "workspace"
    info = os.lstat(workspace)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    if os.geteuid() == 0:
        assert (info.st_uid, info.st_gid) == (SANDBOX_UID, SANDBOX_UID)
    assert volumes.workspace("proj") == workspace  # idempotent
    used, capacity = volumes.usage("proj")
    assert capacity == 32 * 1024 * 1024 and 0 <= used < capacity
    volumes.unmount("proj")
    volumes.unmount("proj")  # safe to repeat
    assert volumes.workspace("proj") == workspace  # mounted again when needed
    volumes.remove("proj")
    volumes.remove("proj")  # a missing project counts as done
    assert not volumes.exists("proj") and not (volumes.root / "proj").exists()
    with pytest.raises(ProjectNotFound):
        volumes.workspace("proj")
    with pytest.raises(ProjectNotFound):
        volumes.usage("proj")


class _MountFails(FakeProjectVolumes):
    def _mount(self, image: Path, mountpoint: Path) -> None:
        raise ProjectVolumeError("The host could not mount the project's volume.")


class _NoMkfs(ProjectVolumes):
    def _run(self, action: str, argv: list[str]) -> None:
        super()._run(action, ["/nonexistent/" + argv[0], *argv[1:]])


@pytest.mark.parametrize("kind", [_MountFails, _NoMkfs])
def test_a_failed_create_leaves_nothing_behind(tmp_path: Path,
                                               kind: type[ProjectVolumes]) -> None:
    volumes = kind(tmp_path / "projects")
    with pytest.raises(ProjectVolumeError) as caught:
        volumes.create("proj", MIN_QUOTA_MB)
    assert "could not" in caught.value.user_message
    assert not volumes.exists("proj")
    assert sorted(p.name for p in volumes.root.iterdir()) == [".lock"]


def test_a_project_whose_image_is_gone_is_refused(volumes: FakeProjectVolumes) -> None:
    volumes.create("proj", 32)
    volumes.unmount("proj")
    volumes.image("proj").unlink()
    with pytest.raises(ProjectVolumeError, match="missing"):
        volumes.workspace("proj")
    volumes.remove("proj")
    assert not volumes.exists("proj")


# --- copying code in ------------------------------------------------------------------------


def test_copy_in_replaces_same_named_files_and_keeps_the_rest(volumes: FakeProjectVolumes,
                                                              code: Path) -> None:
    volumes.create("proj", 32)
    workspace = volumes.workspace("proj")
    (workspace / "ckpt").write_bytes(b"epoch 3")
    (workspace / "train.py").write_text("old\n")
    volumes.copy_in("proj", code)
    assert (workspace / "train.py").read_text() == "print('train')\n"
    assert (workspace / "pkg" / "model.py").read_text() == "WIDTH = 3\n"
    assert (workspace / "ckpt").read_bytes() == b"epoch 3"  # the project's own files stay
    assert os.access(workspace / "run.sh", os.X_OK)
    if os.geteuid() == 0:
        for path in (workspace / "train.py", workspace / "pkg", workspace / "pkg" / "model.py"):
            assert path.lstat().st_uid == SANDBOX_UID
    volumes.copy_in("proj", code)  # again: same result
    assert (workspace / "train.py").read_text() == "print('train')\n"


def test_copy_in_never_writes_through_links_a_sandbox_left(volumes: FakeProjectVolumes,
                                                           code: Path, tmp_path: Path) -> None:
    victim = tmp_path / "host-file"
    victim.write_text("host\n")
    victim_dir = tmp_path / "host-dir"
    victim_dir.mkdir()
    volumes.create("proj", 32)
    workspace = volumes.workspace("proj")
    # What an earlier sandbox could leave: links where the code will go.
    (workspace / "train.py").symlink_to(victim)
    (workspace / "pkg").symlink_to(victim_dir)
    os.link(victim, workspace / "run.sh")  # plain directories here: one filesystem
    volumes.copy_in("proj", code)
    assert victim.read_text() == "host\n"
    assert list(victim_dir.iterdir()) == []
    for name in ("train.py", "run.sh"):
        assert not (workspace / name).is_symlink()
        assert (workspace / name).stat().st_nlink == 1
    assert not (workspace / "pkg").is_symlink()
    assert (workspace / "pkg" / "model.py").read_text() == "WIDTH = 3\n"


def test_copy_in_replaces_a_directory_by_a_file_and_a_file_by_a_directory(
        volumes: FakeProjectVolumes, code: Path) -> None:
    volumes.create("proj", 32)
    workspace = volumes.workspace("proj")
    (workspace / "train.py").mkdir()
    (workspace / "train.py" / "inner").write_text("x")
    (workspace / "pkg").write_text("a file where the code has a directory")
    volumes.copy_in("proj", code)
    assert (workspace / "train.py").read_text() == "print('train')\n"
    assert (workspace / "pkg" / "model.py").read_text() == "WIDTH = 3\n"


@pytest.mark.parametrize("odd", ["link", "fifo", "dirlink"])
def test_copy_in_refuses_links_and_special_files_in_the_staged_tree(
        volumes: FakeProjectVolumes, code: Path, odd: str, tmp_path: Path) -> None:
    if odd == "link":
        (code / "pkg" / "secret").symlink_to("/etc/shadow")
    elif odd == "fifo":
        os.mkfifo(code / "pkg" / "pipe")
    else:
        (code / "host").symlink_to(tmp_path)
    volumes.create("proj", 32)
    with pytest.raises(ProjectVolumeError, match="link or a special file"):
        volumes.copy_in("proj", code)
    assert not (volumes.workspace("proj") / "pkg" / "secret").exists()
    assert not (volumes.workspace("proj") / "host").exists()


def test_copy_in_refuses_a_source_that_is_a_link(volumes: FakeProjectVolumes, code: Path,
                                                 tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(code)
    volumes.create("proj", 32)
    with pytest.raises(ProjectVolumeError, match="missing"):
        volumes.copy_in("proj", tmp_path / "link")
    assert list(volumes.workspace("proj").iterdir()) == []


def test_copy_in_needs_the_project(volumes: FakeProjectVolumes, code: Path) -> None:
    with pytest.raises(ProjectNotFound):
        volumes.copy_in("proj", code)
