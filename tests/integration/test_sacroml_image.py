"""`sealroom/sacroml` on the real engine: the bundled example trained sealed in `sealroom/base`
writes its target description, and `sealroom-attack` attacks the model sealed as the release
gate runs it (no network, read-only inputs, uid 10001). An overfitted model is clearly more
exposed to membership inference than a regularised one on the same data."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.examples.demo_dataset import write_demo_dataset

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "sandbox" / "examples" / "mlp" / "train.py"
HELPER = ROOT / "images" / "base" / "sealroom.py"
TEST_LABEL = "sealroom.test"
#: Small data so a run takes seconds: 1000 rows, 200 held out for testing.
DATASET_ROWS = 1000
#: A model that memorises: few rows, a wide layer, many epochs, no weight decay.
OVERFITTED = {"SEALROOM_TRAIN_ROWS": "100", "SEALROOM_EPOCHS": "300",
              "SEALROOM_HIDDEN": "256", "SEALROOM_WEIGHT_DECAY": "0"}
#: The example's own settings on every training row, with a little weight decay.
REGULARISED = {"SEALROOM_EPOCHS": "5", "SEALROOM_HIDDEN": "32", "SEALROOM_WEIGHT_DECAY": "0.01"}


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    for container in client.containers.list(all=True, filters={"label": TEST_LABEL}):
        container.remove(force=True)
    client.close()


def sealed_run(client: docker.DockerClient, image: str, command: list[str], *,
               volumes: dict[str, dict[str, str]], environment: dict[str, str] | None = None,
               timeout_s: int = 600) -> tuple[int, str, str]:
    """Run ``command`` as a sandbox would be run; its exit code, stdout and stderr."""
    container = client.containers.run(
        image, command, detach=True, labels={TEST_LABEL: "test_sacroml_image"},
        network_mode="none", read_only=True, tmpfs={"/tmp": "rw,size=512m"},
        user="10001:10001", cap_drop=["ALL"], security_opt=["no-new-privileges"],
        nano_cpus=1_000_000_000, mem_limit="3g",
        environment={"SEALROOM_NUM_THREADS": "1", **(environment or {})}, volumes=volumes)
    try:
        code = int(container.wait(timeout=timeout_s)["StatusCode"])
        return (code, container.logs(stdout=True, stderr=False).decode(),
                container.logs(stdout=False, stderr=True).decode())
    finally:
        container.remove(force=True)


def owned_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    shutil.chown(path, user=10001, group=10001)
    return path


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset and the example's code as a sandbox's workspace holds them. The helper is
    copied beside it so this tests the repository's `save_target` whichever base is built."""
    root = tmp_path_factory.mktemp("job")
    write_demo_dataset(root / "data" / "demo", rows=DATASET_ROWS, seed=7)
    (root / "code").mkdir()
    shutil.copy(EXAMPLE, root / "code" / "train.py")
    shutil.copy(HELPER, root / "code" / "sealroom.py")
    return root


def train(client: docker.DockerClient, base: Any, job: Path, name: str,
          settings: dict[str, str]) -> Path:
    outbox = owned_dir(job / name)
    code, out, err = sealed_run(client, base.tag, ["python", "train.py"], environment=settings,
                                volumes={str(job / "data"): {"bind": "/data", "mode": "ro"},
                                         str(job / "code"): {"bind": "/workspace", "mode": "ro"},
                                         str(outbox): {"bind": "/outbox", "mode": "rw"}})
    assert code == 0, out + err
    return outbox


def attack(client: docker.DockerClient, image: Any, job: Path, outbox: Path, *,
           model: str = "model.safetensors", shadow_models: int = 10) -> tuple[int, str, Path]:
    """`sealroom-attack` with the mounts the release gate gives it (the job's modules travel
    in the description; the runner writes them into a scratch workspace); exit code, stderr,
    report directory."""
    report = owned_dir(outbox.with_name(outbox.name + "-attack"))
    code, _, err = sealed_run(
        client, image.tag,
        ["sealroom-attack", "--target", "/attack/target.json", "--model", f"/attack/model/{model}",
         "--code", "/tmp/workspace", "--data", "/data", "--out", "/outbox",
         "--attacks", "lira,worstcase", "--shadow-models", str(shadow_models)],
        volumes={str(outbox / "model.safetensors.target.json"):
                 {"bind": "/attack/target.json", "mode": "ro"},
                 str(outbox / "model.safetensors"): {"bind": f"/attack/model/{model}",
                                                     "mode": "ro"},
                 str(job / "data"): {"bind": "/data", "mode": "ro"},
                 str(report): {"bind": "/outbox", "mode": "rw"}})
    return code, err, report


def aucs(report: Path) -> dict[str, list[float]]:
    """Each attack's AUC per instance, from sacroml's report.json."""
    found: dict[str, list[float]] = {}
    for key, result in json.loads((report / "report.json").read_text()).items():
        name = result["metadata"]["attack_name"]
        assert key.startswith(name.split()[0]), key
        instances = result["attack_experiment_logger"]["attack_instance_logger"]
        found[name] = [float(instance["AUC"]) for instance in instances.values()]
    return found


@pytest.fixture(scope="module")
def overfitted(engine: docker.DockerClient, base_image: Any, sacroml_image: Any,
               job: Path) -> Path:
    outbox = train(engine, base_image, job, "overfitted", OVERFITTED)
    code, err, report = attack(engine, sacroml_image, job, outbox)
    assert code == 0, err
    return report


