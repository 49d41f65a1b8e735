"""The real image build and the bundled example, against the local Docker engine."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from sandbox.examples.demo_dataset import write_demo_dataset
from sandbox.images import (
    IMAGE_LABEL,
    INPUTS_LABEL,
    BuiltImage,
    build_images,
    default_cache_dir,
    find_image,
)

# A cold build (debootstrap base, wheelhouse, image) takes several minutes.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

TEST_LABEL = "sealroom.test"
EXAMPLE = Path(__file__).resolve().parents[2] / "sandbox" / "examples" / "mlp" / "train.py"


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    for container in client.containers.list(all=True, filters={"label": TEST_LABEL}):
        container.remove(force=True)
    client.close()


@pytest.fixture(scope="module")
def built(client: docker.DockerClient) -> dict[str, BuiltImage]:
    return build_images(cache_dir=default_cache_dir(), client=client)


@pytest.fixture(scope="module")
def base(built: dict[str, BuiltImage]) -> BuiltImage:
    return built["base"]


@pytest.fixture(scope="module")
def horovod(built: dict[str, BuiltImage]) -> BuiltImage:
    return built["horovod"]


def run_in(
    client: docker.DockerClient,
    image: BuiltImage,
    command: list[str],
    *,
    volumes: dict[str, dict[str, str]] | None = None,
    timeout_s: int = 120,
) -> tuple[int, str]:
    """Run ``command`` sealed as a sandbox would be; return its exit code and output."""
    container = client.containers.run(
        image.tag,
        command,
        detach=True,
        labels={TEST_LABEL: "test_images"},
        network_mode="none",
        read_only=True,
        tmpfs={"/tmp": "rw,size=256m"},
        user="10001:10001",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        nano_cpus=1_000_000_000,
        mem_limit="2g",
        environment={"SEALROOM_NUM_THREADS": "1"},
        volumes=volumes or {},
    )
    try:
        status = container.wait(timeout=timeout_s)
        return int(status["StatusCode"]), container.logs().decode()
    finally:
        container.remove(force=True)


def test_second_build_reuses_the_images(
    client: docker.DockerClient, built: dict[str, BuiltImage]
) -> None:
    logged: list[str] = []
    again = build_images(cache_dir=default_cache_dir(), client=client, log=logged.append)

    assert again == built
    assert set(again) == {"base", "horovod", "sacroml"}
    assert not any(line.startswith("Step ") for line in logged), logged
    assert not any("compiling" in line for line in logged), logged
    assert sum("up to date" in line for line in logged) == 3, logged


def test_image_is_labelled_and_findable(client: docker.DockerClient, base: BuiltImage) -> None:
    labels = client.images.get(base.tag).labels
    assert labels[IMAGE_LABEL] == "base"
    assert base.tag.endswith(":" + labels[INPUTS_LABEL][:12])
    assert base.digest == base.image_id
    assert base.digest.startswith("sha256:")
    found = find_image("sealroom/base", client=client)
    assert found is not None
    assert found.name == "base"
    assert found.tag.startswith("sealroom/base:")


def test_image_runs_python_311_and_torch_as_uid_10001(
    client: docker.DockerClient, base: BuiltImage
) -> None:
    probe = (
        "import json, os, sys, torch, numpy, safetensors; print(json.dumps({"
        "'uid': os.getuid(), 'gid': os.getgid(), 'cwd': os.getcwd(),"
        "'python': list(sys.version_info[:2]), 'torch': torch.__version__,"
        "'numpy': numpy.__version__, 'safetensors': safetensors.__version__,"
        "'wheelhouse': os.path.exists('/build') or os.path.exists('/wheelhouse'),"
        "'cuda': torch.cuda.is_available()}))"
    )
    code, output = run_in(client, base, ["python", "-c", probe])
    assert code == 0, output
    facts = json.loads(output.strip().splitlines()[-1])
    assert facts["uid"] == 10001
    assert facts["gid"] == 10001
    assert facts["cwd"] == "/workspace"
    assert facts["python"] == [3, 11]
    assert facts["torch"].split("+")[0] == "2.13.0"
    assert facts["numpy"] == "2.4.6"
    assert facts["safetensors"] == "0.8.0"
    assert facts["wheelhouse"] is False
    assert facts["cuda"] is False


def test_example_trains_on_the_demo_dataset(
    client: docker.DockerClient, base: BuiltImage, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    workspace = tmp_path / "workspace"
    outbox = tmp_path / "outbox"
    write_demo_dataset(data)
    workspace.mkdir()
    shutil.copy(EXAMPLE, workspace / "train.py")
    outbox.mkdir()
    shutil.chown(outbox, user=10001, group=10001)

    code, output = run_in(
        client,
        base,
        ["python", "train.py"],
        volumes={
            str(data): {"bind": "/data/demo", "mode": "ro"},
            str(workspace): {"bind": "/workspace", "mode": "ro"},
            str(outbox): {"bind": "/outbox", "mode": "rw"},
        },
    )

    assert code == 0, output
    assert "epoch 1/5 loss=" in output
    assert (outbox / "model.safetensors").stat().st_size > 0
    metrics = json.loads((outbox / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.8, metrics
    assert metrics["n_train"] >= 10
    assert metrics["n_test"] >= 10
    assert metrics["epochs"] == 5


ALLREDUCE = """
import json
import sys
import horovod.torch as hvd
import torch

