"""DockerBackend against the real engine: lifecycle, exit codes, OOM kills, selection by
installation label, and every hardening property read back from the real container.

Each behaviour FakeBackend stands in for is exercised here for real.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import pytest

from sandbox.backend import (
    LABEL_INSTALLATION,
    LABEL_OWNER,
    LABEL_SANDBOX,
    LAUNCHER,
    Backend,
    BackendState,
    ContainerState,
    Member,
    RunState,
    SandboxStatus,
)
from sandbox.docker_backend import DockerBackend
from sandbox.errors import EngineUnavailable, InvalidSpec, SandboxError, SandboxNotFound
from sandbox.hardening import assert_hardened
from sandbox.spec import SANDBOX_UID, DatasetMount, Limits, NetworkPlan, SandboxSpec
from sandbox.storage import LocalStorage

pytestmark = pytest.mark.docker

#: One installation id per test session, so parallel runs on one engine never collide.
INSTALLATION = f"test-{uuid.uuid4().hex[:12]}"
OTHER_INSTALLATION = f"{INSTALLATION}-other"






def _remove_labelled(client: docker.DockerClient, installation: str) -> None:
    label = f"{LABEL_INSTALLATION}={installation}"
    for container in client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)




@pytest.fixture(autouse=True)
def _remove_containers_after_each_test(docker_client: docker.DockerClient) -> Iterator[None]:
    yield
    for installation in (INSTALLATION, OTHER_INSTALLATION):
        _remove_labelled(docker_client, installation)


def _container(state: BackendState) -> str:
    return ContainerState.from_state(state).members[0].container


def _naming(container: str) -> BackendState:
    """A state naming one container, as the console would hold it."""
    return ContainerState((Member(LAUNCHER, container),)).to_state()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "sandboxes")


@pytest.fixture
def backend(storage: LocalStorage) -> DockerBackend:
    return DockerBackend(installation=INSTALLATION, storage=storage)


@pytest.fixture
def other_backend(storage: LocalStorage) -> DockerBackend:
    return DockerBackend(installation=OTHER_INSTALLATION, storage=storage)


@pytest.fixture
def make_spec(python_image: str, storage: LocalStorage) -> Callable[..., SandboxSpec]:
    """A spec running `python3 -c <code>` with its own workspace and outbox."""
    counter = iter(range(1000))

    def make(code: str, *, limits: Limits | None = None, owner: str = "alice") -> SandboxSpec:
        sandbox_id = f"sb-{next(counter)}-{uuid.uuid4().hex[:6]}"
        storage.create(sandbox_id)
        storage.seal_staging(sandbox_id)
        spec = SandboxSpec(
            sandbox_id=sandbox_id,
            owner=owner,
            image=python_image,
            command=("python3", "-c", code),
        )
        return spec.with_limits(limits) if limits else spec

    return make


def _wait(backend: Backend, state: BackendState, timeout_s: float = 60) -> SandboxStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        status = backend.poll(state)
        if status.state in (RunState.EXITED, RunState.MISSING) or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def _wait_running(backend: Backend, state: BackendState) -> None:
    deadline = time.monotonic() + 30
    while backend.poll(state).state is not RunState.RUNNING:
        assert time.monotonic() < deadline, "sandbox never ran"
        time.sleep(0.05)


# --- engine -------------------------------------------------------------------------------


def test_ping(backend: DockerBackend) -> None:
    backend.ping()
    assert isinstance(backend, Backend)


def test_engine_down_answers_fast_on_every_call(make_spec: Callable[..., SandboxSpec]) -> None:
    down = DockerBackend(installation=INSTALLATION, base_url="unix:///nonexistent.sock",
                         storage=LocalStorage(Path("/nonexistent")))
    started = time.monotonic()
    with pytest.raises(EngineUnavailable) as caught:
        down.ping()
    # "Fast" means well inside the 60 s operation timeout, not a speed: shared cores are slow.
    assert time.monotonic() - started < 30
    assert "engine is not available" in caught.value.user_message
    assert "nonexistent" not in caught.value.user_message  # detail stays out of the message
    assert caught.value.detail != caught.value.user_message
    calls: list[Callable[[], object]] = [
        lambda: down.create(make_spec("pass")),
        lambda: down.start(_naming("abc")),
        lambda: down.poll(_naming("abc")),
        lambda: down.logs(_naming("abc")),
        lambda: down.stop(_naming("abc")),
        lambda: down.remove(_naming("abc")),
        down.list_owned,
    ]
    for call in calls:
        with pytest.raises(EngineUnavailable):
            call()
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    "base_url",
    [
        "tcp://127.0.0.1:9",  # nothing listens: refused at once
        # Addresses off this machine are never used in tests (this workplace's rule), so the
        # no-answer case is left to the connect timeout's own setting.
    ],
)
def test_unreachable_tcp_engine_answers_within_the_connect_timeout(base_url: str) -> None:
    down = DockerBackend(installation=INSTALLATION, base_url=base_url,
                         storage=LocalStorage(Path("/nonexistent")))
    started = time.monotonic()
    with pytest.raises(EngineUnavailable):
        down.ping()
    assert time.monotonic() - started < 30


def test_init_support_matches_the_engine(
    backend: DockerBackend,
    docker_client: docker.DockerClient,
    make_spec: Callable[..., SandboxSpec],
) -> None:
    info = docker_client.info()
    expected = bool(info.get("InitBinary")) and (info.get("InitCommit") or {}).get("ID") != "N/A"
    assert backend.supports_init() is expected
    state = backend.create(
        make_spec("import os; print(open('/proc/1/cmdline','rb').read().split(b'\\0')[0])")
    )
    assert docker_client.api.inspect_container(_container(state))["HostConfig"]["Init"] is expected
    backend.start(state)
    assert _wait(backend, state).exit_code == 0
    pid1 = backend.logs(state).decode()
    if expected:
        assert "docker-init" in pid1 or "tini" in pid1
    else:
        assert "python3" in pid1


# --- lifecycle ----------------------------------------------------------------------------


def test_create_start_poll_logs_stop_remove(
    backend: DockerBackend, make_spec: Callable[..., SandboxSpec]
) -> None:
    code = "import sys; print('out-1'); print('err-1', file=sys.stderr); print('out-2')"
    state = backend.create(make_spec(code))
    created = backend.poll(state)
    assert created.state is RunState.CREATED
    assert created.exit_code is None and created.started_at is None
    assert backend.logs(state) == b""
    backend.start(state)
    status = _wait(backend, state)
    assert status.state is RunState.EXITED
    assert status.exit_code == 0
    assert not status.oom_killed
    assert status.started_at and status.finished_at and status.error == ""
    logs = backend.logs(state)
    assert b"out-1\n" in logs and b"err-1\n" in logs and b"out-2\n" in logs
    assert backend.logs(state, tail=1) in (b"out-2\n", b"err-1\n")
    assert backend.logs(state, tail=0) == b""
    assert not logs.startswith(b"20")  # no timestamps
    backend.stop(state)
    backend.stop(state)
    assert backend.poll(state).exit_code == 0
    backend.remove(state)
    backend.remove(state)
    assert backend.poll(state).state is RunState.MISSING
    with pytest.raises(SandboxNotFound):
        backend.logs(state)
    with pytest.raises(SandboxNotFound):
        backend.start(state)


def test_exit_code_is_reported(
    backend: DockerBackend, make_spec: Callable[..., SandboxSpec]
) -> None:
    state = backend.create(make_spec("raise SystemExit(3)"))
    backend.start(state)
    status = _wait(backend, state)
    assert (status.state, status.exit_code, status.oom_killed) == (RunState.EXITED, 3, False)


def test_oom_kill_is_detected(
    backend: DockerBackend, make_spec: Callable[..., SandboxSpec]
) -> None:
    code = "b = bytearray(512 * 1024 * 1024); print('survived')"
    state = backend.create(make_spec(code, limits=Limits(memory_mb=64)))
    backend.start(state)
    status = _wait(backend, state)
    assert status.state is RunState.EXITED
    assert status.oom_killed
    assert status.exit_code == 137
    assert b"survived" not in backend.logs(state)


def test_oom_kill_of_a_child_is_detected(
    backend: DockerBackend, make_spec: Callable[..., SandboxSpec]
) -> None:
    code = (
        "import subprocess, sys\n"
        "r = subprocess.run([sys.executable, '-c', 'b = bytearray(512 << 20)'])\n"
        "print('child', r.returncode)\n"
    )
    state = backend.create(make_spec(code, limits=Limits(memory_mb=64)))
    backend.start(state)
    status = _wait(backend, state)
    assert status.oom_killed
    assert status.exit_code == 0
    assert b"child -9" in backend.logs(state)


def test_running_sandbox_stops_with_sigterm(
    backend: DockerBackend, make_spec: Callable[..., SandboxSpec]
) -> None:
    state = backend.create(make_spec("import time; print('up', flush=True); time.sleep(300)"))
    backend.start(state)
    _wait_running(backend, state)
    status = backend.poll(state)
    assert status.exit_code is None and status.started_at and status.finished_at is None
    backend.start(state)  # already running: a no-op
    # Stop it once its program runs (on loaded shared cores the interpreter can still be
    # starting when the container is), with a grace period a SIGTERM never needs.
    deadline = time.monotonic() + 120
    while b"up" not in backend.logs(state):
        assert time.monotonic() < deadline, "the program never started"
        time.sleep(0.05)
    started = time.monotonic()
    backend.stop(state, timeout_s=60)
    assert time.monotonic() - started < 30  # SIGTERM ended it; no wait for the kill
    status = backend.poll(state)
    assert (status.state, status.exit_code) == (RunState.EXITED, 143)
    backend.stop(state, timeout_s=5)
    assert backend.poll(state).exit_code == 143


def test_stop_outlasts_the_connect_timeout(
    backend: DockerBackend, make_spec: Callable[..., SandboxSpec]
) -> None:
    # SIGTERM ignored: the engine kills after the grace period, longer than the 3 s connect
    # timeout, so that timeout must not apply to the call itself.
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    state = backend.create(make_spec(code))
    backend.start(state)
    _wait_running(backend, state)
    time.sleep(0.3)  # let python install the handler
    started = time.monotonic()
    backend.stop(state, timeout_s=4)
    assert time.monotonic() - started >= 3.5
    assert backend.poll(state).exit_code == 137


def test_stop_a_created_sandbox_is_a_no_op(
    backend: DockerBackend, make_spec: Callable[..., SandboxSpec]
) -> None:
    state = backend.create(make_spec("pass"))
    backend.stop(state)
    assert backend.poll(state).state is RunState.CREATED


def test_vanished_container_is_missing(
    backend: DockerBackend,
    docker_client: docker.DockerClient,
    make_spec: Callable[..., SandboxSpec],
) -> None:
    state = backend.create(make_spec("import time; time.sleep(300)"))
    backend.start(state)
    docker_client.api.remove_container(_container(state), force=True)
    assert backend.poll(state).state is RunState.MISSING
    backend.stop(state)
    backend.remove(state)
    assert backend.list_owned() == []
    with pytest.raises(SandboxNotFound):
        backend.logs(state)
    with pytest.raises(SandboxNotFound):
        backend.start(state)


@pytest.mark.parametrize("container", ["", "../containers/json", "no such container"])
def test_odd_handles_are_missing(backend: DockerBackend, container: str) -> None:
    state = {"members": [{"name": "main", "container": container}]}
    assert backend.poll(state).state is RunState.MISSING
    backend.stop(state)
    backend.remove(state)
    with pytest.raises(SandboxNotFound):
        backend.logs(state)
    assert backend.poll({}).state is RunState.MISSING


def test_missing_image_is_an_operator_error(
    backend: DockerBackend, make_spec: Callable[..., SandboxSpec]
) -> None:
    spec = dataclasses.replace(make_spec("pass"), image=f"sealroom-missing/{uuid.uuid4().hex}:x")
    with pytest.raises(SandboxError) as caught:
        backend.create(spec)
    assert not isinstance(caught.value, InvalidSpec)
    assert "image" in caught.value.user_message


def test_missing_dataset_directory_is_an_invalid_spec(
    backend: DockerBackend, make_spec: Callable[..., SandboxSpec], tmp_path: Path
) -> None:
    spec = make_spec("pass").with_dataset(DatasetMount("gone", tmp_path / "does-not-exist"))
    with pytest.raises(InvalidSpec) as caught:
        backend.create(spec)
    assert "does-not-exist" not in caught.value.user_message
    assert "does-not-exist" in caught.value.detail


def test_command_that_cannot_run_ends_as_exited(
    docker_client: docker.DockerClient, make_spec: Callable[..., SandboxSpec],
    storage: LocalStorage,
) -> None:
    spec = dataclasses.replace(make_spec("pass"), command=("/no/such/program",))
    for init in (True, False):
        backend = DockerBackend(installation=INSTALLATION, init=init, storage=storage)
        state = backend.create(spec)
        try:
            backend.start(state)
        except SandboxError as exc:  # without docker-init the engine refuses to start it
            assert not init
            assert "/no/such/program" in exc.detail
        status = _wait(backend, state)
        assert status.state is RunState.EXITED
        assert status.exit_code not in (None, 0)


# --- ownership ----------------------------------------------------------------------------


def test_list_owned_selects_by_installation_label_only(
    backend: DockerBackend,
    other_backend: DockerBackend,
    docker_client: docker.DockerClient,
    make_spec: Callable[..., SandboxSpec],
    python_image: str,
) -> None:
    first = backend.create(make_spec("pass", owner="alice"))
    second = backend.create(make_spec("import time; time.sleep(300)", owner="bob"))
    backend.start(second)
    foreign = other_backend.create(make_spec("pass", owner="carol"))
    # Same sandbox label, no installation label: not ours either.
    unlabelled = docker_client.api.create_container(
        python_image, ["true"], labels={LABEL_SANDBOX: "sb-x", LABEL_OWNER: "mallory"}
    )["Id"]
    try:
        owned = {o.sandbox_id: (o.state, o.owner) for o in backend.list_owned()}
        assert sorted((s for s, _ in owned.values()), key=str) == sorted([first, second], key=str)
        assert {o.owner for o in backend.list_owned()} == {"alice", "bob"}
        assert [o.state for o in other_backend.list_owned()] == [foreign]
        # Another installation's sandbox does not exist for this backend, and is left alone.
        assert backend.poll(foreign).state is RunState.MISSING
        backend.stop(foreign)
        backend.remove(foreign)
        with pytest.raises(SandboxNotFound):
            backend.start(foreign)
        assert other_backend.poll(foreign).state is RunState.CREATED
        backend.remove(_naming(unlabelled))
        assert docker_client.api.inspect_container(unlabelled)["Id"] == unlabelled
    finally:
        docker_client.api.remove_container(unlabelled, force=True)


def test_list_owned_groups_containers_by_sandbox_and_strays_are_removed_alone(
    backend: DockerBackend,
    docker_client: docker.DockerClient,
    make_spec: Callable[..., SandboxSpec],
) -> None:
    spec = make_spec("pass")
    recorded = backend.create(spec)
    backend.create(spec)  # a second container for the same sandbox (a crashed retry, say)
    (owned,) = backend.list_owned()
    assert owned.sandbox_id == spec.sandbox_id and owned.owner == "alice"
    assert len(owned.state["members"]) == 2
    assert backend.strays(recorded, recorded) is None
    strays = backend.strays(owned.state, recorded)
    assert strays is not None and _container(strays) != _container(recorded)
    backend.remove(strays)
    (left,) = backend.list_owned()
    assert [m["container"] for m in left.state["members"]] == [_container(recorded)]
    assert backend.poll(recorded).state is RunState.CREATED


# --- hardening ----------------------------------------------------------------------------


def test_every_hardening_property_on_the_real_container(
    backend: DockerBackend,
    docker_client: docker.DockerClient,
    make_spec: Callable[..., SandboxSpec],
    tmp_path: Path,
    storage: LocalStorage,
) -> None:
    dataset = tmp_path / "mnist"
    dataset.mkdir()
    (dataset / "train.csv").write_text("x,y\n")
    dataset.chmod(0o755)
    spec = (
        make_spec("pass")
        .with_dataset(DatasetMount("mnist", dataset))
        .with_limits(Limits(cpus=0.5, memory_mb=128, pids=32, tmp_mb=16))
        .with_env("SEED", "7")
    )
    state = backend.create(spec)
    attrs = docker_client.api.inspect_container(_container(state))
    host, config = attrs["HostConfig"], attrs["Config"]

    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=16m"}
    assert config["User"] == "10001:10001"
    assert host["Memory"] == host["MemorySwap"] == 128 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 32
    assert host["IpcMode"] == "private"
    assert host["Privileged"] is False
    assert not host["Devices"] and not host["DeviceRequests"]
    assert host["PidMode"] == "" and host["UTSMode"] == "" and host["UsernsMode"] == ""
    assert not host.get("Binds") and not host.get("VolumesFrom")
    assert host["CgroupnsMode"] == "private"
    assert config["WorkingDir"] == "/workspace"
    assert config["Hostname"] == "sandbox"
    assert "HOME=/tmp" in config["Env"] and "SEED=7" in config["Env"]
    ours = {LABEL_SANDBOX: spec.sandbox_id, LABEL_OWNER: "alice", LABEL_INSTALLATION: INSTALLATION}
    assert {k: v for k, v in config["Labels"].items() if k in ours} == ours  # + image labels
    mounts = {(m["Destination"], m["Source"], m["RW"], m["Type"]) for m in attrs["Mounts"]}
    assert mounts == {
        ("/data/mnist", str(dataset), False, "bind"),
        ("/workspace", str(storage.workspace(spec.sandbox_id)), True, "bind"),
        ("/outbox", str(storage.outbox(spec.sandbox_id)), True, "bind"),
    }
    assert not any("docker.sock" in str(m.get("Source")) for m in attrs["Mounts"])
    assert assert_hardened(attrs, NetworkPlan.NONE) == []
    # Made with no network at all, it would even pass as a cluster's launcher; joined to
    # another container's namespace it would not pass as a single sandbox.
    assert assert_hardened(attrs, NetworkPlan.MEMBERS_ONLY, "c0ffee") == []
    joined = {**attrs, "HostConfig": {**host, "NetworkMode": "container:c0ffee"}}
    assert assert_hardened(joined, NetworkPlan.NONE) != []


def test_hardening_seen_from_inside(
    backend: DockerBackend, make_spec: Callable[..., SandboxSpec], tmp_path: Path
) -> None:
    dataset = tmp_path / "mnist"
    dataset.mkdir()
    dataset.chmod(0o755)
    code = r"""
