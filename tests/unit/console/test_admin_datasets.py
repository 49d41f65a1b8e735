"""Registering a dataset from the host on the admin page: only what is in the import
directory, granted through the policy; any other host path is refused, audited, and leaves
nothing behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from console.core import Sealroom
from console.services import datasets
from tests.helpers import csrf_from, login, recorded, write_dataset

PAGE = "/admin/datasets"


@pytest.fixture
def root(app: Flask, make_user: Callable[..., tuple[str, str]]) -> FlaskClient:
    make_user("root", "admin")
    client = app.test_client()
    assert login(client, "root").status_code == 302
    return client


@pytest.fixture
def import_dir(core: Sealroom) -> Path:
    assert core.settings.import_dir == core.settings.home / "imports"
    write_dataset(core.settings.import_dir / "census")
    return core.settings.import_dir


def _register(client: FlaskClient, entry: str, name: str, allow: str = "") -> str:
    response = client.post(PAGE, data={"csrf_token": csrf_from(client, PAGE), "entry": entry,
                                       "name": name, "allow": allow})
    return f"{response.status_code} {response.get_data(as_text=True)}"


def test_a_dataset_in_the_import_directory_is_registered_and_granted(
        root: FlaskClient, core: Sealroom, import_dir: Path) -> None:
    page = root.get(PAGE).get_data(as_text=True)
    assert str(import_dir) in page and "<option>census</option>" in page
    unknown = _register(root, "census", "census", "role:engineer, group:nope")
    assert unknown.startswith("400") and "defines no group" in unknown
    assert _register(root, "census", "census", "role:engineer").startswith("303")
    [row] = datasets.all_versions(core)
    assert (row.name, row.version, row.registered_by) == ("census", 1, "root")
    assert [str(p) for p in core.policy.datasets["census"].allow] == ["role:engineer"]
    [event] = [e for e in recorded(core, "admin:dataset:register") if e.outcome == "ok"]
    assert event.actor == "root"


def test_nothing_outside_the_import_directory(root: FlaskClient, core: Sealroom,
                                              import_dir: Path, tmp_path: Path) -> None:
    secret = write_dataset(tmp_path / "elsewhere")
    (import_dir / "link").symlink_to(secret)
    for entry, message in [("../../elsewhere", "outside the import directory"),
                           (str(secret), "not a host path"),
                           ("link", "outside the import directory"),
                           ("", "not a host path"),
                           ("missing", "has no")]:
        answer = _register(root, entry, "stolen")
        assert answer[:3] in ("400", "404") and message in answer, entry
    assert datasets.all_versions(core) == []
    denied = [e for e in recorded(core, "admin:dataset:register") if e.outcome == "denied"]
    assert len(denied) == 5 and {e.target for e in denied} == {"dataset:stolen"}
    assert sorted(p.name for p in core.settings.datasets_dir.iterdir()) == []


def test_a_bad_name_registers_nothing(root: FlaskClient, core: Sealroom,
                                      import_dir: Path) -> None:
    answer = _register(root, "census", "Bad Name!")
    assert answer.startswith("400") and "dataset names are" in answer
    assert datasets.all_versions(core) == []


def test_no_import_directory(root: FlaskClient, core: Sealroom) -> None:
    assert "import directory is empty or does not exist" in root.get(PAGE).get_data(
        as_text=True)
    assert _register(root, "census", "census").startswith("404")
