"""`LocalStorage`: staging code into a workspace and reading an outbox by sandbox id."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import pytest

from sandbox.errors import InvalidUpload
from sandbox.files import UploadLimits
from sandbox.outbox import OutboxError, OutboxRules
from sandbox.projects import ProjectNotFound
from sandbox.spec import SandboxSpec
from sandbox.storage import LocalStorage, SandboxStorage
from tests.mocking import fake_storage

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


# --- projects and inputs --------------------------------------------------------------------


@pytest.fixture
def with_projects(tmp_path: Path) -> LocalStorage:
    return fake_storage(tmp_path / "sandboxes")


def test_projects_live_beside_the_sandboxes_by_default(tmp_path: Path) -> None:
    assert LocalStorage(tmp_path / "sandboxes").projects.root == tmp_path / "projects"
    assert LocalStorage(tmp_path / "s", tmp_path / "p").projects.root == tmp_path / "p"


def test_a_project_spec_gets_the_projects_workspace_and_its_own_outbox(
        with_projects: LocalStorage, tmp_path: Path) -> None:
    storage = with_projects
    assert isinstance(storage, SandboxStorage)
    spec = SandboxSpec(sandbox_id="sb-1", owner="alice", image="i", command=("true",))
    storage.create("sb-1")
    assert storage.host_paths(spec) == (storage.workspace("sb-1"), storage.outbox("sb-1"))
    in_project = dataclasses.replace(spec, project="proj")
    with pytest.raises(ProjectNotFound):
        storage.host_paths(in_project)
    storage.create_project("proj", 64)
    workspace, outbox = storage.host_paths(in_project)
    assert workspace == storage.projects.workspace("proj") != storage.workspace("sb-1")
    assert outbox == storage.outbox("sb-1")
    assert storage.project_usage("proj")[1] == 64 * 1024 * 1024
    storage.unmount_project("proj")
    storage.unmount_project("proj")
    assert storage.host_paths(in_project)[0] == workspace  # mounted again
    storage.remove_project("proj")
    storage.remove_project("proj")
    assert not storage.projects.exists("proj")


def test_staging_into_a_project_copies_the_sandboxs_code(with_projects: LocalStorage,
                                                         tmp_path: Path) -> None:
    storage = with_projects
    storage.create("sb-1")
    storage.stage_upload("sb-1", "train.py", b"print(2)\n", LIMITS)
    storage.seal_staging("sb-1")
    storage.create_project("proj", 64)
    storage.stage_into_project("sb-1", "proj")
    assert (storage.projects.workspace("proj") / "train.py").read_bytes() == b"print(2)\n"
    storage.discard("sb-1")  # the sandbox goes, the project's files stay
    assert (storage.projects.workspace("proj") / "train.py").exists()


def test_an_input_is_the_earlier_sandboxs_outbox(storage: LocalStorage) -> None:
    assert storage.input_path("sb-0") == storage.outbox("sb-0")
    with pytest.raises(ValueError):
        storage.input_path("../sb-0")