import json, os, socket
status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if ':' in l)
mounts = {}
for line in open('/proc/self/mountinfo'):
    left, _, right = line.partition(' - ')
    fields = left.split()
    fs_type, _, fs_opts = right.split()[:3]
    mounts[fields[4]] = (fields[5], fs_type, fs_opts)
print(json.dumps({
    'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(),
    'cap_eff': status['CapEff'].strip(), 'cap_bnd': status['CapBnd'].strip(),
    'cap_prm': status['CapPrm'].strip(), 'no_new_privs': status['NoNewPrivs'].strip(),
    'seccomp': status['Seccomp'].strip(), 'hostname': socket.gethostname(),
    'cwd': os.getcwd(), 'home': os.environ.get('HOME'),
    'interfaces': [n for _, n in socket.if_nameindex()],
    'mounts': mounts,
}))
"""
    spec = make_spec(code).with_dataset(DatasetMount("mnist", dataset))
    state = backend.create(spec)
    backend.start(state)
    assert _wait(backend, state).exit_code == 0, backend.logs(state)
    seen = json.loads(backend.logs(state))
    assert (seen["uid"], seen["gid"]) == (SANDBOX_UID, SANDBOX_UID)
    assert seen["groups"] in ([], [SANDBOX_UID])
    assert seen["cap_eff"] == seen["cap_prm"] == seen["cap_bnd"] == "0" * 16
    assert seen["no_new_privs"] == "1"
    assert seen["seccomp"] == "2"  # filter mode: the default profile is on
    assert (seen["hostname"], seen["cwd"], seen["home"]) == ("sandbox", "/workspace", "/tmp")
    assert seen["interfaces"] == ["lo"]
    mounts = seen["mounts"]
    assert mounts["/"][0].startswith("ro")
    assert mounts["/data/mnist"][0].startswith("ro")
    assert mounts["/workspace"][0].startswith("rw")
    assert mounts["/outbox"][0].startswith("rw")
    tmp_opts = mounts["/tmp"][0].split(",")
    assert mounts["/tmp"][1] == "tmpfs" and "nosuid" in tmp_opts and "nodev" in tmp_opts


def test_assert_hardened_flags_an_unhardened_container(
    backend: DockerBackend, docker_client: docker.DockerClient, python_image: str
) -> None:
    # Created, never started: a plain `docker create` with the engine socket mounted.
    weak = docker_client.api.create_container(
        python_image,
        ["true"],
        user="0:0",
        labels={LABEL_SANDBOX: "sb-weak", LABEL_OWNER: "mallory", LABEL_INSTALLATION: INSTALLATION},
        host_config=docker_client.api.create_host_config(
            binds={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
            cap_add=["SYS_ADMIN"],
            security_opt=["seccomp=unconfined"],
        ),
    )["Id"]
    found = assert_hardened(docker_client.api.inspect_container(weak), NetworkPlan.NONE)
    for expected in (
        "network mode",
        "capabilities not all dropped",
        "capabilities added",
        "no-new-privileges",
        "unsafe security option",
        "root filesystem is writable",
        "runs as user",
        "no memory limit",
        "no CPU limit",
        "no pids limit",
        "bind mount",
        "engine socket",
    ):
        assert any(expected in v for v in found), (expected, found)
    # The backend's own self-check refuses to start it.
    with pytest.raises(SandboxError) as caught:
        backend.start(_naming(weak))
    assert "hardening" in caught.value.user_message
    assert docker_client.api.inspect_container(weak)["State"]["Status"] == "created"


# --- the log, read by cursor ---------------------------------------------------------------


def _raw_container(docker_client: docker.DockerClient, image: str, code: str,
                   workdir: Path | None = None, **log_opts: str) -> Any:
    """A plain container with its own json-file options (small, to make the engine rotate),
    labelled so the per-test cleanup removes it."""
    return docker_client.containers.run(
        image, ["python3", "-c", code], detach=True, network_mode="none",
        labels={LABEL_INSTALLATION: INSTALLATION},
        volumes={str(workdir): {"bind": "/w", "mode": "rw"}} if workdir else None,
        log_config=docker.types.LogConfig(type="json-file", config=log_opts or {}))


def _wait_exited(docker_client: docker.DockerClient, container: Any) -> None:
    assert container.wait(timeout=120)["StatusCode"] == 0, container.logs()[-2000:]


def test_logs_since_reads_each_message_once_in_order(
        backend: DockerBackend, docker_client: docker.DockerClient, python_image: str,
        tmp_path: Path) -> None:
    """Bursts of messages, many within one second (the engine's `since` is whole seconds):
    reading by cursor after each burst gives the log exactly once, in order."""
    os.chmod(tmp_path, 0o777)
    code = (
        "import os, sys, time\n"
        "for burst in range(3):\n"
        "    for i in range(200):\n"
        "        print(f'{burst}:{i}', flush=True)\n"
        "    sys.stdout.write('no newline'); sys.stdout.flush()\n"
        "    open(f'/w/done{burst}', 'w').close()\n"
        "    while burst < 2 and not os.path.exists(f'/w/go{burst}'): time.sleep(0.01)\n")
    container = _raw_container(docker_client, python_image, code, tmp_path)
    copied, cursor = b"", ""
    for burst in range(3):
        deadline = time.monotonic() + 60
        while not (tmp_path / f"done{burst}").exists():
            assert time.monotonic() < deadline, "the burst never ended"
            time.sleep(0.02)
        chunk = backend.logs_since(_naming(container.id), "", cursor)
        copied, cursor = copied + chunk.data, chunk.cursor
        # Reading again at once gives nothing already taken. It may give the unterminated
        # "no newline": the engine logs a partial line when its copier gets round to it, on
        # its own time, so this read is not asserted empty; the whole copy is checked below.
        again = backend.logs_since(_naming(container.id), "", cursor)
        assert not copied.endswith(again.data) or not again.data
        copied, cursor = copied + again.data, again.cursor
        (tmp_path / f"go{burst}").touch()
    _wait_exited(docker_client, container)
    copied += backend.logs_since(_naming(container.id), "", cursor).data
    assert copied == backend.logs(_naming(container.id))
    assert copied.count(b"no newline") == 3 and copied.count(b"\n") == 600


def test_logs_since_survives_the_engine_rotating_its_log(
        backend: DockerBackend, docker_client: docker.DockerClient, python_image: str) -> None:
    """The json-file driver keeps only the newest files: a cursor still continues after the
    last message taken, and nothing is read twice."""
    code = "for i in range(20000):\n    print(f'record {i:06d}', flush=True)\n"
    container = _raw_container(docker_client, python_image, code, None,
                               **{"max-size": "10k", "max-file": "2"})
    _wait_exited(docker_client, container)
    first = backend.logs_since(_naming(container.id), "", "", max_bytes=512)
    kept = backend.logs(_naming(container.id))
    assert 0 < len(kept) < 40_000  # the engine rotated most of it away
    rest = backend.logs_since(_naming(container.id), "", first.cursor)
    assert first.data + rest.data == kept
    numbers = [int(line.split()[1]) for line in (first.data + rest.data).splitlines()]
    assert numbers == list(range(numbers[0], 20000))
    assert backend.logs_since(_naming(container.id), "", rest.cursor).data == b""


# --- resource use -------------------------------------------------------------------------


def test_usage_reads_the_engines_cpu_and_memory_counters(
    backend: DockerBackend, make_spec: Callable[..., SandboxSpec],
    docker_client: docker.DockerClient,
) -> None:
    """`usage` is the engine's own counters (docker stats, one-shot) summed over members:
    what the console shows beside the log as its own figures. A stopped sandbox has none."""
    code = ("import sys, time\n"
            "held = b'\\x01' * (96 << 20)\n"  # touched, so resident
            "sum(range(3_000_000))\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")
    state = backend.create(make_spec(code, limits=Limits(memory_mb=512)))
    backend.start(state)
    # Block on the engine's log stream (no polling) until the sandbox says it holds the memory.
    for line in docker_client.api.logs(_container(state), stream=True, follow=True):
        if b"ready" in line:
            break
    usage = backend.usage(state)
    assert usage is not None
    assert usage.memory_bytes >= 90 << 20 and usage.memory_bytes < 512 << 20
    assert usage.cpu_ns > 0
    assert abs((datetime.now(UTC) - usage.read_at).total_seconds()) < 300
    backend.stop(state, timeout_s=1)
    assert backend.usage(state) is None
    backend.remove(state)
    assert backend.usage(state) is None
