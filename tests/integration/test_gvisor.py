"""gVisor on the real engine: a sandbox the spec puts under gVisor runs on gVisor's kernel
(`runsc`), passes its self-check for that plan and fails it for runc; the backend reports the
runtimes the engine has; a launch whose dataset the policy marks `gvisor` runs there through
the API; and why clusters cannot: `runsc` containers joined into one network namespace do not
share a loopback. Each behaviour the fake backend stands in for (`runtimes`, an unknown
runtime refused by the engine) is exercised here for real."""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from sandbox.backend import LABEL_INSTALLATION, LABEL_OWNER, LABEL_SANDBOX, BackendState, RunState
from sandbox.docker_backend import DockerBackend
from sandbox.hardening import assert_hardened
from sandbox.spec import (
    SANDBOX_GID,
    SANDBOX_UID,
    DatasetMount,
    Limits,
    NetworkPlan,
    Runtime,
    SandboxSpec,
)
from sandbox.storage import LocalStorage
from tests.engine_fixtures import GVISOR_KERNEL
from tests.helpers import staged_sandbox

pytestmark = pytest.mark.docker

INSTALLATION = f"test-gvisor-{uuid.uuid4().hex[:12]}"
#: Prints the kernel and checks, from inside, what gVisor must not change: who we are.
INSIDE = (b"import json, os\n"
          b"print(json.dumps({'kernel': os.uname().release, 'uid': os.getuid(),\n"
          b"                  'data': sorted(os.listdir('/data/demo'))}), flush=True)\n")


@pytest.fixture(autouse=True)
def _remove_containers(docker_client: docker.DockerClient) -> Iterator[None]:
    yield
    label = f"{LABEL_INSTALLATION}={INSTALLATION}"
    for container in docker_client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)


@pytest.fixture
def backend(tmp_path: Path) -> DockerBackend:
    return DockerBackend(installation=INSTALLATION, storage=LocalStorage(tmp_path / "sb"))


