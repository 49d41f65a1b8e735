"""How a `SandboxSpec` becomes a locked-down Docker container, and how to check one is.

`create_kwargs` is the only place container options are chosen; `assert_hardened` reads a
`docker inspect` result back and lists every way it falls short, for tests and the reconciler.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from docker.types import LogConfig, Mount

from sandbox.backend import LABEL_INSTALLATION, LABEL_OWNER, LABEL_SANDBOX
from sandbox.spec import (
    DATA_ROOT,
    OUTBOX,
    SANDBOX_GID,
    SANDBOX_UID,
    WORKSPACE,
    NetworkPlan,
    SandboxSpec,
)

SANDBOX_USER = f"{SANDBOX_UID}:{SANDBOX_GID}"
SANDBOX_HOSTNAME = "sandbox"
TMP_DIR = "/tmp"  # noqa: S108 - the path inside the sandbox, a private tmpfs
NO_NEW_PRIVILEGES = "no-new-privileges:true"

#: A chatty training loop must not fill the engine's disk with logs.
_LOG_MAX_SIZE = "50m"
_LOG_MAX_FILES = "2"

_DOCKER_SOCKETS = ("docker.sock", "containerd.sock", "podman.sock", "dockershim.sock")
_UNSAFE_SECURITY_OPTS = ("unconfined", "label=disable", "label:disable")


def tmpfs_options(tmp_mb: int) -> str:
    return f"rw,nosuid,nodev,size={tmp_mb}m"


def network_mode(plan: NetworkPlan, network: str = "") -> str:
    """The engine's network mode for a plan: "none", or the cluster's own network."""
    if plan is NetworkPlan.NONE:
        return "none"
    if not network:
        raise ValueError("a members-only plan needs the cluster's own network")
    return network


def create_kwargs(spec: SandboxSpec, *, installation: str, init: bool, workspace: Path,
                  outbox: Path, network: str = "") -> dict[str, Any]:
    """Keyword arguments for `DockerClient.containers.create` that run `spec` sealed.

    `init` says whether the engine has a working `docker-init`; the backend asks the engine,
    since an `init=True` container on an engine without one is created but never starts.
    `workspace` and `outbox` are the host directories the backend's storage keeps; `network`
    names the cluster's own network under a members-only plan.
    """
    memory = spec.limits.memory_mb * 1024 * 1024
    mounts = [
        Mount(target=d.target, source=str(d.host_path), type="bind", read_only=True)
        for d in spec.datasets
    ]
    mounts.append(Mount(target=WORKSPACE, source=str(workspace), type="bind"))
    mounts.append(Mount(target=OUTBOX, source=str(outbox), type="bind"))
    environment = {"HOME": TMP_DIR, **dict(spec.env)}
    return {
        "image": spec.image,
        "command": list(spec.command),
        "user": SANDBOX_USER,
        "working_dir": WORKSPACE,
        "hostname": SANDBOX_HOSTNAME,
        "environment": environment,
        "labels": {
            LABEL_SANDBOX: spec.sandbox_id,
            LABEL_OWNER: spec.owner,
            LABEL_INSTALLATION: installation,
        },
        "network_mode": network_mode(spec.network, network),
        "ipc_mode": "private",
        "cgroupns": "private",
        "cap_drop": ["ALL"],
        "security_opt": [NO_NEW_PRIVILEGES],
        "privileged": False,
        "read_only": True,
        "tmpfs": {TMP_DIR: tmpfs_options(spec.limits.tmp_mb)},
        "mounts": mounts,
        "mem_limit": memory,
        # Equal to mem_limit: no swap, so the memory limit is a hard limit.
        "memswap_limit": memory,
        "nano_cpus": int(spec.limits.cpus * 1_000_000_000),
        "pids_limit": spec.limits.pids,
        "init": init,
        "stdin_open": False,
        "tty": False,
        "log_config": LogConfig(
            type=LogConfig.types.JSON,
            config={"max-size": _LOG_MAX_SIZE, "max-file": _LOG_MAX_FILES},
        ),
    }


def _host_mode(value: object) -> bool:
    return isinstance(value, str) and (value == "host" or value.startswith("container:"))


def _mount_violations(attrs: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    host = attrs.get("HostConfig") or {}
    for bind in host.get("Binds") or []:
        found.append(f"bind mount {bind!r} outside the declared mounts")
    for source in host.get("VolumesFrom") or []:
        found.append(f"volumes shared from container {source!r}")
    tmpfs = host.get("Tmpfs") or {}
    for target, options in tmpfs.items():
        if target != TMP_DIR:
            found.append(f"unexpected tmpfs at {target}")
        opts = set(str(options).split(","))
        if not {"nosuid", "nodev"} <= opts:
            found.append(f"tmpfs {target} lacks nosuid,nodev")
    for mount in attrs.get("Mounts") or []:
        source = str(mount.get("Source", ""))
        target = str(mount.get("Destination", ""))
        writable = bool(mount.get("RW", True))
        if source.rstrip("/").endswith(_DOCKER_SOCKETS):
            found.append(f"engine socket {source} mounted at {target}")
        if mount.get("Type") != "bind":
            found.append(f"{mount.get('Type')} mount at {target} (only bind mounts allowed)")
        if mount.get("Propagation") in ("shared", "rshared", "slave", "rslave"):
            found.append(f"mount {target} propagates host mounts")
        if target in (WORKSPACE, OUTBOX):
            continue
        parent, _, name = target.rpartition("/")
        if parent == DATA_ROOT and name:
            if writable:
                found.append(f"dataset mount {target} is writable")
        else:
            found.append(f"unexpected mount at {target}")
    return found


def _network_violations(attrs: Mapping[str, Any], plan: NetworkPlan,
                        network: str) -> list[str]:
    host = attrs.get("HostConfig") or {}
    mode = host.get("NetworkMode")
    if plan is NetworkPlan.NONE:
        if mode != "none":
            return [f"network mode is {mode!r}, not 'none'"]
        return []
    if not network:
        return ["members-only plan without the cluster's own network"]
    attached = set((attrs.get("NetworkSettings") or {}).get("Networks") or {})
    found = []
    if mode != network and attached != {network}:
        found.append(f"network mode is {mode!r}, not the cluster's own network")
    extra = attached - {network} - {mode}
    if extra:
        found.append(f"attached to other networks: {sorted(extra)}")
    return found


def assert_hardened(attrs: Mapping[str, Any], plan: NetworkPlan,
                    network: str = "") -> list[str]:
    """Every way a `docker inspect` result falls short of `create_kwargs` under the network
    plan it was given (and the cluster's own network, for members-only); [] when sealed."""
    found: list[str] = []
    host = attrs.get("HostConfig") or {}
    config = attrs.get("Config") or {}

    found.extend(_network_violations(attrs, plan, network))
    if host.get("Privileged"):
        found.append("privileged")
    cap_drop = {str(c).upper().removeprefix("CAP_") for c in host.get("CapDrop") or []}
    if "ALL" not in cap_drop:
        found.append("capabilities not all dropped")
    if host.get("CapAdd"):
        found.append(f"capabilities added: {host['CapAdd']}")
    security_opt = [str(o) for o in host.get("SecurityOpt") or []]
    if not any(o in (NO_NEW_PRIVILEGES, "no-new-privileges") for o in security_opt):
        found.append("no-new-privileges not set")
    for opt in security_opt:
        if any(bad in opt for bad in _UNSAFE_SECURITY_OPTS):
            found.append(f"unsafe security option {opt!r}")
    if not host.get("ReadonlyRootfs"):
        found.append("root filesystem is writable")
    if config.get("User") != SANDBOX_USER:
        found.append(f"runs as user {config.get('User')!r}, not {SANDBOX_USER!r}")

    memory = int(host.get("Memory") or 0)
    if memory <= 0:
        found.append("no memory limit")
    elif int(host.get("MemorySwap") or 0) != memory:
        found.append("swap allowed (MemorySwap differs from Memory)")
    if host.get("OomKillDisable"):
        found.append("OOM killer disabled")
    if int(host.get("NanoCpus") or 0) <= 0 and int(host.get("CpuQuota") or 0) <= 0:
        found.append("no CPU limit")
    if int(host.get("PidsLimit") or 0) <= 0:
        found.append("no pids limit")

    if host.get("IpcMode") != "private":
        found.append(f"IPC mode is {host.get('IpcMode')!r}, not 'private'")
    for key in ("PidMode", "UTSMode", "UsernsMode", "CgroupnsMode"):
        if _host_mode(host.get(key)):
            found.append(f"{key} shares the host's namespace ({host.get(key)!r})")
    if host.get("Devices"):
        found.append("host devices passed in")
    if host.get("DeviceRequests"):
        found.append("device requests (GPUs) passed in")
    if host.get("DeviceCgroupRules"):
        found.append("extra device cgroup rules")
    if "MaskedPaths" in host and not host["MaskedPaths"]:
        found.append("kernel paths under /proc and /sys are not masked")
    if host.get("Sysctls"):
        found.append(f"sysctls set: {sorted(host['Sysctls'])}")
    if host.get("PortBindings") or host.get("PublishAllPorts"):
        found.append("ports published")
    if host.get("Links"):
        found.append("links to other containers")
    found.extend(_mount_violations(attrs))

    labels = config.get("Labels") or {}
    for label in (LABEL_SANDBOX, LABEL_OWNER, LABEL_INSTALLATION):
        if not labels.get(label):
            found.append(f"label {label} missing")
    return found
