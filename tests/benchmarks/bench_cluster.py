"""MPI clusters: launch-to-ready against bare containers, and allreduce bandwidth against the
same Horovod job with its ranks in one container.

Launch-to-ready: a cluster of N ranks (N = 2, 4) through `DockerBackend`, from `create` until
mpirun has run a trivial program on every rank (so every rank's sshd answered with the
cluster's key), against creating, starting and waiting for N bare containers of the same image
running the same trivial program. Aim: at most 1.5x.

Bandwidth: 2 ranks allreduce a 16 MiB float32 tensor 20 times over the cluster's loopback
(mpirun over TCP, each rank in its own container) against `horovodrun -np 2 -H localhost:2` in
one container, where OpenMPI may also use shared memory. (The brief's baseline is horovodrun on
the host; the host has no Horovod build, and the image's is the same code.) Aim: at least 0.9x.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker

from sandbox.backend import LABEL_INSTALLATION, BackendState, RunState
from sandbox.docker_backend import DockerBackend
from sandbox.images import find_image
from sandbox.spec import SANDBOX_UID, Limits, NetworkPlan, SandboxSpec
from sandbox.storage import LocalStorage
from tests.helpers import staged_sandbox

NAME = "cluster"
RUNS = 3
AIM_LAUNCH = 1.5
AIM_BANDWIDTH = 0.9
INSTALLATION = f"bench-cluster-{uuid.uuid4().hex[:8]}"
TRIVIAL = ("python", "-c", "pass")
ALLREDUCE = """
import json, time, torch, horovod.torch as hvd
hvd.init()
t = torch.ones(4 << 20, dtype=torch.float32)
hvd.allreduce(t, name="warm")
start = time.perf_counter()
for i in range(20):
    hvd.allreduce(t, name=f"x{i}")
seconds = time.perf_counter() - start
if hvd.rank() == 0:
    mb = 20 * t.numel() * 4 / 1e6
    print("BANDWIDTH " + json.dumps({"mb_per_s": mb / seconds}), flush=True)
"""


def _wait(backend: DockerBackend, state: BackendState) -> int | None:
    deadline = time.monotonic() + 300
    while (status := backend.poll(state)).state not in (RunState.EXITED, RunState.MISSING):
        if time.monotonic() > deadline:
            raise TimeoutError("the cluster did not finish")
        time.sleep(0.05)
    return status.exit_code


def _cluster(backend: DockerBackend, image: str, ranks: int, command: tuple[str, ...],
             files: dict[str, str]) -> tuple[float, bytes]:
    storage = backend.storage
    sandbox_id = staged_sandbox(storage, "sb-bench",
                                {name: text.encode() for name, text in files.items()})
    spec = SandboxSpec(sandbox_id=sandbox_id, owner="bench", image=image, command=command,
                       ranks=ranks, network=NetworkPlan.MEMBERS_ONLY,
                       limits=Limits(cpus=1, memory_mb=1024, pids=256))
    started = time.perf_counter()
    state = backend.create(spec)
    backend.start(state)
    code = _wait(backend, state)
    seconds = time.perf_counter() - started
    output = backend.logs(state)
    backend.remove(state)
    storage.discard(sandbox_id)
    if code != 0:
        raise RuntimeError(f"the cluster job failed ({code}): {output[-1000:]!r}")
    return seconds, output


def _bare(client: docker.DockerClient, image: str, count: int) -> float:
    started = time.perf_counter()
    containers = [client.containers.create(
        image, list(TRIVIAL), user=f"{SANDBOX_UID}:{SANDBOX_UID}", network_mode="none",
        labels={LABEL_INSTALLATION: INSTALLATION}) for _ in range(count)]
    for container in containers:
        container.start()
    for container in containers:
        container.wait(timeout=120)
    seconds = time.perf_counter() - started
    for container in containers:
        container.remove(force=True)
    return seconds


def _bandwidth(output: bytes) -> float:
    for line in output.decode(errors="replace").splitlines():
        if "BANDWIDTH " in line:
            record, _ = json.JSONDecoder().raw_decode(line.split("BANDWIDTH ", 1)[1])
            return float(record["mb_per_s"])
    raise RuntimeError(f"no bandwidth in the output: {output[-1000:]!r}")


def _one_container(client: docker.DockerClient, image: str, workspace: Path) -> float:
    container = client.containers.create(
        image, ["horovodrun", "-np", "2", "-H", "localhost:2", "python", "allreduce.py"],
        user=f"{SANDBOX_UID}:{SANDBOX_UID}", network_mode="none", working_dir="/workspace",
        volumes={str(workspace): {"bind": "/workspace", "mode": "ro"}},
        environment={"HOME": "/tmp"}, labels={LABEL_INSTALLATION: INSTALLATION},
        nano_cpus=2_000_000_000)
    try:
        container.start()
        container.wait(timeout=300)
        return _bandwidth(container.logs())
    finally:
        container.remove(force=True)


def run() -> dict[str, Any]:
    client = docker.from_env(timeout=120)
    image = find_image("horovod", client=client)
    if image is None:
        raise RuntimeError("the horovod image is not built; run 'sealroom images build'")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        backend = DockerBackend(installation=INSTALLATION,
                                storage=LocalStorage(Path(tmp) / "sandboxes"))
        try:
            print(f"  {'ranks':>5} {'cluster s':>10} {'bare s':>8} {'ratio':>6}")
            for ranks in (2, 4):
                cluster = [_cluster(backend, image.tag, ranks, TRIVIAL, {})[0]
                           for _ in range(RUNS)]
                bare = [_bare(client, image.tag, ranks) for _ in range(RUNS)]
                ratio = statistics.median(cluster) / statistics.median(bare)
                verdict = "ok" if ratio <= AIM_LAUNCH else f"ABOVE AIM {AIM_LAUNCH}"
                print(f"  {ranks:>5} {statistics.median(cluster):>10.2f} "
                      f"{statistics.median(bare):>8.2f} {ratio:>6.2f}  {verdict}")
                results[f"launch_{ranks}_ranks"] = {
                    "cluster_s": statistics.median(cluster),
                    "bare_s": statistics.median(bare), "ratio": ratio}
            _, output = _cluster(backend, image.tag, 2, ("python", "allreduce.py"),
                                 {"allreduce.py": ALLREDUCE})
            across = _bandwidth(output)
            workspace = Path(tmp) / "one"
            workspace.mkdir()
            (workspace / "allreduce.py").write_text(ALLREDUCE)
            workspace.chmod(0o755)
            inside = _one_container(client, image.tag, workspace)
            ratio = across / inside
            verdict = "ok" if ratio >= AIM_BANDWIDTH else f"BELOW AIM {AIM_BANDWIDTH}"
            print(f"  allreduce 16 MiB x20: {across:.0f} MB/s across rank containers, "
                  f"{inside:.0f} MB/s in one container: {ratio:.2f}x  {verdict}")
            results["allreduce"] = {"cluster_mb_s": across, "one_container_mb_s": inside,
                                    "ratio": ratio}
        finally:
            label = f"{LABEL_INSTALLATION}={INSTALLATION}"
            for container in client.containers.list(all=True, filters={"label": label}):
                container.remove(force=True)
    return results
