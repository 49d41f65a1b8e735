"""`LocalStorage`: staging code into a workspace and reading an outbox by sandbox id."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from sandbox.errors import InvalidUpload
from sandbox.files import UploadLimits
from sandbox.outbox import OutboxError, OutboxRules
from sandbox.storage import LocalStorage, SandboxStorage

LIMITS = UploadLimits(1 << 20, 1 << 20, 10)


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "sandboxes")


def test_is_a_storage(storage: LocalStorage) -> None:
    assert isinstance(storage, SandboxStorage)


def test_stage_list_read_and_discard(storage: LocalStorage, tmp_path: Path) -> None:
    storage.create("sb-1")
    with pytest.raises(FileExistsError):
        storage.create("sb-1")  # never two sandboxes in one place
    example = tmp_path / "example"
    example.mkdir()
    (example / "train.py").write_text("print('hi')\n")
    assert storage.stage_tree("sb-1", example).startswith("sha256:")
    (storage.outbox("sb-1") / "model.bin").write_bytes(b"weights")
    listing = storage.list_outbox("sb-1", OutboxRules())
    assert [item.path for item in listing.items] == ["model.bin"]
    with storage.open_outbox_file("sb-1", "model.bin") as handle:
        assert handle.read() == b"weights"
    manifest = storage.hash_outbox("sb-1", OutboxRules())
    assert manifest.state == "ready"
    storage.discard("sb-1")
    storage.discard("sb-1")  # safe to repeat
    assert not (storage.root / "sb-1").exists()
    assert storage.list_outbox("sb-1", OutboxRules()).items == ()
    with pytest.raises(OutboxError):
        storage.open_outbox_file("sb-1", "model.bin")


def test_uploads_are_unpacked_safely(storage: LocalStorage) -> None:
    storage.create("sb-1")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../escape.py", "x")
    with pytest.raises(InvalidUpload):
        storage.stage_upload("sb-1", "code.zip", buffer.getvalue(), LIMITS)
    assert storage.stage_upload("sb-1", "train.py", b"print(1)\n", LIMITS).startswith("sha256:")
    assert (storage.workspace("sb-1") / "train.py").read_bytes() == b"print(1)\n"


@pytest.mark.parametrize("bad", ["../x", "sb/1", "", "SB-1"])
def test_a_sandbox_id_never_becomes_a_path_outside_the_root(storage: LocalStorage,
                                                           bad: str) -> None:
    with pytest.raises(ValueError):
        storage.create(bad)
