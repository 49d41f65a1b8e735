"""The sandbox backend is chosen by `SEALROOM_BACKEND` and built on first use: commands that
never drive a sandbox run with no engine reachable, and an unknown name is refused at start."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from console import settings as settings_module
from console.cli import EXIT_MISCONFIGURED, main
from console.core import Sealroom
from console.settings import Settings, SettingsError, backend_names, build_backend
from sandbox.backend import Backend
from sandbox.errors import EngineUnavailable
from tests.mocking import FakeBackend

NO_ENGINE = "unix:///nonexistent/sealroom-test/docker.sock"


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every backend built while the test runs, by name (the real factories still build)."""
    built: list[str] = []
    for name, factory in list(settings_module._BACKENDS.items()):
        def counting(settings: Settings, name: str = name,
                     factory: Callable[[Settings], Backend] = factory) -> Backend:
            built.append(name)
            return factory(settings)

        monkeypatch.setitem(settings_module._BACKENDS, name, counting)
    return built


@pytest.fixture
def no_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("SEALROOM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SEALROOM_BACKEND", "docker")
    monkeypatch.setenv("SEALROOM_DOCKER_HOST", NO_ENGINE)
    return CliRunner()


def test_the_default_is_docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SEALROOM_BACKEND", raising=False)
    assert Settings.from_env(home=tmp_path).backend == "docker"
    assert "docker" in backend_names()


def test_commands_that_need_no_engine_run_without_one(no_engine: CliRunner,
                                                      builds: list[str]) -> None:
    for command in (["init"], ["policy", "show"], ["audit", "status"], ["audit", "key"],
                    ["user", "add", "alice", "--role", "engineer"], ["token", "create", "alice"],
                    ["demo", "seed"]):
        result = no_engine.invoke(main, command, input="a long password\n")
        assert result.exit_code == 0, (command, result.output, result.exception)
    assert builds == []
    with pytest.raises(EngineUnavailable):  # and indeed no engine answers there
        build_backend(Settings.from_env()).ping()


def test_an_unknown_backend_is_refused_at_start(no_engine: CliRunner,
                                                monkeypatch: pytest.MonkeyPatch,
                                                builds: list[str]) -> None:
    monkeypatch.setenv("SEALROOM_BACKEND", "kubernetes")
    for command in (["up"], ["policy", "show"]):
        result = no_engine.invoke(main, command)
        assert result.exit_code == EXIT_MISCONFIGURED, result.output
        assert result.stderr.startswith("error: SEALROOM_BACKEND='kubernetes' is not a "
                                        "sandbox backend; use one of: ")
        for name in backend_names():
            assert name in result.stderr
        assert "Traceback" not in result.output
    with pytest.raises(SettingsError, match="docker"):
        Settings.from_env()
    assert builds == []


def test_the_named_backend_is_built_once_on_first_use(
        settings: Settings, builds: list[str]) -> None:
    core = Sealroom(Settings.from_env(home=settings.home, backend="fake"))
    try:
        assert not core.backend_built and builds == []
        start = threading.Barrier(8)
        seen: list[Backend] = []

        def first_use() -> None:
            start.wait()
            seen.append(core.backend)

        threads = [threading.Thread(target=first_use) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert builds == ["fake"] and core.backend_built
        assert isinstance(core.backend, FakeBackend)
        assert all(backend is core.backend for backend in seen) and len(seen) == 8
    finally:
        core.close()


def test_a_backend_passed_in_is_used_and_none_is_built(settings: Settings,
                                                       builds: list[str]) -> None:
    given = FakeBackend()
    core = Sealroom(settings, backend=given)
    try:
        assert core.backend_built and core.backend is given
        assert builds == []
    finally:
        core.close()


def test_docker_is_built_from_the_settings(settings: Settings) -> None:
    from sandbox.docker_backend import DockerBackend

    core = Sealroom(Settings.from_env(home=settings.home, backend="docker",
                                      docker_host=NO_ENGINE))
    try:
        backend = core.backend  # built without contacting the engine
        assert isinstance(backend, DockerBackend)
        assert backend.base_url == NO_ENGINE
        assert backend.installation == core.settings.installation_id()
        assert backend.storage.root == core.settings.sandboxes_dir
    finally:
        core.close()
