"""Launch latency: the console's JSON API against a bare `docker run` of the same image.

Both sides are timed in the same run, interleaved, until the container is running: the bare
run until the engine reports it running, the API until it answers 201 with status running
(it answers only after the start). The ratio of medians is the number; the aim is 1.15.
"""

from __future__ import annotations

import json
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import requests

from console.app import create_app
from console.core import Sealroom
from console.services import accounts, datasets, images
from console.settings import Settings
from sandbox.backend import LABEL_INSTALLATION, LABEL_SANDBOX
from sandbox.images import BuiltImage, find_image
from tests.helpers import OPERATOR, PASSWORD, bearer, write_dataset

NAME = "launch"
RUNS = 10
WARMUPS = 2
AIM = 1.15
BENCH_LABEL = "sealroom.benchmark"
BASELINE_COMMAND = ["python3", "-c", "import time; time.sleep(30)"]
# Exits at once on SIGTERM so that stopping it through the API costs no grace period.
SLEEPER = (b"import signal, sys, time\n"
           b"signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
           b"time.sleep(30)\n")
ENGINEER = "bench"


class _Console:
    """A real installation on a temporary home, served by waitress on a loopback port."""

    def __init__(self, home: Path, image: BuiltImage) -> None:
        from waitress.server import create_server

        # Its own checkpoint file too, whatever SEALROOM_AUDIT_CHECKPOINT_DIR says.
        self.core = Sealroom(Settings.from_env(
            home=home / "home", audit_checkpoint_dir=home / "home" / "audit-checkpoints"))
        images.register_image(self.core, OPERATOR, "base", image.tag, image.digest)
        accounts.create_user(self.core, OPERATOR, ENGINEER, "engineer", PASSWORD)
        self.token = accounts.create_token(self.core, OPERATOR, ENGINEER)
        datasets.register_dataset(self.core, OPERATOR, write_dataset(home / "src"), "demo",
                                  [ENGINEER])
        self.installation = self.core.settings.installation_id()
        self.server = create_server(create_app(sealroom=self.core), host="127.0.0.1", port=0,
                                    threads=4)
        threading.Thread(target=self.server.run, name="bench-console", daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.effective_port}/api/v1"
        self.http = requests.Session()
        self.http.headers.update(bearer(self.token))

    def launch(self) -> str:
        response = self.http.post(f"{self.url}/sandboxes", timeout=60, files={
            "code": ("sleeper.py", SLEEPER, "text/x-python"),
        }, data={"request": json.dumps({
            "dataset": "demo", "command": "python sleeper.py",
            "limits": {"cpus": 1, "memory_mb": 512, "timeout_s": 300}})})
        if response.status_code != 201:
            raise RuntimeError(f"launch refused: {response.status_code} {response.text}")
        body = response.json()
        if body["status"] != "running":
            raise RuntimeError(f"the API answered with status {body['status']!r}: {body}")
        return str(body["id"])

    def stop(self, sandbox_id: str) -> None:
        response = self.http.post(f"{self.url}/sandboxes/{sandbox_id}/stop", timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"stop refused: {response.status_code} {response.text}")

    def close(self) -> None:
        self.http.close()
        self.server.close()
        self.core.close()


def _timed(action: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = action()
    return time.perf_counter() - began, result


def _bare_run(client: docker.DockerClient, image: BuiltImage, run_id: str) -> float:
    def run() -> Any:
        container = client.containers.run(image.digest, BASELINE_COMMAND, detach=True,
                                          network_mode="none", labels={BENCH_LABEL: run_id})
        while container.status != "running":
            if container.status in ("exited", "dead"):
                raise RuntimeError(f"the bare container ended: {container.status}")
            container.reload()
        return container

    seconds, container = _timed(run)
    container.remove(force=True)
    return seconds


def _api_launch(client: docker.DockerClient, console: _Console) -> float:
    seconds, sandbox_id = _timed(console.launch)
    # Outside the clock: the engine agrees that it runs.
    (container,) = client.containers.list(all=True,
                                          filters={"label": f"{LABEL_SANDBOX}={sandbox_id}"})
    if container.status != "running":
        raise RuntimeError(f"{sandbox_id}: the API said running, the engine {container.status}")
    console.stop(sandbox_id)  # also removes the container; frees the concurrency quota
    return seconds


@contextmanager
def _cleanup(client: docker.DockerClient, *labels: str) -> Iterator[None]:
    try:
        yield
    finally:
        for label in labels:
            for container in client.containers.list(all=True, filters={"label": label}):
                container.remove(force=True)


def _row(name: str, samples: list[float]) -> str:
    return (f"{name:<22}{statistics.median(samples):>9.3f}{min(samples):>9.3f}"
            f"{max(samples):>9.3f}")


def run(runs: int = RUNS, warmups: int = WARMUPS) -> dict[str, Any]:
    client = docker.from_env(timeout=60)
    client.ping()
    image = find_image("base", client=client)
    if image is None:
        raise RuntimeError("the sandbox image is not built; run 'sealroom images build'")
    run_id = f"{NAME}-{secrets.token_hex(4)}"
    baseline: list[float] = []
    candidate: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sealroom-bench-") as tmp:
        console = _Console(Path(tmp), image)
        try:
            with _cleanup(client, f"{BENCH_LABEL}={run_id}",
                          f"{LABEL_INSTALLATION}={console.installation}"):
                for i in range(warmups + runs):
                    # Alternate who goes first so neither side always follows the other.
                    if i % 2:
                        api = _api_launch(client, console)
                        bare = _bare_run(client, image, run_id)
                    else:
                        bare = _bare_run(client, image, run_id)
                        api = _api_launch(client, console)
                    if i >= warmups:
                        baseline.append(bare)
                        candidate.append(api)
        finally:
            console.close()
        client.close()

    ratio = statistics.median(candidate) / statistics.median(baseline)
    verdict = "PASS" if ratio <= AIM else "ABOVE AIM"
    print(f"image {image.tag} ({image.digest[:19]}), N={runs} each after {warmups} warm-ups, "
          "interleaved; seconds")
    print(f"{'':<22}{'median':>9}{'min':>9}{'max':>9}")
    print(_row("bare docker run", baseline))
    print(_row("console API launch", candidate))
    print(f"{'ratio of medians':<22}{ratio:>9.3f}   aim <= {AIM}: {verdict}")
    return {
        "benchmark": NAME,
        "image": image.tag,
        "image_digest": image.digest,
        "runs": runs,
        "warmups": warmups,
        "baseline": {"what": "docker SDK containers.run(network_mode=none) until running",
                     "median_s": statistics.median(baseline), "samples_s": baseline},
        "candidate": {"what": "POST /api/v1/sandboxes (multipart upload) until 201 running",
                      "median_s": statistics.median(candidate), "samples_s": candidate},
        "ratio": ratio,
        "aim": AIM,
        "verdict": verdict,
    }
