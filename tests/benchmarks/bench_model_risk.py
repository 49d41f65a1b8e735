"""The gate's attacks on a model against the training run that made it, on the real engine.

The bundled example (`mlp`, its default settings) trains on a 10,000-row demo dataset in a
sealed sandbox: the baseline is its wall clock from launch until it has ended. Its model is
then requested for release: the gate attacks it (SACRO-ML's LiRA with the policy's default
shadow models, and the worst-case attack) in a sealed sandbox of its own; timed from the
request until the request has left `submitted`. Ratio = attack time / training time; aim: at
most 3x, so a release waits minutes, not hours.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

from console.core import Sealroom
from console.models import ReleaseRequest
from console.services import images
from console.services import launch as launch_service
from console.services import releases as release_service
from sandbox.images import find_image
from tests.benchmarks.bench_home import bench_home
from tests.benchmarks.bench_metrics import _finished
from tests.helpers import OPERATOR

NAME = "model_risk"
RUNS = 2
ROWS = 10_000
AIM = 3.0


def _settled(core: Sealroom, release_id: str) -> ReleaseRequest:
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        with core.read() as session:
            record = session.get(ReleaseRequest, release_id)
        assert record is not None
        if record.status != "submitted":
            return record
        time.sleep(0.2)
    raise RuntimeError("the attacks did not finish within 30 minutes")


def run(runs: int = RUNS) -> dict[str, Any]:
    attack_image = find_image("sacroml")
    if attack_image is None:
        raise RuntimeError("the attack image is not built; run 'sealroom images build'")
    client = docker.from_env(timeout=120)
    training: list[float] = []
    attacks: list[float] = []
    statuses: list[str] = []
    launched: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sealroom-bench-") as tmp:
        core, caller = bench_home(Path(tmp), {}, rows=ROWS)
        images.register_image(core, OPERATOR, "sacroml", attack_image.tag, attack_image.digest)
        try:
            for _ in range(runs):
                began = time.perf_counter()
                sandbox_id = launch_service.launch(core, caller, launch_service.LaunchOrder(
                    datasets=["demo"], example="mlp", timeout_s=1800)).id
                launched.append(sandbox_id)
                _finished(core, sandbox_id)
                training.append(time.perf_counter() - began)
                began = time.perf_counter()
                release = release_service.create(core, caller, sandbox_id,
                                                 ["model.safetensors"], "bench")
                settled = _settled(core, release.id)
                attacks.append(time.perf_counter() - began)
                statuses.append(settled.status)
        finally:
            for container in client.containers.list(all=True, filters={
                    "label": f"sealroom.installation={core.settings.installation_id()}"}):
                container.remove(force=True)
            core.close()
            for sandbox_id in launched:  # their outboxes are mounted volumes
                core.backend.storage.volumes.remove(sandbox_id)
    train_s, attack_s = statistics.median(training), statistics.median(attacks)
    ratio = attack_s / train_s
    print(f"{'':<52}{'seconds':>10}{'ratio':>8}")
    print(f"{'training the example, launch to end (baseline)':<52}{train_s:>10.1f}{1:>8.2f}")
    print(f"{'attacking its model, request to decision':<52}{attack_s:>10.1f}{ratio:>8.2f}"
          f"   aim <= {AIM:.0f}x: {'met' if ratio <= AIM else 'NOT met'}")
    print(f"requests after the attacks: {', '.join(statuses)}")
    return {"runs": runs, "rows": ROWS, "training_s": training, "attack_s": attacks,
            "ratio": ratio, "aim": AIM, "aim_met": ratio <= AIM, "statuses": statuses}
