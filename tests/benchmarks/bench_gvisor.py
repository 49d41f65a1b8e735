"""gVisor against runc: what the second kernel costs, measured in the same run.

Every sample is a hardened sandbox made by `DockerBackend` from the same spec but for its
runtime, runc and gVisor (`runsc`, ptrace platform) interleaved, alternating who goes first:

- launch: `create` + `start` until the engine says running, and until the sandbox's Python
  has printed its first line (gVisor boots its kernel before the command runs);
- training: a small MLP (torch, one CPU) trained on random data for a fixed number of steps,
  timed inside the sandbox after a warm-up: samples per second; and, before it, how long
  `import torch` takes (thousands of files opened and mapped: what gVisor slows most);
- dataset read: a 64 MiB file read from the read-only dataset mount in 1 MiB blocks (gVisor
  serves bind mounts through its gofer): MB per second.

The ratios (gVisor over runc for times, runc over gVisor for throughputs: how many times
slower gVisor is) are the numbers; there is no aim, this is the price of the stronger
isolation a policy may ask for (`isolation: gvisor`).
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
from sandbox.spec import DatasetMount, Limits, Runtime, SandboxSpec
from sandbox.storage import LocalStorage
from tests.helpers import staged_sandbox

NAME = "gvisor"
RUNS = 5
WARMUPS = 1
INSTALLATION = f"bench-gvisor-{uuid.uuid4().hex[:8]}"
DATA_MIB = 64

#: Prints a line as soon as Python runs, then waits to be stopped.
FIRST_LINE = b"print('up', flush=True)\nimport time\ntime.sleep(120)\n"
TRAIN = b"""
import json, time
imported = time.perf_counter()
import torch
from torch import nn
imported = time.perf_counter() - imported
torch.manual_seed(0)
torch.set_num_threads(1)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                      nn.Linear(256, 2))
optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(4096, 64), torch.randint(0, 2, (4096,))
def steps(n):
    for i in range(n):
        batch = slice((i * 128) % 4096, (i * 128) % 4096 + 128)
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimiser.step()
steps(20)
began = time.perf_counter()
steps(300)
seconds = time.perf_counter() - began
print("RESULT " + json.dumps({"samples_per_s": 300 * 128 / seconds, "import_s": imported}),
      flush=True)
"""
READ = b"""
import json, time
began = time.perf_counter()
total = 0
with open('/data/blob/blob.bin', 'rb', buffering=0) as handle:
    while block := handle.read(1 << 20):
        total += len(block)
seconds = time.perf_counter() - began
print("RESULT " + json.dumps({"mb_per_s": total / 1e6 / seconds}), flush=True)
"""


def _spec(backend: DockerBackend, image: str, runtime: Runtime, script: bytes,
          datasets: tuple[DatasetMount, ...] = ()) -> SandboxSpec:
    sandbox_id = staged_sandbox(backend.storage, "sb-bench", {"job.py": script})
    return SandboxSpec(sandbox_id=sandbox_id, owner="bench", image=image,
                       command=("python3", "/workspace/job.py"), datasets=datasets,
                       limits=Limits(cpus=1, memory_mb=1024, pids=128), runtime=runtime)


def _finish(backend: DockerBackend, state: BackendState, spec: SandboxSpec) -> bytes:
    deadline = time.monotonic() + 600
    while backend.poll(state).state in (RunState.CREATED, RunState.RUNNING):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{spec.sandbox_id} did not finish")
        time.sleep(0.05)
    output = backend.logs(state)
    backend.remove(state)
    backend.storage.discard(spec.sandbox_id)
    return output


def _launch(backend: DockerBackend, image: str, runtime: Runtime) -> tuple[float, float]:
    """Seconds until the engine says running, and until the command's first line."""
    spec = _spec(backend, image, runtime, FIRST_LINE)
    began = time.perf_counter()
    state = backend.create(spec)
    backend.start(state)
    while (status := backend.poll(state)).state is not RunState.RUNNING:
        if status.state is RunState.EXITED:
            raise RuntimeError(f"{runtime}: the sandbox ended: {backend.logs(state)!r}")
    running = time.perf_counter() - began
    while b"up" not in backend.logs(state):
        if time.perf_counter() - began > 300:
            raise TimeoutError(f"{runtime}: Python did not start")
        time.sleep(0.01)
    first_line = time.perf_counter() - began
    backend.stop(state, timeout_s=1)
    backend.remove(state)
    backend.storage.discard(spec.sandbox_id)
    return running, first_line


