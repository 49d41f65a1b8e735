"""MPI clusters on the real engine through DockerBackend: Horovod allreduces across rank
containers that share one loopback-only network namespace, every member is hardened, a rank
that dies ends the cluster, and nothing (container, key) is left behind.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.backend import LABEL_INSTALLATION, BackendState, ContainerState, RunState
from sandbox.cluster import rank_output
from sandbox.docker_backend import DockerBackend
from sandbox.hardening import assert_hardened
from sandbox.spec import Limits, NetworkPlan, SandboxSpec
from sandbox.storage import LocalStorage
from tests.helpers import staged_sandbox

pytestmark = pytest.mark.docker

INSTALLATION = f"test-cluster-{uuid.uuid4().hex[:12]}"

ALLREDUCE = """
import json, sys, torch, horovod.torch as hvd
hvd.init()
mine = torch.arange(4, dtype=torch.float64) * (hvd.rank() + 1)
summed = hvd.allreduce(mine, op=hvd.Sum).tolist()
alone = sum(torch.arange(4, dtype=torch.float64) * (r + 1) for r in range(hvd.size())).tolist()
interfaces = sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:])
sys.stdout.write("RESULT " + json.dumps({"rank": hvd.rank(), "size": hvd.size(),
    "summed": summed, "alone": alone, "interfaces": interfaces}) + "\\n")
"""


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "sandboxes")


@pytest.fixture
def backend(storage: LocalStorage, docker_client: docker.DockerClient) -> Iterator[DockerBackend]:
    yield DockerBackend(installation=INSTALLATION, storage=storage)
    label = f"{LABEL_INSTALLATION}={INSTALLATION}"
    for container in docker_client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)


@pytest.fixture
def make_cluster(storage: LocalStorage, horovod_image: Any) -> Callable[..., SandboxSpec]:
    def make(code: str, ranks: int) -> SandboxSpec:
        sandbox_id = staged_sandbox(storage, "sb-mpi", {"job.py": code.encode()})
        return SandboxSpec(sandbox_id=sandbox_id, owner="alice", image=horovod_image.tag,
                           command=("python", "job.py"), network=NetworkPlan.MEMBERS_ONLY,
                           ranks=ranks, limits=Limits(cpus=1, memory_mb=1024, pids=256))
    return make


def _wait(backend: DockerBackend, state: BackendState, timeout_s: float = 240) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        status = backend.poll(state)
        if status.state in (RunState.EXITED, RunState.MISSING):
            return status
        assert time.monotonic() < deadline, "the cluster did not finish"
        time.sleep(0.2)


def _results(output: bytes) -> dict[int, dict[str, Any]]:
    found = {}
    for rank in range(8):
        for line in rank_output(output, rank).decode(errors="replace").splitlines():
            if line.startswith("RESULT "):
                record = json.loads(line.removeprefix("RESULT "))
                found[record["rank"]] = record
    return found


def test_three_ranks_allreduce_over_mpi_sealed_and_leave_nothing(
    backend: DockerBackend, make_cluster: Callable[..., SandboxSpec], storage: LocalStorage,
    docker_client: docker.DockerClient,
) -> None:
    spec = make_cluster(ALLREDUCE, 3)
    state = backend.create(spec)
    found = ContainerState.from_state(state)
    assert backend.members(state) == ("main", "rank-1", "rank-2")
    for member in found.members:
        attrs = docker_client.api.inspect_container(member.container)
        assert assert_hardened(attrs, NetworkPlan.MEMBERS_ONLY, found.network) == []
        # A member is not sealed by the one-container rule, nor as another cluster's member.
        assert assert_hardened(attrs, NetworkPlan.MEMBERS_ONLY, "0" * 64) != [] or \
            attrs["HostConfig"]["NetworkMode"] == "none"
    keys = storage.secrets(spec.sandbox_id)
    assert sorted(p.name for p in keys.iterdir()) == sorted([
        "authorized_keys", "host_ed25519", "id_ed25519", "id_ed25519.pub", "known_hosts",
        "ready", "ssh_config", "sshd_config"])
    assert all(p.stat().st_mode & 0o077 == 0 for p in keys.iterdir())
    backend.start(state)
    status = _wait(backend, state)
    output = backend.logs(state)
    assert (status.state, status.exit_code, status.ended_by) == (RunState.EXITED, 0, ""), output
    results = _results(output)
    assert sorted(results) == [0, 1, 2], output
    for record in results.values():
        assert record["size"] == 3
        assert record["summed"] == record["alone"] == [0.0, 6.0, 12.0, 18.0]
        assert record["interfaces"] == ["lo"]  # the cluster's namespace has nothing else
    # Each rank ran in its own container: its sshd is what that container shows.
    assert backend.poll(state).state is RunState.EXITED
    backend.stop(state)
    backend.remove(state)
    backend.remove(state)  # safe to repeat
    assert backend.list_owned() == []
    assert not keys.exists()  # the keys went with the cluster


def test_keys_are_made_for_each_launch(make_cluster: Callable[..., SandboxSpec],
                                       backend: DockerBackend, storage: LocalStorage) -> None:
    first, second = make_cluster("pass", 2), make_cluster("pass", 2)
    backend.create(first)
    backend.create(second)
    read = [(storage.secrets(s.sandbox_id) / "id_ed25519").read_bytes() for s in (first, second)]
    assert read[0] != read[1]


def test_a_rank_that_dies_ends_the_cluster(
    backend: DockerBackend, make_cluster: Callable[..., SandboxSpec],
    docker_client: docker.DockerClient,
) -> None:
    spec = make_cluster("import time, horovod.torch as hvd\nhvd.init()\ntime.sleep(600)\n", 2)
    state = backend.create(spec)
    backend.start(state)
    rank = ContainerState.from_state(state).member("rank-1")
    assert rank is not None
    deadline = time.monotonic() + 120
    while "job.py" not in repr(docker_client.api.top(rank.container)["Processes"]):
        assert time.monotonic() < deadline, "rank 1 never ran the job"
        time.sleep(0.2)
    docker_client.api.kill(rank.container)
    status = _wait(backend, state, timeout_s=60)
    assert status.state is RunState.EXITED
    assert status.exit_code not in (None, 0)
    assert status.ended_by in ("rank-1", "")  # the rank's end, or mpirun noticing it first
    backend.remove(state)
    assert backend.list_owned() == []
