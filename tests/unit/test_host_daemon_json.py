"""The host bootstrap's merge into the engine's daemon.json (images/host/daemon_json.py):
gVisor registered as `runsc` and live-restore on, everything else kept, idempotent, and an
operator's file that is not a JSON object never overwritten."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "images" / "host" / "daemon_json.py"
RUNSC = {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", "--network=none"]}


@pytest.fixture(scope="module")
def daemon_json() -> ModuleType:
    spec = importlib.util.spec_from_file_location("daemon_json", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(module: ModuleType, *args: str) -> int:
    return int(module.main(["daemon_json.py", *args]))


def test_a_missing_file_is_written_with_runsc_and_live_restore(
        daemon_json: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "docker" / "daemon.json"
    assert _run(daemon_json, str(path)) == 0
    assert capsys.readouterr().out == "changed\n"
    assert json.loads(path.read_text()) == {"live-restore": True, "runtimes": {"runsc": RUNSC}}
    assert path.stat().st_mode & 0o777 == 0o644


def test_what_the_file_holds_is_kept_and_a_second_run_changes_nothing(
        daemon_json: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"log-level": "warn", "live-restore": False,
                                "runtimes": {"nvidia": {"path": "nvidia-container-runtime"},
                                             "runsc": {"path": "/old/runsc"}}}))
    path.chmod(0o600)
    assert _run(daemon_json, str(path)) == 0
    merged = json.loads(path.read_text())
    assert merged == {"log-level": "warn", "live-restore": True,
                      "runtimes": {"nvidia": {"path": "nvidia-container-runtime"},
                                   "runsc": RUNSC}}
    assert path.stat().st_mode & 0o777 == 0o600
    written = path.stat().st_mtime_ns
    capsys.readouterr()
    assert _run(daemon_json, str(path)) == 0
    assert capsys.readouterr().out == "unchanged\n"
    assert path.stat().st_mtime_ns == written
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_check_reports_without_writing(daemon_json: ModuleType, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "daemon.json"
    path.write_text("{}")
    assert _run(daemon_json, "--check", str(path), "/usr/local/bin/runsc") == 0
    assert capsys.readouterr().out == "changed\n"
    assert path.read_text() == "{}"
    assert _run(daemon_json, str(path), "/usr/local/bin/runsc") == 0
    assert json.loads(path.read_text())["runtimes"]["runsc"]["path"] == "/usr/local/bin/runsc"


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", '"a string"'])
def test_a_file_that_is_not_a_json_object_is_left_alone(daemon_json: ModuleType,
                                                        tmp_path: Path, text: str) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(text)
    assert _run(daemon_json, str(path)) == 2
    assert path.read_text() == text
