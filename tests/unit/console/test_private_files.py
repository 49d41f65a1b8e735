"""Private files: every mode and owner under the data directory, after `sealroom init`, after
a repair of wrong modes (said, and audited) and after a launch; the rule table's edges (links
never followed, a sandbox's own files left alone, registrations in progress skipped)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from console.core import Sealroom
from console.files import RULES, Reach, expected, seal_dataset_copy, secure_data_dir
from sandbox.spec import SANDBOX_GID, SANDBOX_UID
from tests.helpers import bearer, recorded

ROOT = os.geteuid() == 0


def _tree(home: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every path under `home` (itself as "."), never following a link nor entering what
    a sandbox owns below its top directory."""
    yield ".", os.lstat(home)
    for top, dirs, files in os.walk(home):
        for name in sorted(dirs + files):
            path = Path(top, name)
            relative = str(path.relative_to(home))
            yield relative, os.lstat(path)
        dirs[:] = [d for d in dirs if expected(str(Path(top, d).relative_to(home))).reach
                   is not Reach.TOP]


def _wrong(home: Path) -> list[str]:
    """Each path whose mode or owner is not private by the rules, spelled out."""
    found = []
    for relative, info in _tree(home):
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            continue
        in_dataset = relative.startswith("datasets/") and not relative.startswith("datasets/.")
        if in_dataset:
            want = 0o500 if stat.S_ISDIR(info.st_mode) else 0o400
            if ROOT and (info.st_uid, info.st_gid) != (SANDBOX_UID, SANDBOX_GID):
                found.append(f"{relative}: owner {info.st_uid}")
        elif relative.count("/") == 2 and relative.startswith("sandboxes/") \
                and relative.rsplit("/", 1)[1] in ("workspace", "outbox", "mpi"):
            want = 0o700
            if ROOT and info.st_uid != SANDBOX_UID:
                found.append(f"{relative}: owner {info.st_uid}")
        else:
            want = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
        if mode != want:
            found.append(f"{relative}: mode {mode:04o}, not {want:04o}")
    return found


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "var"
    monkeypatch.setenv("SEALROOM_HOME", str(path))
    monkeypatch.setenv("SEALROOM_BACKEND", "fake")
    return path


def _init() -> str:
    from console.cli import main

    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_init_leaves_everything_private_and_says_so_when_it_repairs(home: Path) -> None:
    first = _init()
    assert _wrong(home) == []
    assert stat.S_IMODE(os.stat(home / "sealroom.db").st_mode) == 0o600
    assert "initialised" in first

    # Someone loosens what init made: the next init puts it right and lists it.
    (home / "sealroom.db").chmod(0o644)
    (home / "datasets").chmod(0o755)
    (home / "keys" / "release").chmod(0o755)
    (home / "stray.txt").write_text("x")
    (home / "stray.txt").chmod(0o666)
    second = _init()
    assert "repaired 4 file mode(s)" in second
    for line in ("sealroom.db: mode 0644 -> 0600", "datasets: mode 0755 -> 0700",
                 "keys/release: mode 0755 -> 0700", "stray.txt: mode 0666 -> 0600"):
        assert f"  {line}\n" in second
    assert _wrong(home) == []
    assert "nothing to repair" in _init()

    from console.settings import Settings

    core = Sealroom(Settings.from_env())
    try:
        (event,) = [e for e in recorded(core, "system:files:repair")]
        details = json.loads(event.details)
        assert details["count"] == 4 and "stray.txt: mode 0666 -> 0600" in details["repairs"]
    finally:
        core.close()


def test_after_a_launch_and_a_registration_nothing_needs_repair(
        core: Sealroom, client: FlaskClient, dataset: str,
        make_user: object) -> None:
    core.secure_files()  # as at the console's start
    _, token = make_user("alice")  # type: ignore[operator]
    response = client.post("/api/v1/sandboxes", headers=bearer(token),
                           json={"dataset": dataset, "example": "mlp"})
    assert response.status_code == 201, response.get_json()
    home = core.settings.home
    assert [str(r) for r in secure_data_dir(home, repair=False)] == []
    assert _wrong(home) == []
    (copy,) = [p for p in (home / "datasets").iterdir() if not p.name.startswith(".")]
    assert stat.S_IMODE(copy.stat().st_mode) == 0o500
    if ROOT:
        assert (copy.stat().st_uid, copy.stat().st_gid) == (SANDBOX_UID, SANDBOX_GID)
    sandbox = home / "sandboxes" / response.get_json()["id"]
    assert stat.S_IMODE(sandbox.stat().st_mode) == 0o700 and sandbox.stat().st_uid == \
        os.geteuid()


def test_a_dataset_copy_is_sealed_without_following_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not the dataset's")
    outside.chmod(0o640)
    copy = tmp_path / "datasets" / "demo-v1"
    (copy / "sub").mkdir(parents=True)
    (copy / "sub" / "rows.csv").write_text("a\n")
    (copy / "link").symlink_to(outside)
    seal_dataset_copy(copy)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o640
    assert outside.stat().st_uid == os.geteuid()
    assert stat.S_IMODE((copy / "sub").stat().st_mode) == 0o500
    assert stat.S_IMODE((copy / "sub" / "rows.csv").stat().st_mode) == 0o400


def test_a_sandboxs_own_files_and_a_registration_in_progress_are_left_alone(
        tmp_path: Path) -> None:
    home = tmp_path / "var"
    outbox = home / "sandboxes" / "sb-1" / "outbox"
    outbox.mkdir(parents=True)
    (outbox / "model.bin").write_bytes(b"w")
    (outbox / "model.bin").chmod(0o644)
    staging = home / "datasets" / ".demo-x" / "d"
    staging.mkdir(parents=True)
    (staging / "f").write_text("x")
    (staging / "f").chmod(0o644)
    repairs = {r.path: r.change for r in secure_data_dir(home)}
    assert stat.S_IMODE((outbox / "model.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((staging / "f").stat().st_mode) == 0o644
    assert "sandboxes/sb-1/outbox/model.bin" not in repairs
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o700
    if ROOT:
        assert outbox.stat().st_uid == SANDBOX_UID


def test_every_rule_says_why_and_the_last_matches_everything() -> None:
    assert all(rule.why for rule in RULES)
    assert RULES[-1].pattern == "*" and RULES[-1].owner is None
    assert expected("sealroom.db") is RULES[-1]
    assert expected("datasets/demo-v1").owner == (SANDBOX_UID, SANDBOX_GID)
    assert expected("sandboxes/sb-1/mpi").owner == (SANDBOX_UID, SANDBOX_GID)
