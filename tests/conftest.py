"""Shared fixtures: a fresh installation (data directory, database) per test, the app,
its clients, users with tokens, and a small dataset. Engine-backed fixtures live in
tests/integration/conftest.py."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import settings as hypothesis_settings

from console.app import create_app
from console.core import Sealroom
from console.services import accounts, datasets, images
from console.settings import Settings, register_backend
from tests.helpers import OPERATOR, PASSWORD, UNTIMED_HEALTH_CHECKS, write_dataset
from tests.mocking import FakeBackend, ScriptedOutcome, fake_storage

pytest_plugins = ["tests.engine_fixtures"]

# Properties are checked for what they state, never for how fast: no deadline, no speed
# health checks. In CI the examples are derandomized so a run is the same on every machine.
hypothesis_settings.register_profile(
    "sealroom", deadline=None, suppress_health_check=UNTIMED_HEALTH_CHECKS,
    derandomize=bool(os.environ.get("CI")), print_blob=True)
hypothesis_settings.load_profile("sealroom")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse any property test whose own settings bring back a deadline or a speed check."""
    for item in items:
        own = getattr(getattr(item, "obj", None), "_hypothesis_internal_use_settings", None)
        if own is None:
            continue
        timed = set(UNTIMED_HEALTH_CHECKS) - set(own.suppress_health_check)
        if own.deadline is not None or timed:
            raise pytest.UsageError(
                f"{item.nodeid}: Hypothesis settings must have deadline=None and suppress "
                f"{sorted(c.name for c in timed)} (use tests.helpers.UNTIMED_HEALTH_CHECKS)")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Tests refuse many requests from one address (127.0.0.1): the limits are tested where
    # they are set low (tests/unit/console/test_limits.py).
    return Settings.from_env(home=tmp_path / "home", testing=True,
                             login_rate="1000 per minute", refusal_rate="100000 per minute",
                             supervise_interval_s=0.5)


def make_fake_backend(settings: Settings) -> FakeBackend:
    # Console tests watch sandboxes while they run; tests that need an exit script one.
    # Workspaces and outboxes are real directories, as on the engine's host; projects'
    # volumes are plain directories too (unit tests mount nothing).
    return FakeBackend(store=fake_storage(settings.sandboxes_dir),
                       default_outcome=ScriptedOutcome(stays_running=True, logs=b"epoch 1/1\n"))


# The product registers only `docker`; tests may also name the in-memory stand-in.
register_backend("fake", make_fake_backend)


@pytest.fixture
def fake_backend(settings: Settings) -> FakeBackend:
    return make_fake_backend(settings)


@pytest.fixture
def core(settings: Settings, fake_backend: FakeBackend) -> Iterator[Sealroom]:
    sealroom = Sealroom(settings, backend=fake_backend)
    # A scripted exit is final at once (tests of the wait for an engine's shutdown set it).
    sealroom.engine_watch.settle_s = 0
    images.register_image(sealroom, OPERATOR, "base", "sealroom/base:test",
                          "sha256:" + "ab" * 32)
    images.register_image(sealroom, OPERATOR, "horovod", "sealroom/horovod:test",
                          "sha256:" + "cd" * 32)
    yield sealroom
    sealroom.close()


@pytest.fixture
def app(core: Sealroom) -> Flask:
    return create_app(sealroom=core)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


@pytest.fixture
def make_user(core: Sealroom) -> Callable[..., tuple[str, str]]:
    """Create a user and return (name, API token)."""

    def make(name: str, role: str = "engineer") -> tuple[str, str]:
        accounts.create_user(core, OPERATOR, name, role, PASSWORD)
        return name, accounts.create_token(core, OPERATOR, name)

    return make


@pytest.fixture
def dataset(core: Sealroom, tmp_path: Path) -> str:
    """A small demo-shaped dataset named `demo`, granted to every engineer."""
    datasets.register_dataset(core, OPERATOR, write_dataset(tmp_path / "src"), "demo",
                              ["role:engineer"])
    return "demo"


@pytest.fixture
def alice(make_user: Callable[..., tuple[str, str]], dataset: str) -> str:
    """An engineer named alice who may use the `demo` dataset; her API token."""
    return make_user("alice")[1]


@pytest.fixture
def served(app: Flask) -> Iterator[str]:
    """The console on a real HTTP server in a thread (for the CLI's API client), stopped
    cleanly after the test."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()
    server.server_close()
