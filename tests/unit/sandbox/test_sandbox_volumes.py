"""Each sandbox's workspace and outbox as volumes, through `LocalStorage`, with the host's
part faked (`tests.mocking.FakeSandboxVolumes`): what is made, what a sandbox's end lets go
of, what a console start unmounts and what a read mounts again. Sizes and ENOSPC are real
in tests/integration/test_quotas.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandbox.outbox import OutboxRules
from sandbox.spec import SANDBOX_UID, Limits
from sandbox.storage import LocalStorage
from sandbox.volumes import OUTBOX, WORKSPACE
from tests.mocking import FakeSandboxVolumes, fake_storage

LIMITS = Limits(workspace_mb=32, outbox_mb=16)


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return fake_storage(tmp_path / "sandboxes")


def _volumes(storage: LocalStorage) -> FakeSandboxVolumes:
    assert isinstance(storage.volumes, FakeSandboxVolumes)
    return storage.volumes


def test_a_sandbox_gets_two_private_volumes_of_its_sizes(storage: LocalStorage) -> None:
    storage.create("sb-1", LIMITS)
    volumes = _volumes(storage)
    for kind, size in ((WORKSPACE, 32), (OUTBOX, 16)):
        image = volumes.image("sb-1", kind)
        assert image.read_text() == f"{size}\n"
        assert stat.S_IMODE(image.stat().st_mode) == 0o600
        assert volumes.mountpoint("sb-1", kind) in volumes.mounts
    assert storage.workspace("sb-1") == volumes.path("sb-1", WORKSPACE)
    assert stat.S_IMODE(storage.outbox("sb-1").stat().st_mode) == 0o700
    if os.geteuid() == 0:
        assert storage.outbox("sb-1").stat().st_uid == SANDBOX_UID
    assert stat.S_IMODE((storage.root / "sb-1").stat().st_mode) == 0o700
    with pytest.raises(FileExistsError):
        storage.create("sb-1", LIMITS)


def test_the_end_of_a_sandbox_keeps_only_its_outbox_read_only(storage: LocalStorage) -> None:
    storage.create("sb-1", LIMITS)
    (storage.outbox("sb-1") / "model.bin").write_bytes(b"w")
    volumes = _volumes(storage)
    storage.release("sb-1")
    storage.release("sb-1")  # safe to repeat
    assert not volumes.image("sb-1", WORKSPACE).exists()
    assert volumes.mountpoint("sb-1", OUTBOX) in volumes.read_only
    assert [i.path for i in storage.list_outbox("sb-1", OutboxRules()).items] == ["model.bin"]


def test_settling_lets_go_of_all_but_the_kept_and_a_read_mounts_again_read_only(
        storage: LocalStorage) -> None:
    for sandbox_id in ("sb-1", "sb-2", "sb-3"):
        storage.create(sandbox_id, LIMITS)
        storage.release(sandbox_id)
    volumes = _volumes(storage)
    assert storage.settle({"sb-2"}) == ["sb-1", "sb-3"]
    assert volumes.mountpoint("sb-2", OUTBOX) in volumes.mounts
    assert volumes.mountpoint("sb-1", OUTBOX) not in volumes.mounts
    assert storage.settle({"sb-2"}) == []  # nothing left to let go of
    storage.input_path("sb-1")
    assert volumes.mountpoint("sb-1", OUTBOX) in volumes.read_only


def test_discarding_unmounts_and_deletes_both(storage: LocalStorage) -> None:
    storage.create("sb-1", LIMITS)
    volumes = _volumes(storage)
    storage.discard("sb-1")
    storage.discard("sb-1")  # safe to repeat
    assert not (storage.root / "sb-1").exists()
    assert volumes.mounts == set()


def test_without_sizes_a_sandbox_has_plain_directories(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "sandboxes")
    storage.create("sb-1")
    assert storage.workspace("sb-1") == tmp_path / "sandboxes" / "sb-1" / "workspace"
    assert not storage.volumes.has("sb-1", WORKSPACE)
    storage.release("sb-1")  # nothing to let go of
    assert storage.workspace("sb-1").is_dir()
    storage.discard("sb-1")
    assert not (tmp_path / "sandboxes" / "sb-1").exists()


def test_sizes_below_what_ext4_needs_are_refused(storage: LocalStorage) -> None:
    with pytest.raises(ValueError, match="at least 16 MB"):
        storage.volumes.create("sb-1", 8, 16)
    assert not (storage.root / "sb-1").exists()