hvd.init()
mine = torch.arange(6, dtype=torch.float64) * (hvd.rank() + 1) + 0.5
summed = hvd.allreduce(mine, op=hvd.Sum)
if hvd.rank() == 0:
    alone = sum(torch.arange(6, dtype=torch.float64) * (r + 1) + 0.5 for r in range(hvd.size()))
    facts = {"size": hvd.size(), "allreduced": summed.tolist(),
             "summed_alone": alone.tolist(), "mpi": hvd.mpi_enabled()}
    sys.stdout.write("RESULT " + json.dumps(facts) + "\\n")  # one write: one chunk for mpirun
"""


def test_horovod_image_is_labelled_and_findable(
    client: docker.DockerClient, horovod: BuiltImage, base: BuiltImage
) -> None:
    labels = client.images.get(horovod.tag).labels
    assert labels[IMAGE_LABEL] == "horovod"
    assert horovod.tag.endswith(":" + labels[INPUTS_LABEL][:12])
    found = find_image("horovod", client=client)
    assert found is not None
    assert found.tag == horovod.tag
    assert found.digest == horovod.digest != base.digest
    wheels = list(default_cache_dir().glob("wheels/horovod-*/horovod-0.28.1-*.whl"))
    assert wheels, "the compiled wheel is cached outside the repository"


def test_horovod_allreduces_over_two_ranks_sealed(
    client: docker.DockerClient, horovod: BuiltImage, tmp_path: Path
) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "allreduce.py").write_text(ALLREDUCE)

    code, output = run_in(
        client,
        horovod,
        ["horovodrun", "-np", "2", "-H", "localhost:2", "python", "allreduce.py"],
        volumes={str(workspace): {"bind": "/workspace", "mode": "ro"}},
        timeout_s=300,
    )

    assert code == 0, output
    lines = [ln for ln in output.splitlines() if "RESULT " in ln]
    assert len(lines) == 1, output
    # mpirun tags each rank's output and may run a tag on into the line: decode one object.
    result, _ = json.JSONDecoder().raw_decode(lines[0].split("RESULT ", 1)[1])
    assert result["size"] == 2
    assert result["mpi"] is True
    assert result["allreduced"] == result["summed_alone"]
    assert result["allreduced"] == [3 * i + 1.0 for i in range(6)]


def test_horovod_image_runs_as_10001_and_adds_no_setuid_program(
    client: docker.DockerClient, horovod: BuiltImage, base: BuiltImage
) -> None:
    probe = (
        "import json, os, horovod, horovod.torch, torch; print(json.dumps({"
        "'uid': os.getuid(), 'horovod': horovod.__version__, 'torch': torch.__version__,"
        "'ssh_host_keys': [f for f in os.listdir('/etc/ssh') if f.startswith('ssh_host_')],"
        "'build_payload': os.path.exists('/var/tmp/build')}))"
    )
    code, output = run_in(client, horovod, ["python", "-c", probe])
    assert code == 0, output
    facts = json.loads(output.strip().splitlines()[-1])
    assert facts == {
        "uid": 10001,
        "horovod": "0.28.1",
        "torch": facts["torch"],
        "ssh_host_keys": [],
        "build_payload": False,
    }
    assert facts["torch"].split("+")[0] == "2.13.0"

    find_setuid = ["sh", "-c", "find / -xdev -perm -4000 -type f 2>/dev/null; true"]
    _, in_base = run_in(client, base, find_setuid)
    _, in_horovod = run_in(client, horovod, find_setuid)
    assert sorted(in_horovod.split()) == sorted(in_base.split())
