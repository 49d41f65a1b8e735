"""The red-team probe inside an MPI cluster on the real engine: every attempt of the
single-sandbox suite fails from every rank, nothing reaches a listener the test opens on the
host's addresses (TCP and UDP), and a rank reaches only its own cluster: a second cluster
running at the same time answers on the same loopback address in its own namespace only.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.backend import LABEL_INSTALLATION, BackendState
from sandbox.cluster import rank_output
from sandbox.docker_backend import DockerBackend
from sandbox.spec import DatasetMount, Limits, NetworkPlan, SandboxSpec
from sandbox.storage import LocalStorage
from tests.helpers import staged_sandbox
from tests.security.test_egress import (  # noqa: F401  (fixture)
    PROBE,
    HostListeners,
    _config,
    _wait_exited,
    listeners,
)

pytestmark = pytest.mark.docker

INSTALLATION = f"test-cluster-egress-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def backend(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[DockerBackend]:
    yield DockerBackend(installation=INSTALLATION, storage=LocalStorage(tmp_path / "sb"))
    label = f"{LABEL_INSTALLATION}={INSTALLATION}"
    for container in docker_client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)


def _cluster(backend: DockerBackend, image: str, command: tuple[str, ...], tmp_path: Path,
             files: dict[str, bytes]) -> tuple[SandboxSpec, BackendState]:
    sandbox_id = staged_sandbox(backend.storage, "sb-redteam", files)
    dataset = tmp_path / f"demo-{sandbox_id}"
    dataset.mkdir()
    (dataset / "train.csv").write_text("x,y\n1,2\n")
    dataset.chmod(0o755)
    spec = SandboxSpec(sandbox_id=sandbox_id, owner="redteam", image=image, command=command,
                       datasets=(DatasetMount("demo", dataset),), ranks=2,
                       network=NetworkPlan.MEMBERS_ONLY,
                       limits=Limits(cpus=1, memory_mb=512, pids=256, timeout_s=300))
    state = backend.create(spec)
    backend.start(state)
    return spec, state


def _by_rank(output: bytes) -> dict[int, list[dict[str, Any]]]:
    """The probe's JSON records by rank, from each rank's own stream (`rank_output`: mpirun
    tags chunks, not lines, so a tag may even split a record)."""
    found: dict[int, list[dict[str, Any]]] = {}
    for rank in (0, 1):
        for line in rank_output(output, rank).decode(errors="replace").splitlines():
            if line.startswith("{"):
                found.setdefault(rank, []).append(json.loads(line))
    return found


def test_every_rank_is_contained_like_a_single_sandbox(
    backend: DockerBackend, horovod_image: Any, listeners: HostListeners,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Also the console's own port on every host address (`sealroom up` serves 8000).
    config = {**_config(listeners), "extra_tcp_ports": [8000]}
    _, state = _cluster(backend, horovod_image.tag,
                        ("python", "egress_probe.py", json.dumps(config)), tmp_path,
                        {"egress_probe.py": PROBE.read_bytes()})
    status = _wait_exited(lambda: backend.poll(state), 300)
    output = backend.logs(state)
    ranks = _by_rank(output)
    assert sorted(ranks) == [0, 1], output[-3000:]
    for rank, records in ranks.items():
        assert records[-1]["probe"] == "summary", (rank, records[-3:])
        failures = [r for r in records[:-1] if not r["ok"]]
        assert failures == [], (rank, json.dumps(failures, indent=1))
        # One outbox, written by rank 0 only (the probe expects that of the other ranks).
        (outbox,) = [r for r in records if (r["probe"], r.get("target")) == ("write", "/outbox")]
        assert outbox["expect"] == ("allowed" if rank == 0 else "blocked")
        assert len(records) > 100
    assert status.exit_code == 0, output[-2000:]
    assert listeners.accepted() == []


KEYSCAN = """
import subprocess, sys
found = subprocess.run(["ssh-keyscan", "-p", "2222", "-t", "ed25519", "127.0.0.2"],
                       capture_output=True, text=True, timeout=30).stdout
print("SCAN " + " ".join(found.split()[1:3]), flush=True)
import time; time.sleep(float(sys.argv[1]))
"""


def test_a_rank_reaches_only_its_own_cluster(
    backend: DockerBackend, horovod_image: Any, tmp_path: Path,
) -> None:
    """Two clusters at once, each with a rank on 127.0.0.2:2222: from inside each, that
    address answers with its own cluster's host key, never the other's."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is needed to read the host keys")
    first, first_state = _cluster(backend, horovod_image.tag, ("python", "scan.py", "30"),
                                  tmp_path, {"scan.py": KEYSCAN.encode()})
    second, second_state = _cluster(backend, horovod_image.tag, ("python", "scan.py", "0"),
                                    tmp_path, {"scan.py": KEYSCAN.encode()})
    _wait_exited(lambda: backend.poll(second_state), 180)
    keys = {}
    for spec in (first, second):
        public = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(backend.storage.secrets(spec.sandbox_id)
                                           / "host_ed25519")],
            capture_output=True, text=True, check=True).stdout.split()
        keys[spec.sandbox_id] = " ".join(public[:2])
    assert keys[first.sandbox_id] != keys[second.sandbox_id]
    # mpirun forwards each rank's output in pieces and may glue one rank's line to the next
    # rank's tag ("...GcyI[1,1]<stdout>:SCAN ..."): find every key, not every line.
    seen = re.findall(r"SCAN (ssh-ed25519 [A-Za-z0-9+/]+=*)",
                      backend.logs(second_state).decode(errors="replace"))
    assert seen and all(s == keys[second.sandbox_id] for s in seen), (seen, keys)
    backend.stop(first_state, timeout_s=1)
