"""The create kwargs a spec turns into, and `assert_hardened` on inspect results.

The inspect dict below has the shape Docker 20.10 returned for a container made from these
kwargs; tests/integration/test_docker_backend.py checks the same properties on a real one.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from docker.types import Mount

from sandbox.backend import LABEL_INSTALLATION, LABEL_OWNER, LABEL_SANDBOX
from sandbox.errors import InvalidSpec
from sandbox.hardening import assert_hardened, create_kwargs, member_kwargs
from sandbox.spec import DatasetMount, InputMount, Limits, NetworkPlan, Runtime, SandboxSpec

INSTALLATION = "inst-1"
HOST_DIRS = {"workspace": Path("/srv/sb-1/workspace"), "outbox": Path("/srv/sb-1/outbox")}


@pytest.fixture
def spec() -> SandboxSpec:
    return (
        SandboxSpec(
            sandbox_id="sb-1",
            owner="alice",
            image="sealroom/base:abc",
            command=("python3", "train.py", "--epochs", "2"),
        )
        .with_dataset(DatasetMount("mnist", Path("/srv/datasets/mnist")))
        .with_dataset(DatasetMount("cifar", Path("/srv/datasets/cifar")))
        .with_limits(Limits(cpus=1.5, memory_mb=256, pids=64, tmp_mb=32))
        .with_env("SEED", "7")
    )


@pytest.fixture
def kwargs(spec: SandboxSpec) -> dict[str, Any]:
    return create_kwargs(spec, installation=INSTALLATION, init=True, **HOST_DIRS)


def test_isolation_options(kwargs: dict[str, Any]) -> None:
    assert kwargs["network_mode"] == "none"
    assert kwargs["ipc_mode"] == "private"
    assert kwargs["cap_drop"] == ["ALL"]
    assert "cap_add" not in kwargs
    assert kwargs["security_opt"] == ["no-new-privileges:true"]
    assert kwargs["privileged"] is False
    assert kwargs["read_only"] is True
    assert kwargs["user"] == "10001:10001"
    for absent in (
        "devices",
        "device_requests",
        "pid_mode",
        "uts_mode",
        "userns_mode",
        "volumes",
        "volumes_from",
        "sysctls",
        "ports",
        "cap_add",
    ):
        assert absent not in kwargs, absent
    assert not any("unconfined" in o for o in kwargs["security_opt"])


def test_resource_limits(kwargs: dict[str, Any]) -> None:
    assert kwargs["mem_limit"] == 256 * 1024 * 1024
    assert kwargs["memswap_limit"] == kwargs["mem_limit"]
    assert kwargs["nano_cpus"] == 1_500_000_000
    assert kwargs["pids_limit"] == 64
    assert kwargs["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=32m"}


def test_mounts_are_exactly_datasets_workspace_and_outbox(kwargs: dict[str, Any]) -> None:
    mounts = kwargs["mounts"]
    assert all(isinstance(m, Mount) for m in mounts)
    table = {(m["Target"], m["Source"], m["Type"], bool(m.get("ReadOnly"))) for m in mounts}
    assert table == {
        ("/data/mnist", "/srv/datasets/mnist", "bind", True),
        ("/data/cifar", "/srv/datasets/cifar", "bind", True),
        ("/workspace", "/srv/sb-1/workspace", "bind", False),
        ("/outbox", "/srv/sb-1/outbox", "bind", False),
    }
    assert not any("docker.sock" in m["Source"] for m in mounts)


def test_identity_labels_and_environment(kwargs: dict[str, Any], spec: SandboxSpec) -> None:
    assert kwargs["image"] == spec.image
    assert kwargs["command"] == ["python3", "train.py", "--epochs", "2"]
    assert kwargs["working_dir"] == "/workspace"
    assert kwargs["hostname"] == "sandbox"
    assert kwargs["labels"] == {
        LABEL_SANDBOX: "sb-1",
        LABEL_OWNER: "alice",
        LABEL_INSTALLATION: INSTALLATION,
    }
    assert kwargs["environment"] == {"HOME": "/tmp", "SEED": "7"}


def test_init_follows_the_engine(spec: SandboxSpec) -> None:
    assert create_kwargs(spec, installation=INSTALLATION, init=True, **HOST_DIRS)["init"] is True
    assert create_kwargs(spec, installation=INSTALLATION, init=False, **HOST_DIRS)["init"] is False


def test_kwargs_are_accepted_by_the_sdk(kwargs: dict[str, Any]) -> None:
    # The SDK splits kwargs into config and host config; unknown names raise TypeError.
    from docker.models.containers import _create_container_args

    args = _create_container_args(dict(kwargs, version="1.41"))
    host = args["host_config"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["Memory"] == host["MemorySwap"] == 256 * 1024 * 1024
    assert {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]} == {
        "nofile": (4096, 4096), "nproc": (32768, 32768), "core": (0, 0)}


# --- assert_hardened ------------------------------------------------------------------------


def _sealed() -> dict[str, Any]:
    return {
        "Config": {
            "User": "10001:10001",
            "Hostname": "sandbox",
            "WorkingDir": "/workspace",
            "Labels": {LABEL_SANDBOX: "sb-1", LABEL_OWNER: "alice", LABEL_INSTALLATION: "i"},
        },
        "HostConfig": {
            "NetworkMode": "none",
            "Runtime": "runc",
            "Privileged": False,
            "CapAdd": None,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "ReadonlyRootfs": True,
            "Memory": 268435456,
            "MemorySwap": 268435456,
            "NanoCpus": 1000000000,
            "PidsLimit": 64,
            "Ulimits": [{"Name": "nofile", "Soft": 4096, "Hard": 4096},
                        {"Name": "nproc", "Soft": 32768, "Hard": 32768},
                        {"Name": "core", "Soft": 0, "Hard": 0}],
            "IpcMode": "private",
            "PidMode": "",
            "UTSMode": "",
            "UsernsMode": "",
            "CgroupnsMode": "private",
            "Devices": [],
            "DeviceRequests": None,
            "Binds": None,
            "Tmpfs": {"/tmp": "rw,nosuid,nodev,size=32m"},
            "MaskedPaths": ["/proc/kcore", "/sys/firmware"],
            "Sysctls": None,
        },
        "Mounts": [
            {
                "Type": "bind",
                "Source": "/srv/d",
                "Destination": "/data/mnist",
                "RW": False,
                "Propagation": "rprivate",
            },
            {
                "Type": "bind",
                "Source": "/srv/w",
                "Destination": "/workspace",
                "RW": True,
                "Propagation": "rprivate",
            },
            {
                "Type": "bind",
                "Source": "/srv/o",
                "Destination": "/outbox",
                "RW": True,
                "Propagation": "rprivate",
            },
        ],
    }


def test_sealed_container_has_no_violations() -> None:
    assert assert_hardened(_sealed(), NetworkPlan.NONE) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(attrs: dict[str, Any]) -> None:
        *parents, key = path.split(".")
        node = attrs
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[key] = value

    return change


def _add_mount(mount: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda attrs: attrs["Mounts"].append(mount)


BREAKS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "bridge network": (_set("HostConfig.NetworkMode", "bridge"), "network mode"),
    "host network": (_set("HostConfig.NetworkMode", "host"), "network mode"),
    "privileged": (_set("HostConfig.Privileged", True), "privileged"),
    "caps kept": (_set("HostConfig.CapDrop", None), "capabilities not all dropped"),
    "cap added": (_set("HostConfig.CapAdd", ["SYS_ADMIN"]), "capabilities added"),
    "new privileges": (_set("HostConfig.SecurityOpt", None), "no-new-privileges"),
    "seccomp off": (
        _set("HostConfig.SecurityOpt", ["no-new-privileges:true", "seccomp=unconfined"]),
        "unsafe security option",
    ),
    "apparmor off": (
        _set("HostConfig.SecurityOpt", ["no-new-privileges:true", "apparmor=unconfined"]),
        "unsafe security option",
    ),
    "writable root": (_set("HostConfig.ReadonlyRootfs", False), "root filesystem"),
    "root user": (_set("Config.User", ""), "runs as user"),
    "other user": (_set("Config.User", "0:0"), "runs as user"),
    "no memory limit": (_set("HostConfig.Memory", 0), "no memory limit"),
    "swap": (_set("HostConfig.MemorySwap", -1), "swap allowed"),
    "oom killer off": (_set("HostConfig.OomKillDisable", True), "OOM killer disabled"),
    "no cpu limit": (_set("HostConfig.NanoCpus", 0), "no CPU limit"),
    "no pids limit": (_set("HostConfig.PidsLimit", None), "no pids limit"),
    "unlimited pids": (_set("HostConfig.PidsLimit", -1), "no pids limit"),
    "no ulimits": (_set("HostConfig.Ulimits", None), "ulimit nofile not set"),
    "core dumps": (_set("HostConfig.Ulimits.2.Hard", -1), "ulimit core"),
    "many files": (_set("HostConfig.Ulimits.0.Hard", 1 << 20), "ulimit nofile"),
    "shareable ipc": (_set("HostConfig.IpcMode", "shareable"), "IPC mode"),
    "host ipc": (_set("HostConfig.IpcMode", "host"), "IPC mode"),
    "host pid": (_set("HostConfig.PidMode", "host"), "PidMode"),
    "container pid": (_set("HostConfig.PidMode", "container:abc"), "PidMode"),
    "host uts": (_set("HostConfig.UTSMode", "host"), "UTSMode"),
    "host userns": (_set("HostConfig.UsernsMode", "host"), "UsernsMode"),
    "host cgroupns": (_set("HostConfig.CgroupnsMode", "host"), "CgroupnsMode"),
    "devices": (
        _set("HostConfig.Devices", [{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse"}]),
        "host devices",
    ),
    "gpus": (_set("HostConfig.DeviceRequests", [{"Count": -1}]), "device requests"),
    "device rules": (_set("HostConfig.DeviceCgroupRules", ["c 1:3 rwm"]), "device cgroup"),
    "sysctls": (_set("HostConfig.Sysctls", {"net.ipv4.ip_forward": "1"}), "sysctls"),
    "unmasked proc": (_set("HostConfig.MaskedPaths", []), "not masked"),
    "ports": (_set("HostConfig.PortBindings", {"80/tcp": [{"HostPort": "80"}]}), "ports"),
    "binds": (_set("HostConfig.Binds", ["/:/host"]), "bind mount"),
    "volumes from": (_set("HostConfig.VolumesFrom", ["other"]), "volumes shared"),
    "exec tmpfs": (_set("HostConfig.Tmpfs", {"/tmp": "rw,size=32m"}), "nosuid,nodev"),
    "extra tmpfs": (
        _set("HostConfig.Tmpfs", {"/tmp": "rw,nosuid,nodev", "/run": "rw,nosuid,nodev"}),
        "unexpected tmpfs",
    ),
    "docker socket": (
        _add_mount(
            {
                "Type": "bind",
                "Source": "/var/run/docker.sock",
                "Destination": "/var/run/docker.sock",
                "RW": True,
            }
        ),
        "engine socket",
    ),
    "containerd socket": (
        _add_mount(
            {
                "Type": "bind",
                "Source": "/run/containerd/containerd.sock",
                "Destination": "/c.sock",
                "RW": False,
            }
        ),
        "engine socket",
    ),
    "writable dataset": (_set("Mounts.0.RW", True), "dataset mount /data/mnist is writable"),
    "host root": (
        _add_mount({"Type": "bind", "Source": "/", "Destination": "/host", "RW": False}),
        "unexpected mount at /host",
    ),
    "anonymous volume": (
        _add_mount(
            {
                "Type": "volume",
                "Name": "abc",
                "Source": "/var/lib/docker/volumes/abc",
                "Destination": "/cache",
                "RW": True,
            }
        ),
        "volume mount at /cache",
    ),
    "shared propagation": (_set("Mounts.1.Propagation", "rshared"), "propagates"),
    "no sandbox label": (_set("Config.Labels", {}), "label sealroom.sandbox missing"),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_each_weakening_is_reported(name: str) -> None:
    change, expected = BREAKS[name]
    attrs = copy.deepcopy(_sealed())
    change(attrs)
    found = assert_hardened(attrs, NetworkPlan.NONE)
    assert any(expected in v for v in found), (name, found)


def test_empty_inspect_is_not_hardened() -> None:
    found = assert_hardened({}, NetworkPlan.NONE)
    assert len(found) >= 8


# --- the network plan is an input -----------------------------------------------------------


def _joined(holder: str) -> dict[str, Any]:
    attrs = _sealed()
    attrs["HostConfig"]["NetworkMode"] = f"container:{holder}"
    return attrs


def test_a_clusters_launcher_holds_a_namespace_with_no_network_and_ranks_join_it(
        spec: SandboxSpec) -> None:
    cluster = dataclasses.replace(spec, network=NetworkPlan.MEMBERS_ONLY, ranks=3)
    launcher = member_kwargs(cluster, 0, installation=INSTALLATION, init=True,
                             secrets=Path("/srv/sb-1/mpi"), **HOST_DIRS)
    rank = member_kwargs(cluster, 2, installation=INSTALLATION, init=True,
                         secrets=Path("/srv/sb-1/mpi"), holder="c0ffee", **HOST_DIRS)
    assert launcher["network_mode"] == "none" and launcher["hostname"] == "main"
    assert launcher["command"][:3] == ["sealroom-mpi", "launch", "3"]
    assert launcher["command"][3:] == list(cluster.command)
    assert rank["network_mode"] == "container:c0ffee" and "hostname" not in rank
    assert rank["command"] == ["sealroom-mpi", "rank", "2"]
    outboxes = [[m for m in k["mounts"] if m["Target"] == "/outbox"] for k in (launcher, rank)]
    assert [o[0]["ReadOnly"] for o in outboxes] == [False, True]  # written by rank 0 only
    for kwargs in (launcher, rank):
        keys = [m for m in kwargs["mounts"] if m["Target"] == "/etc/sealroom/mpi"]
        assert len(keys) == 1 and keys[0]["ReadOnly"] is True
        assert kwargs["cap_drop"] == ["ALL"] and kwargs["read_only"] is True
    with pytest.raises(ValueError):
        member_kwargs(cluster, 1, installation=INSTALLATION, init=True,
                      secrets=Path("/k"), **HOST_DIRS)  # a rank must join the launcher
    with pytest.raises(ValueError):
        member_kwargs(spec, 0, installation=INSTALLATION, init=True, secrets=Path("/k"),
                      **HOST_DIRS)  # not a cluster


def test_the_check_follows_the_plan_it_is_given() -> None:
    member = _joined("c0ffee")
    assert assert_hardened(member, NetworkPlan.MEMBERS_ONLY, "c0ffee") == []
    assert assert_hardened(_sealed(), NetworkPlan.MEMBERS_ONLY, "c0ffee") == []  # launcher
    # A joined member is not sealed under the one-container plan, nor in another cluster.
    assert any("not 'none'" in v for v in assert_hardened(member, NetworkPlan.NONE))
    assert assert_hardened(member, NetworkPlan.MEMBERS_ONLY, "bad0")
    assert assert_hardened(member, NetworkPlan.MEMBERS_ONLY, "")
    bridged = _sealed()
    bridged["HostConfig"]["NetworkMode"] = "bridge"
    assert assert_hardened(bridged, NetworkPlan.MEMBERS_ONLY, "c0ffee")


def test_cluster_keys_are_allowed_read_only_and_only_in_a_cluster() -> None:
    keys = {"Type": "bind", "Source": "/srv/sb-1/mpi", "Destination": "/etc/sealroom/mpi",
            "RW": False, "Propagation": "rprivate"}
    member = _joined("c0ffee")
    member["Mounts"].append(dict(keys))
    assert assert_hardened(member, NetworkPlan.MEMBERS_ONLY, "c0ffee") == []
    single = _sealed()
    single["Mounts"].append(dict(keys))
    assert any("unexpected mount" in v for v in assert_hardened(single, NetworkPlan.NONE))
    member["Mounts"][-1]["RW"] = True
    assert any("writable" in v for v in
               assert_hardened(member, NetworkPlan.MEMBERS_ONLY, "c0ffee"))


# --- GPUs -------------------------------------------------------------------------------------


def test_gpus_are_exactly_the_device_requests_the_spec_asked_for(spec: SandboxSpec) -> None:
    assert "device_requests" not in create_kwargs(spec, installation=INSTALLATION, init=True,
                                                  **HOST_DIRS)
    with_gpus = dataclasses.replace(spec, gpus=2)
    kwargs = create_kwargs(with_gpus, installation=INSTALLATION, init=True, **HOST_DIRS)
    (request,) = kwargs["device_requests"]
    assert dict(request) == {"Driver": "nvidia", "Count": 2, "DeviceIDs": [],
                             "Capabilities": [["gpu"]], "Options": {}}
    attrs = _sealed()
    attrs["HostConfig"]["DeviceRequests"] = [dict(request)]
    assert assert_hardened(attrs, NetworkPlan.NONE, gpus=2) == []
    # More, fewer, or none expected: refused. So is any other device request.
    assert assert_hardened(attrs, NetworkPlan.NONE, gpus=1)
    assert assert_hardened(attrs, NetworkPlan.NONE)
    attrs["HostConfig"]["DeviceRequests"] = [{**dict(request), "Count": -1}]
    assert assert_hardened(attrs, NetworkPlan.NONE, gpus=2)
    attrs["HostConfig"]["DeviceRequests"] = [{**dict(request), "Options": {"x": "y"}}]
    assert assert_hardened(attrs, NetworkPlan.NONE, gpus=2)
    with pytest.raises(InvalidSpec):
        dataclasses.replace(spec, gpus=-1)


# --- inputs: earlier sandboxes' outputs, read-only under /inputs -----------------------------

INPUTS = {"sb-0": Path("/srv/sb-0/outbox"), "sb-9": Path("/srv/sb-9/outbox")}


def _with_inputs(spec: SandboxSpec) -> SandboxSpec:
    return dataclasses.replace(spec, inputs=(InputMount("sb-0", "sha256:aa"),
                                             InputMount("sb-9")))


def _input(name: str, *, rw: bool = False, target: str = "") -> dict[str, Any]:
    return {"Type": "bind", "Source": f"/srv/{name}/outbox",
            "Destination": target or f"/inputs/{name}", "RW": rw, "Propagation": "rprivate"}


def test_each_input_is_a_read_only_bind_of_that_sandboxs_outputs(spec: SandboxSpec) -> None:
    kwargs = create_kwargs(_with_inputs(spec), installation=INSTALLATION, init=True,
                           inputs=INPUTS, **HOST_DIRS)
    table = {(m["Target"], m["Source"], m["Type"], bool(m.get("ReadOnly")))
             for m in kwargs["mounts"] if m["Target"].startswith("/inputs")}
    assert table == {("/inputs/sb-0", "/srv/sb-0/outbox", "bind", True),
                     ("/inputs/sb-9", "/srv/sb-9/outbox", "bind", True)}
    # Without inputs, no mount under /inputs at all.
    plain = create_kwargs(spec, installation=INSTALLATION, init=True, **HOST_DIRS)
    assert not [m for m in plain["mounts"] if m["Target"].startswith("/inputs")]


def test_input_paths_must_match_the_spec_exactly(spec: SandboxSpec) -> None:
    with_inputs = _with_inputs(spec)
    for given in ({}, {"sb-0": INPUTS["sb-0"]}, {**INPUTS, "sb-7": Path("/srv/sb-7/outbox")},
                  {**INPUTS, "sb-0": Path("relative/outbox")}):
        with pytest.raises(ValueError):
            create_kwargs(with_inputs, installation=INSTALLATION, init=True, inputs=given,
                          **HOST_DIRS)
    with pytest.raises(ValueError):  # paths for inputs the spec does not have
        create_kwargs(spec, installation=INSTALLATION, init=True, inputs=INPUTS, **HOST_DIRS)


def test_every_cluster_member_gets_the_inputs_read_only(spec: SandboxSpec) -> None:
    cluster = dataclasses.replace(_with_inputs(spec), network=NetworkPlan.MEMBERS_ONLY, ranks=3)
    for rank in range(3):
        kwargs = member_kwargs(cluster, rank, installation=INSTALLATION, init=True,
                               secrets=Path("/srv/sb-1/mpi"), holder="" if rank == 0 else "c0",
                               inputs=INPUTS, **HOST_DIRS)
        found = {m["Target"]: m for m in kwargs["mounts"] if m["Target"].startswith("/inputs")}
        assert set(found) == {"/inputs/sb-0", "/inputs/sb-9"}
        assert all(m["ReadOnly"] is True for m in found.values())


def test_a_read_only_input_passes_the_check() -> None:
    attrs = _sealed()
    attrs["Mounts"] += [_input("sb-0"), _input("sb-9")]
    assert assert_hardened(attrs, NetworkPlan.NONE) == []
    assert assert_hardened(attrs, NetworkPlan.NONE, inputs=["sb-0", "sb-9"]) == []


@pytest.mark.parametrize(("mount", "expected"), [
    (_input("sb-0", rw=True), "input mount /inputs/sb-0 is writable"),
    (_input("sb-0", target="/inputs"), "unexpected mount at /inputs"),
    (_input("sb-0", target="/inputs/sb-0/deeper"), "unexpected mount at /inputs/sb-0/deeper"),
    (_input("sb-0", target="/inputs/Not_An_Id"), "unexpected mount at /inputs/Not_An_Id"),
    (_input("sb-0", target="/inputs/.."), "unexpected mount at /inputs/.."),
    (_input("sb-0", target="/inputs/"), "unexpected mount at /inputs/"),
    ({**_input("sb-0"), "Type": "volume"}, "volume mount at /inputs/sb-0"),
    ({**_input("sb-0"), "Propagation": "rslave"}, "propagates"),
])
def test_each_weakening_of_an_input_is_reported(mount: dict[str, Any], expected: str) -> None:
    attrs = _sealed()
    attrs["Mounts"].append(mount)
    found = assert_hardened(attrs, NetworkPlan.NONE)
    assert any(expected in v for v in found), found


def test_given_the_inputs_asked_for_the_check_wants_exactly_those() -> None:
    attrs = _sealed()
    attrs["Mounts"].append(_input("sb-0"))
    assert any("/inputs/sb-0 was not asked for" in v
               for v in assert_hardened(attrs, NetworkPlan.NONE, inputs=()))
    assert any("input sb-9 is not mounted" in v
               for v in assert_hardened(attrs, NetworkPlan.NONE, inputs=["sb-0", "sb-9"]))


# --- the runtime (runc or gVisor) -------------------------------------------------------------


def test_the_runtime_is_always_named_for_the_engine(spec: SandboxSpec) -> None:
    from docker.models.containers import _create_container_args

    assert create_kwargs(spec, installation=INSTALLATION, init=True, **HOST_DIRS)[
        "runtime"] == "runc"
    gvisor = create_kwargs(spec.with_runtime(Runtime.GVISOR), installation=INSTALLATION,
                           init=True, **HOST_DIRS)
    assert gvisor["runtime"] == "runsc"
    host = _create_container_args(dict(gvisor, version="1.41"))["host_config"]
    assert host["Runtime"] == "runsc"
    # Everything else is the same under either runtime but the pids limit, which under
    # gVisor also counts gVisor's own threads: 128 + 8 per process the sandbox may have.
    runc = create_kwargs(spec, installation=INSTALLATION, init=True, **HOST_DIRS)
    assert (runc["pids_limit"], gvisor["pids_limit"]) == (64, 128 + 8 * 64)
    assert {k: v for k, v in gvisor.items() if k not in ("runtime", "pids_limit")} == \
        {k: v for k, v in runc.items() if k not in ("runtime", "pids_limit")}


def test_the_self_check_expects_exactly_the_planned_runtime() -> None:
    runc = _sealed()
    runsc = copy.deepcopy(runc)
    runsc["HostConfig"]["Runtime"] = "runsc"
    assert assert_hardened(runsc, NetworkPlan.NONE, runtime=Runtime.GVISOR) == []
    assert assert_hardened(runc, NetworkPlan.NONE, runtime=Runtime.RUNC) == []
    assert assert_hardened(runc, NetworkPlan.NONE, runtime=Runtime.GVISOR) == [
        "runtime is 'runc', not 'runsc' (gvisor)"]
    assert assert_hardened(runsc, NetworkPlan.NONE) == ["runtime is 'runsc', not 'runc' (runc)"]
    for other in ("kata", "", None):
        weird = copy.deepcopy(runc)
        weird["HostConfig"]["Runtime"] = other
        assert assert_hardened(weird, NetworkPlan.NONE)
        assert assert_hardened(weird, NetworkPlan.NONE, runtime=Runtime.GVISOR)
    del runc["HostConfig"]["Runtime"]
    assert assert_hardened(runc, NetworkPlan.NONE)