def _wait(poll: Callable[[], Any], timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    while (status := poll()).state in (RunState.CREATED, RunState.RUNNING):
        assert time.monotonic() < deadline, "the sandbox did not finish in time"
        time.sleep(0.2)
    return status


def _spec(backend: DockerBackend, image: str, tmp_path: Path, runtime: Runtime) -> SandboxSpec:
    dataset = tmp_path / "demo"
    dataset.mkdir()
    (dataset / "train.csv").write_text("x,y\n1,2\n")
    dataset.chmod(0o755)
    sandbox_id = staged_sandbox(backend.storage, "gv", {"inside.py": INSIDE})
    return SandboxSpec(sandbox_id=sandbox_id, owner="alice", image=image,
                       command=("python3", "/workspace/inside.py"),
                       datasets=(DatasetMount("demo", dataset),),
                       limits=Limits(cpus=1, memory_mb=512, pids=64), runtime=runtime)


def _inspect(docker_client: docker.DockerClient, state: BackendState) -> dict[str, Any]:
    (member,) = state["members"]
    attrs: dict[str, Any] = docker_client.api.inspect_container(member["container"])
    return attrs


def test_the_backend_reports_the_runtimes_the_engine_has(backend: DockerBackend,
                                                         gvisor: None) -> None:
    assert backend.runtimes() == {Runtime.RUNC, Runtime.GVISOR}


def test_a_gvisor_sandbox_runs_on_gvisors_kernel_and_passes_its_self_check(
        backend: DockerBackend, docker_client: docker.DockerClient, python_image: str,
        tmp_path: Path, gvisor: None) -> None:
    state = backend.create(_spec(backend, python_image, tmp_path, Runtime.GVISOR))
    attrs = _inspect(docker_client, state)
    assert attrs["HostConfig"]["Runtime"] == "runsc"
    assert assert_hardened(attrs, NetworkPlan.NONE, runtime=Runtime.GVISOR) == []
    assert assert_hardened(attrs, NetworkPlan.NONE) == ["runtime is 'runsc', not 'runc' (runc)"]
    backend.start(state)
    status = _wait(lambda: backend.poll(state))
    output = backend.logs(state)
    assert status.exit_code == 0, output
    inside = json.loads(output.decode().strip().splitlines()[-1])
    assert inside == {"kernel": GVISOR_KERNEL, "uid": SANDBOX_UID, "data": ["train.csv"]}


def test_a_runc_sandbox_runs_on_the_host_kernel(backend: DockerBackend,
                                                docker_client: docker.DockerClient,
                                                python_image: str, tmp_path: Path) -> None:
    state = backend.create(_spec(backend, python_image, tmp_path, Runtime.RUNC))
    attrs = _inspect(docker_client, state)
    assert attrs["HostConfig"]["Runtime"] == "runc"
    assert assert_hardened(attrs, NetworkPlan.NONE, runtime=Runtime.GVISOR) == [
        "runtime is 'runc', not 'runsc' (gvisor)"]
    backend.start(state)
    _wait(lambda: backend.poll(state))
    assert json.loads(backend.logs(state).decode().strip())["kernel"] == os.uname().release


SPAWN = (b"import subprocess, sys\n"
         b"children = []\n"
         b"try:\n"
         b"    for _ in range(int(sys.argv[1])):\n"
         b"        children.append(subprocess.Popen(['sleep', '30']))\n"
         b"finally:\n"
         b"    print('spawned', len(children), flush=True)\n"
         b"    for child in children:\n"
         b"        child.kill()\n")


@pytest.mark.parametrize("pids, spawn, ends", [(64, 32, "spawned 32"), (16, 200, "")])
def test_the_pids_limit_under_gvisor_counts_the_sandboxs_processes(
        backend: DockerBackend, python_image: str, gvisor: None, pids: int, spawn: int,
        ends: str) -> None:
    """gVisor's own threads count toward the engine's pids limit, which is scaled for them:
    a sandbox of 64 processes runs 32 children beside init and Python; a fork past the
    limit ends the whole sandbox (gVisor cannot make a host thread), not the host."""
    sandbox_id = staged_sandbox(backend.storage, "gv", {"spawn.py": SPAWN})
    spec = SandboxSpec(sandbox_id=sandbox_id, owner="alice", image=python_image,
                       command=("python3", "/workspace/spawn.py", str(spawn)),
                       limits=Limits(cpus=1, memory_mb=512, pids=pids),
                       runtime=Runtime.GVISOR)
    state = backend.create(spec)
    backend.start(state)
    status = _wait(lambda: backend.poll(state))
    output = backend.logs(state).decode()
    if ends:
        assert status.exit_code == 0 and output.strip() == ends, (status, output)
    else:
        assert status.exit_code != 0 and "spawned 200" not in output, (status, output)


BURST = (b"import sys\n"
         b"sys.stdout.buffer.write((b'z' * 1023 + b'\\n') * 8192)\n"
         b"sys.stdout.flush()\n")


@pytest.mark.parametrize("runtime", [
    Runtime.RUNC,
    pytest.param(Runtime.GVISOR, marks=pytest.mark.xfail(strict=True, reason=(
        "Debian 12's runsc (0.0~20221219) drops stdout written faster than the engine reads "
        "it: of 8 MiB written at once, about 64 KiB reach the log (and of 200,000 flushed "
        "lines, about 87%). A known defect of this runsc: logs of gVisor sandboxes can be "
        "incomplete (docs/threat-model.md). If this passes, the defect is fixed: drop the "
        "mark."))),
])
def test_output_written_in_a_burst_reaches_the_log(backend: DockerBackend, python_image: str,
                                                   runtime: Runtime,
                                                   request: pytest.FixtureRequest) -> None:
    if runtime is Runtime.GVISOR:
        request.getfixturevalue("gvisor")
    sandbox_id = staged_sandbox(backend.storage, "gv", {"burst.py": BURST})
    spec = SandboxSpec(sandbox_id=sandbox_id, owner="alice", image=python_image,
                       command=("python3", "/workspace/burst.py"),
                       limits=Limits(cpus=1, memory_mb=512, pids=64), runtime=runtime)
    state = backend.create(spec)
    backend.start(state)
    assert _wait(lambda: backend.poll(state)).exit_code == 0
    assert backend.logs(state).count(b"z" * 1023 + b"\n") == 8192


def test_a_state_whose_runtime_is_not_the_containers_is_not_started(
        backend: DockerBackend, docker_client: docker.DockerClient, python_image: str,
        tmp_path: Path, gvisor: None) -> None:
    """The self-check reads the runtime from the recorded state: a gVisor container recorded
    as runc (or the reverse) is refused before it starts."""
    from sandbox.errors import SandboxError

    state = backend.create(_spec(backend, python_image, tmp_path, Runtime.GVISOR))
    recorded_as_runc = {k: v for k, v in state.items() if k != "runtime"}
    with pytest.raises(SandboxError, match="hardening self-check"):
        backend.start(recorded_as_runc)
    assert _inspect(docker_client, state)["State"]["Status"] == "created"


def test_the_engine_refuses_a_runtime_it_does_not_have(docker_client: docker.DockerClient,
                                                       python_image: str) -> None:
    """What the fake backend does for a runtime it lacks, as the engine does it."""
    with pytest.raises(docker.errors.APIError) as refused:
        docker_client.containers.create(python_image, ["true"], network_mode="none",
                                        runtime=f"no-such-runtime-{uuid.uuid4().hex[:6]}",
                                        labels={LABEL_INSTALLATION: INSTALLATION})
    assert refused.value.status_code == 400
    assert "Unknown runtime" in str(refused.value)


def test_runsc_containers_joined_into_one_namespace_share_no_loopback(
        docker_client: docker.DockerClient, python_image: str, gvisor: None) -> None:
    """Why a cluster cannot run under gVisor: a rank joins the launcher's namespace
    (`container:<launcher>`) and must reach it on loopback. Under runsc the second container
    has a network stack of its own, so the launcher's listener is not there."""
    labels = {LABEL_INSTALLATION: INSTALLATION, LABEL_SANDBOX: "gv-net", LABEL_OWNER: "t"}
    user = f"{SANDBOX_UID}:{SANDBOX_GID}"
    listener = ("import socket\n"
                "s = socket.socket(); s.bind(('127.0.0.1', 5000)); s.listen(1)\n"
                "print('listening', flush=True)\n"
                "s.settimeout(60)\n"
                "try:\n    s.accept()\n    print('accepted', flush=True)\n"
                "except OSError:\n    pass\n")
    connect = ("import socket\n"
               "try:\n    socket.create_connection(('127.0.0.1', 5000), timeout=10)\n"
               "    print('connected')\n"
               "except OSError as exc:\n    print(type(exc).__name__)\n")
    holder = docker_client.containers.run(python_image, ["python3", "-c", listener],
                                          runtime="runsc", network_mode="none", user=user,
                                          labels=labels, detach=True)
    deadline = time.monotonic() + 120
    while b"listening" not in holder.logs():
        assert time.monotonic() < deadline, holder.logs()
        time.sleep(0.2)
    joined = docker_client.containers.run(
        python_image, ["python3", "-c", connect], runtime="runsc",
        network_mode=f"container:{holder.id}", user=user, labels=labels, remove=True)
    assert joined.decode().strip() == "ConnectionRefusedError"
    assert b"accepted" not in holder.logs()


# --- through the console: the policy chooses ---------------------------------------------


def test_a_dataset_the_policy_marks_gvisor_runs_under_gvisor_through_the_api(
        docker_core: Any, docker_client: docker.DockerClient, tmp_path: Path,
        gvisor: None) -> None:
    from console.app import create_app
    from console.services import accounts, datasets
    from tests.helpers import OPERATOR, PASSWORD, bearer, change_policy, recorded, write_dataset

    accounts.create_user(docker_core, OPERATOR, "alice", "engineer", PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "d"), "demo",
                              ["alice"])
    change_policy(docker_core, {"datasets": {"demo": {"isolation": "gvisor"}}})
    token = accounts.create_token(docker_core, OPERATOR, "alice")
    client = create_app(sealroom=docker_core).test_client()
    created = client.post("/api/v1/sandboxes", headers=bearer(token), data={
        "request": json.dumps({"dataset": "demo", "command": "python inside.py",
                               "limits": {"memory_mb": 512}}),
        "code": (io.BytesIO(INSIDE), "inside.py")}, content_type="multipart/form-data")
    assert created.status_code == 201, created.get_json()
    sandbox_id = created.get_json()["id"]
    (container,) = docker_core.backend.list_owned()
    assert container.sandbox_id == sandbox_id
    (member,) = container.state["members"]
    attrs = docker_client.api.inspect_container(member["container"])
    assert attrs["HostConfig"]["Runtime"] == "runsc"
    assert assert_hardened(attrs, NetworkPlan.NONE, runtime=Runtime.GVISOR) == []
    launch = json.loads(recorded(docker_core, "sandbox:sandbox:launch")[-1].details)
    assert launch["isolation"] == {"runtime": "gvisor", "rule": "datasets.demo.isolation"}
    assert launch["spec"]["runtime"] == "gvisor"