def _result(output: bytes) -> dict[str, float]:
    for line in output.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            return {k: float(v) for k, v in json.loads(line[len("RESULT "):]).items()}
    raise RuntimeError(f"no result in the output: {output[-1500:]!r}")


def _job(backend: DockerBackend, image: str, runtime: Runtime, script: bytes,
         datasets: tuple[DatasetMount, ...] = ()) -> dict[str, float]:
    spec = _spec(backend, image, runtime, script, datasets)
    state = backend.create(spec)
    backend.start(state)
    return _result(_finish(backend, state, spec))


def _interleaved(measure: Any, runs: int, warmups: int) -> dict[Runtime, list[Any]]:
    samples: dict[Runtime, list[Any]] = {Runtime.RUNC: [], Runtime.GVISOR: []}
    for i in range(warmups + runs):
        order = (Runtime.RUNC, Runtime.GVISOR) if i % 2 == 0 else (Runtime.GVISOR,
                                                                  Runtime.RUNC)
        for runtime in order:
            value = measure(runtime)
            if i >= warmups:
                samples[runtime].append(value)
    return samples


def _row(name: str, runc: float, gvisor: float, unit: str, ratio: float) -> str:
    return f"  {name:<26}{runc:>12.3f}{gvisor:>12.3f}  {unit:<10}{ratio:>6.2f}x"


def run(runs: int = RUNS, warmups: int = WARMUPS) -> dict[str, Any]:
    client = docker.from_env(timeout=120)
    image = find_image("base", client=client)
    if image is None:
        raise RuntimeError("the sandbox image is not built; run 'sealroom images build'")
    if "runsc" not in (client.info().get("Runtimes") or {}):
        raise RuntimeError("the engine has no runsc runtime; run images/host/ensure-host.sh")
    results: dict[str, Any] = {"runs": runs, "warmups": warmups, "image": image.tag}
    with tempfile.TemporaryDirectory(prefix="sealroom-bench-") as tmp:
        backend = DockerBackend(installation=INSTALLATION,
                                storage=LocalStorage(Path(tmp) / "sandboxes"))
        blob = Path(tmp) / "blob"
        blob.mkdir()
        (blob / "blob.bin").write_bytes(bytes(range(256)) * (DATA_MIB << 12))
        blob.chmod(0o755)
        (blob / "blob.bin").chmod(0o444)
        data = (DatasetMount("blob", blob),)
        try:
            launches = _interleaved(lambda r: _launch(backend, image.tag, r), runs, warmups)
            training = _interleaved(lambda r: _job(backend, image.tag, r, TRAIN), runs,
                                    warmups)
            reads = _interleaved(lambda r: _job(backend, image.tag, r, READ, data), runs,
                                 warmups)
        finally:
            label = f"{LABEL_INSTALLATION}={INSTALLATION}"
            for container in client.containers.list(all=True, filters={"label": label}):
                container.remove(force=True)
            client.close()

    def median(samples: dict[Runtime, list[Any]], runtime: Runtime, key: int | str) -> float:
        return float(statistics.median(s[key] for s in samples[runtime]))

    def both(samples: dict[Runtime, list[Any]], key: int | str) -> tuple[float, float]:
        return median(samples, Runtime.RUNC, key), median(samples, Runtime.GVISOR, key)

    rows = {
        "launch_running_s": (*both(launches, 0), "s", False),
        "launch_first_line_s": (*both(launches, 1), "s", False),
        "import_torch_s": (*both(training, "import_s"), "s", False),
        "training_samples_per_s": (*both(training, "samples_per_s"), "samples/s", True),
        "dataset_read_mb_per_s": (*both(reads, "mb_per_s"), "MB/s", True),
    }
    print(f"image {image.tag}, N={runs} each after {warmups} warm-up, interleaved; medians; "
          "the ratio is how many times slower gVisor is")
    print(f"  {'':<26}{'runc':>12}{'gvisor':>12}  {'':<10}{'ratio':>7}")
    for name, (runc, gvisor, unit, throughput) in rows.items():
        ratio = runc / gvisor if throughput else gvisor / runc
        print(_row(name.replace("_", " "), runc, gvisor, unit, ratio))
        results[name] = {"runc": runc, "gvisor": gvisor, "unit": unit,
                         "gvisor_slower_by": ratio}
    return results
