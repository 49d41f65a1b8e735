"""SandboxSpec, Limits and DatasetMount: what a valid spec is, and the builders."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sandbox.errors import InvalidSpec, SandboxError
from sandbox.spec import DATA_ROOT, DatasetMount, Limits, NetworkPlan, Runtime, SandboxSpec


def _spec(**overrides: object) -> SandboxSpec:
    fields: dict[str, object] = {
        "sandbox_id": "sb-1",
        "owner": "alice",
        "image": "sealroom/base:abc",
        "command": ("python3", "train.py"),
    }
    fields.update(overrides)
    return SandboxSpec(**fields)  # type: ignore[arg-type]


def test_defaults_are_valid() -> None:
    spec = _spec()
    assert spec.limits == Limits()
    assert spec.datasets == ()
    assert spec.env == ()


@pytest.mark.parametrize(
    "limits",
    [
        {"cpus": 0},
        {"cpus": -1},
        {"cpus": 65},
        {"memory_mb": 63},
        {"memory_mb": 1024 * 1024 + 1},
        {"pids": 15},
        {"pids": 65537},
        {"timeout_s": 0},
        {"timeout_s": 7 * 24 * 3600 + 1},
        {"tmp_mb": 0},
        {"tmp_mb": 64 * 1024 + 1},
        {"workspace_mb": 15},
        {"outbox_mb": 1024 * 1024 + 1},
    ],
)
def test_limits_out_of_range_are_refused(limits: dict[str, float]) -> None:
    with pytest.raises(InvalidSpec):
        Limits(**limits)  # type: ignore[arg-type]


def test_limits_at_the_edges_are_accepted() -> None:
    Limits(cpus=64, memory_mb=64, pids=16, timeout_s=1, tmp_mb=1)
    Limits(cpus=0.1, memory_mb=1024 * 1024, pids=65536, timeout_s=7 * 24 * 3600, tmp_mb=65536)


@pytest.mark.parametrize(
    "name", ["", "Upper", "-lead", "has space", "dot.ted", "../up", "a/b", "x" * 64]
)
def test_dataset_names_must_be_simple(name: str) -> None:
    with pytest.raises(InvalidSpec):
        DatasetMount(name, Path("/srv/data"))


def test_dataset_host_path_must_be_absolute() -> None:
    with pytest.raises(InvalidSpec):
        DatasetMount("mnist", Path("relative/data"))


def test_dataset_target_is_under_data_root() -> None:
    assert DatasetMount("mnist", Path("/srv/mnist")).target == f"{DATA_ROOT}/mnist"


@pytest.mark.parametrize("sandbox_id", ["", "SB", "sb 1", "../x", "sb/1"])
def test_sandbox_id_is_a_simple_name(sandbox_id: str) -> None:
    with pytest.raises(InvalidSpec):
        _spec(sandbox_id=sandbox_id)


def test_empty_command_is_refused() -> None:
    with pytest.raises(InvalidSpec):
        _spec(command=())


def test_a_spec_names_no_host_directory_of_its_own() -> None:
    # Where the workspace and outbox live is the backend's storage, not the spec's.
    assert not {"workspace", "outbox"} & {f.name for f in dataclasses.fields(SandboxSpec)}
    assert _spec().network is NetworkPlan.NONE


def test_a_dataset_is_mounted_once() -> None:
    mount = DatasetMount("mnist", Path("/srv/mnist"))
    with pytest.raises(InvalidSpec):
        _spec().with_dataset(mount).with_dataset(mount)


@pytest.mark.parametrize("key", ["lower", "1LEAD", "WITH-DASH", "A B", ""])
def test_env_names_are_validated(key: str) -> None:
    with pytest.raises(InvalidSpec):
        _spec().with_env(key, "value")


def test_builders_return_new_specs() -> None:
    base = _spec()
    mount = DatasetMount("mnist", Path("/srv/mnist"), digest="sha256:00")
    limits = Limits(cpus=2, memory_mb=512)
    built = base.with_dataset(mount).with_limits(limits).with_env("SEED", "1")
    assert base.datasets == () and base.env == () and base.limits == Limits()
    assert built.datasets == (mount,)
    assert built.limits == limits
    assert built.env == (("SEED", "1"),)


def test_to_dict_is_json_safe_and_leaves_out_host_paths() -> None:
    spec = (
        _spec()
        .with_dataset(DatasetMount("mnist", Path("/srv/secret/mnist"), digest="sha256:aa"))
        .with_env("SEED", "1")
    )
    data = spec.to_dict()
    text = json.dumps(data)
    assert "/srv/secret" not in text
    assert data["datasets"] == [{"name": "mnist", "digest": "sha256:aa"}]
    assert data["command"] == ["python3", "train.py"]
    assert data["env"] == {"SEED": "1"}
    assert data["limits"] == {
        "cpus": 1.0,
        "memory_mb": 2048,
        "pids": 256,
        "timeout_s": 3600,
        "tmp_mb": 512,
        "workspace_mb": 1024,
        "outbox_mb": 256,
    }


def test_invalid_spec_is_a_sandbox_error_with_user_message() -> None:
    with pytest.raises(SandboxError) as caught:
        Limits(pids=1)
    assert caught.value.status == 400
    assert caught.value.user_message == str(caught.value)


def test_a_cluster_and_only_a_cluster_has_a_members_only_network() -> None:
    cluster = _spec(ranks=2, network=NetworkPlan.MEMBERS_ONLY)
    assert cluster.to_dict()["ranks"] == 2
    with pytest.raises(InvalidSpec):
        _spec(ranks=2)
    with pytest.raises(InvalidSpec):
        _spec(network=NetworkPlan.MEMBERS_ONLY)
    with pytest.raises(InvalidSpec):
        _spec(ranks=0)
    with pytest.raises(InvalidSpec):
        _spec(ranks=65, network=NetworkPlan.MEMBERS_ONLY)


def test_the_runtime_is_runc_unless_asked_and_recorded_only_when_gvisor() -> None:
    plain = _spec()
    assert plain.runtime is Runtime.RUNC
    assert "runtime" not in plain.to_dict()  # specs recorded before runtimes read the same
    gvisor = plain.with_runtime(Runtime.GVISOR)
    assert gvisor.runtime is Runtime.GVISOR and plain.runtime is Runtime.RUNC
    assert json.loads(json.dumps(gvisor.to_dict()))["runtime"] == "gvisor"


def test_a_cluster_cannot_run_under_gvisor() -> None:
    # Each member would have a gVisor kernel and loopback of its own: no shared namespace.
    with pytest.raises(InvalidSpec, match="cannot run under gVisor"):
        _spec(ranks=2, network=NetworkPlan.MEMBERS_ONLY, runtime=Runtime.GVISOR)
