"""Fixtures against the real Docker engine, loaded as a plugin by tests/conftest.py: an
installation whose backend is Docker with the built sandbox image registered, the console
served for real, cleanup of every container the installation labelled, and both sandbox
runtimes (runc, and gVisor where `runsc` runs) for suites that attack each."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from flask import Flask

from console.app import create_app
from console.core import Sealroom
from console.services import images
from console.settings import Settings
from sandbox.backend import LABEL_INSTALLATION
from sandbox.hardening import ENGINE_RUNTIMES
from sandbox.spec import SANDBOX_GID, SANDBOX_UID, Runtime
from tests.helpers import OPERATOR


def need_engine(reason: str) -> None:
    """Skip when a real-engine prerequisite is missing; under `make test`, fail instead."""
    if os.environ.get("SEALROOM_REQUIRE_ENGINE") == "1":
        pytest.fail(f"{reason} (make test requires it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        need_engine(f"no Docker engine answers: {exc}")
    yield client
    client.close()


def _built_image(docker_client: docker.DockerClient, name: str, what: str) -> Any:
    from sandbox.images import find_image

    image = find_image(name, client=docker_client)
    if image is None:
        need_engine(f"the {what} image is not built; run 'sealroom images build'")
    return image


@pytest.fixture(scope="session")
def base_image(docker_client: docker.DockerClient) -> Any:
    return _built_image(docker_client, "base", "sandbox")


@pytest.fixture(scope="session")
def horovod_image(docker_client: docker.DockerClient) -> Any:
    return _built_image(docker_client, "horovod", "horovod")


@pytest.fixture(scope="session")
def sacroml_image(docker_client: docker.DockerClient) -> Any:
    return _built_image(docker_client, "sacroml", "model attack (sacroml)")


@pytest.fixture(scope="session")
def python_image(base_image: Any) -> str:
    """The image the red-team and backend tests run: $SEALROOM_TEST_IMAGE or the sandbox image."""
    return os.environ.get("SEALROOM_TEST_IMAGE") or str(base_image.tag)


#: What gVisor's kernel says it is (`uname -r` inside a `runsc` container).
GVISOR_KERNEL = "4.4.0"


@pytest.fixture(scope="session")
def gvisor(docker_client: docker.DockerClient, base_image: Any) -> None:
    """gVisor is registered with the engine and runs the sandbox image. Not registered: the
    host bootstrap was not run (under `make test`, a failure). Registered but unable to run
    here (no ptrace, an old kernel): a skip naming the engine's error."""
    runsc = ENGINE_RUNTIMES[Runtime.GVISOR]
    if runsc not in (docker_client.info().get("Runtimes") or {}):
        need_engine(f"the engine has no {runsc} runtime; run images/host/ensure-host.sh")
    try:
        output = docker_client.containers.run(
            base_image.tag, ["uname", "-r"], runtime=runsc, network_mode="none",
            user=f"{SANDBOX_UID}:{SANDBOX_GID}", remove=True)
    except docker.errors.DockerException as exc:
        pytest.skip(f"{runsc} is registered but cannot run a container here: {exc}")
    if output.decode().strip() != GVISOR_KERNEL:
        pytest.skip(f"{runsc} ran, but not gVisor's kernel: uname -r said {output!r}")


@pytest.fixture(scope="module", params=[pytest.param(r, id=str(r)) for r in Runtime])
def sandbox_runtime(request: pytest.FixtureRequest) -> Runtime:
    """Each sandbox runtime in turn, for a module whose suite runs under both (the gVisor
    run needs `gvisor`). Module-scoped: a suite's expensive fixtures run once per runtime."""
    runtime: Runtime = request.param
    if runtime is Runtime.GVISOR:
        request.getfixturevalue("gvisor")
    return runtime


@pytest.fixture
def docker_core(settings: Settings, docker_client: docker.DockerClient,
                base_image: Any) -> Iterator[Sealroom]:
    from sandbox.images import find_image

    sealroom = Sealroom(settings)
    images.register_image(sealroom, OPERATOR, "base", base_image.tag, base_image.digest)
    horovod = find_image("horovod", client=docker_client)
    if horovod is not None:  # clusters run it; tests that need it ask for `horovod_image`
        images.register_image(sealroom, OPERATOR, "horovod", horovod.tag, horovod.digest)
    sacroml = find_image("sacroml", client=docker_client)
    if sacroml is not None:  # model releases are attacked with it (`sacroml_image` to need it)
        images.register_image(sealroom, OPERATOR, "sacroml", sacroml.tag, sacroml.digest)
    yield sealroom
    label = f"{LABEL_INSTALLATION}={settings.installation_id()}"
    for container in docker_client.containers.list(all=True, filters={"label": label}):
        try:
            container.remove(force=True)
        except docker.errors.APIError as exc:  # the supervisor may be removing it too
            if exc.status_code not in (404, 409):
                raise
            if exc.status_code == 409:  # its removal is under way: its volumes are busy
                _until_removed(container)  # until it is gone (a cold run caught this)
    sealroom.close()  # first: its background work mounts outboxes to hash them
    if sealroom.backend_built:  # projects' volumes hold loop devices: give them back
        volumes = sealroom.backend.storage.projects
        for name in volumes.names():
            volumes.remove(name)
        storage = sealroom.backend.storage  # so do sandboxes' workspaces and outboxes
        for sandbox_id in _sandbox_ids(storage.root):
            storage.volumes.remove(sandbox_id)


def _until_removed(container: Any) -> None:
    """Wait, on the engine's own event, until a container whose removal is under way is
    gone (or a minute has passed: the volumes' removal then says what holds them)."""
    with contextlib.suppress(docker.errors.NotFound, requests.exceptions.RequestException):
        container.wait(condition="removed", timeout=60)


def _mounted_under(root: Path) -> list[str]:
    """Mount points at or below `root` (/proc/self/mountinfo, octal escapes undone)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == str(root) or point.startswith(f"{root}/"):
            found.append(point)
    return found


@pytest.fixture(autouse=True)
def _no_volume_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Sandboxes' and projects' volumes are loop mounts under a test's tmp_path: whatever a
    test left mounted (a console it served in another process, a failed assertion before
    teardown) is let go of, so no loop device outlives the test."""
    if "tmp_path" not in request.fixturenames or os.geteuid() != 0:
        yield
        return
    root: Path = request.getfixturevalue("tmp_path")
    yield
    for point in reversed(_mounted_under(root)):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@pytest.fixture(scope="session", autouse=True)
def _no_volume_outlives_the_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same for what fixtures wider than a test (a module's installation) mounted."""
    yield
    if os.geteuid() == 0:
        for point in reversed(_mounted_under(tmp_path_factory.getbasetemp())):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _sandbox_ids(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []


@pytest.fixture
def docker_app(docker_core: Sealroom) -> Flask:
    """The console on the real engine, with its supervisor (pages read what it records);
    the supervisor ends when `docker_core` is closed."""
    return create_app(sealroom=docker_core, supervise=True)


@pytest.fixture
def live_server(docker_core: Sealroom) -> Iterator[str]:
    """The console served by waitress on a free loopback port, with its supervisor."""
    from waitress.server import create_server

    app = create_app(sealroom=docker_core, supervise=True)
    server = create_server(app, host="127.0.0.1", port=0, threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}"
    server.close()