@pytest.fixture(scope="module")
def regularised(engine: docker.DockerClient, base_image: Any, sacroml_image: Any,
                job: Path) -> Path:
    outbox = train(engine, base_image, job, "regularised", REGULARISED)
    code, err, report = attack(engine, sacroml_image, job, outbox)
    assert code == 0, err
    return report


def test_the_image_runs_sacroml_on_the_base_torch_as_uid_10001(
        engine: docker.DockerClient, sacroml_image: Any) -> None:
    probe = ("import json, os, importlib.metadata as m, sacroml, xgboost, torch, matplotlib;"
             "print(json.dumps({'uid': os.getuid(), 'cwd': os.getcwd(),"
             " 'sacroml': m.version('sacroml'), 'torch': torch.__version__,"
             " 'backend': matplotlib.get_backend(),"
             " 'wheels': os.path.exists('/build') or os.path.exists('/var/tmp/build'),"
             " 'nccl': any(d.metadata['Name'].startswith('nvidia') for d in m.distributions())}))")
    code, out, err = sealed_run(engine, sacroml_image.tag, ["python", "-c", probe], volumes={})
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {
        "uid": 10001, "cwd": "/workspace", "sacroml": "2.0.1", "torch": "2.13.0+cpu",
        "backend": "Agg", "wheels": False, "nccl": False}
    labels = engine.images.get(sacroml_image.tag).labels
    assert labels["sealroom.image"] == "sacroml"
    assert sacroml_image.tag.endswith(":" + labels["sealroom.inputs"][:12])


def test_the_example_describes_its_model_and_split(job: Path, overfitted: Path) -> None:
    description = json.loads((job / "overfitted" / "model.safetensors.target.json").read_text())
    assert description["model"] == {"file": "model.safetensors", "module": "train.py",
                                    "class": "MLP", "params": {"n_features": 16, "hidden": 256}}
    assert description["train"]["module"] == "train.py"
    assert description["train"]["params"]["epochs"] == 300
    assert description["data"] == {"dataset": "demo", "file": "train.csv", "label": "label"}
    rows = description["rows"]
    assert len(rows["train"]) == 100 and len(rows["test"]) == DATASET_ROWS // 5
    assert not set(rows["train"]) & set(rows["test"])


def test_the_attack_writes_lira_and_worst_case_reports_with_roc_arrays(overfitted: Path) -> None:
    found = aucs(overfitted)
    assert set(found) == {"LiRA Attack", "WorstCase attack"}
    assert all(0.0 <= auc <= 1.0 for values in found.values() for auc in values), found
    assert list(overfitted.glob("report_arrays_*_instance_0.npz"))
    assert not (overfitted / "shadow_models").exists()  # the models are not results


def test_an_overfitted_model_is_clearly_more_exposed_than_a_regularised_one(
        overfitted: Path, regularised: Path) -> None:
    over, regular = aucs(overfitted)["LiRA Attack"][0], aucs(regularised)["LiRA Attack"][0]
    assert over > 0.62, over
    assert regular < 0.6, regular
    assert over - regular > 0.05, (over, regular)


def described(job: Path, name: str, change: dict[str, Any]) -> Path:
    """A copy of the overfitted model with its description's sections updated by `change`."""
    outbox = owned_dir(job / name)
    shutil.copy(job / "overfitted" / "model.safetensors", outbox / "model.safetensors")
    (outbox / "model.safetensors").chmod(0o644)  # the copy is root's; the attack runs as 10001
    description = json.loads((job / "overfitted" / "model.safetensors.target.json").read_text())
    for section, fields in change.items():
        description[section].update(fields)
    (outbox / "model.safetensors.target.json").write_text(json.dumps(description))
    return outbox


def test_a_bad_description_is_exit_2_with_one_line(
        engine: docker.DockerClient, sacroml_image: Any, job: Path, overfitted: Path) -> None:
    shared = json.loads((job / "overfitted" / "model.safetensors.target.json").read_text())
    broken = described(job, "shared-rows", {"rows": {"test": shared["rows"]["train"][:3]}})
    code, err, report = attack(engine, sacroml_image, job, broken)
    assert code == 2
    assert err.splitlines() == ["sealroom-attack: 'rows.train' and 'rows.test' share rows"]
    assert not (report / "report.json").exists()


def test_weights_that_do_not_fit_the_described_class_are_exit_2(
        engine: docker.DockerClient, sacroml_image: Any, job: Path, overfitted: Path) -> None:
    narrow = described(job, "narrow", {"model": {"params": {"n_features": 16, "hidden": 32}}})
    code, err, report = attack(engine, sacroml_image, job, narrow)
    assert code == 2
    assert err.splitlines() == [
        "sealroom-attack: the model file does not load into MLP (RuntimeError)"]
    assert not (report / "report.json").exists()


def test_a_model_that_is_not_safetensors_is_exit_3(
        engine: docker.DockerClient, sacroml_image: Any, job: Path, overfitted: Path) -> None:
    code, err, _ = attack(engine, sacroml_image, job, described(job, "pickle", {}),
                          model="model.pt")
    assert code == 3
    assert len(err.splitlines()) == 1
