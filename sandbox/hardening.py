"""How a `SandboxSpec` becomes a locked-down Docker container, and how to check one is.

`create_kwargs` is the only place container options are chosen; `assert_hardened` reads a
`docker inspect` result back and lists every way it falls short, for tests and the reconciler.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from sandbox.backend import LABEL_INSTALLATION, LABEL_OWNER, LABEL_SANDBOX
from sandbox.cluster import SECRETS_TARGET, launcher_command, member_name, rank_command
from sandbox.spec import (
    DATA_ROOT,
    INPUTS_ROOT,
    OUTBOX,
    SANDBOX_GID,
    SANDBOX_UID,
    WORKSPACE,
    NetworkPlan,
    Runtime,
    SandboxSpec,
    valid_sandbox_id,
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


#: Resource limits of every process in a sandbox, soft = hard so nothing inside raises them.
#: `core` 0: a crash never writes a core dump (the process's memory, datasets' rows
#: included) anywhere. `nproc` counts every process and thread of the sandbox uid on the
#: host, across all sandboxes (the kernel counts per user, not per container): a host-wide
#: backstop above what the sandboxes a policy allows use together; each container's own cap
#: is its pids limit.
ULIMITS: Mapping[str, int] = {"nofile": 4096, "nproc": 32768, "core": 0}


def ulimits() -> list[Ulimit]:
    return [Ulimit(name=name, soft=value, hard=value) for name, value in ULIMITS.items()]


def _ulimit_violations(host: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    seen = {str(u.get("Name")): (int(u.get("Soft", -1)), int(u.get("Hard", -1)))
            for u in host.get("Ulimits") or []}
    for name, value in ULIMITS.items():
        soft, hard = seen.get(name, (-1, -1))
        if name not in seen:
            found.append(f"ulimit {name} not set")
        elif not 0 <= soft <= hard <= value:
            found.append(f"ulimit {name} is {soft}/{hard}, not at most {value}")
    return found


#: The engine's name for each runtime: gVisor is registered as `runsc` (images/host/ensure-host.sh).
ENGINE_RUNTIMES = {Runtime.RUNC: "runc", Runtime.GVISOR: "runsc"}

#: Under gVisor the engine's pids limit counts gVisor's own host threads and processes too:
#: measured with Debian 12's runsc on the ptrace platform, about 60 for its kernel, init and
#: Python at rest, and about 6 more for each process in the sandbox (a limit of 64 stopped
#: the sandbox before its command ran). The limit is scaled so that it still bounds the
#: sandbox's processes as the policy says; past it the whole sandbox ends.
GVISOR_PIDS_BASE = 128
GVISOR_PIDS_PER_PROCESS = 8


def engine_pids_limit(pids: int, runtime: Runtime) -> int:
    """The engine's pids limit for a sandbox of at most `pids` processes on `runtime`."""
    if runtime is Runtime.GVISOR:
        return GVISOR_PIDS_BASE + GVISOR_PIDS_PER_PROCESS * pids
    return pids


def tmpfs_options(tmp_mb: int) -> str:
    return f"rw,nosuid,nodev,size={tmp_mb}m"


def gpu_request(count: int) -> DeviceRequest:
    """`count` NVIDIA GPUs (the engine picks which), and nothing else a device request can
    carry (no driver options, no other capabilities)."""
    return DeviceRequest(driver="nvidia", count=count, capabilities=[["gpu"]])


def _gpu_violations(host: Mapping[str, Any], gpus: int) -> list[str]:
    requests = host.get("DeviceRequests") or []
    if gpus == 0:
        return ["device requests (GPUs) passed in"] if requests else []
    expected = {"Driver": "nvidia", "Count": gpus, "DeviceIDs": [],
                "Capabilities": [["gpu"]], "Options": {}}
    seen = [{"Driver": r.get("Driver"), "Count": r.get("Count"),
             "DeviceIDs": r.get("DeviceIDs") or [], "Capabilities": r.get("Capabilities"),
             "Options": r.get("Options") or {}} for r in requests]
    if seen != [expected]:
        return [f"device requests are not exactly {gpus} GPU(s)"]
    return []


def network_mode(plan: NetworkPlan, network: str = "") -> str:
    """The engine's network mode for a plan: "none" for one container and for a cluster's
    launcher (which holds the cluster's loopback-only namespace), and for every other member
    of a cluster the launcher's namespace (`network` is the launcher's container id)."""
    if plan is NetworkPlan.NONE or not network:
        return "none"
    return f"container:{network}"


def _input_mounts(spec: SandboxSpec, inputs: Mapping[str, Path]) -> list[Mount]:
    """One read-only bind per input, from the host path given for exactly that input."""
    wanted = {i.sandbox_id for i in spec.inputs}
    if set(inputs) != wanted:
        raise ValueError(f"host paths given for inputs {sorted(inputs)}, the spec has "
                         f"{sorted(wanted)}")
    for sandbox_id, path in inputs.items():
        if not path.is_absolute():
            raise ValueError(f"the host path of input {sandbox_id} must be absolute")
    return [Mount(target=i.target, source=str(inputs[i.sandbox_id]), type="bind",
                  read_only=True) for i in spec.inputs]


def create_kwargs(spec: SandboxSpec, *, installation: str, init: bool, workspace: Path,
                  outbox: Path, network: str = "",
                  inputs: Mapping[str, Path] | None = None) -> dict[str, Any]:
    """Keyword arguments for `DockerClient.containers.create` that run `spec` sealed.

    `init` says whether the engine has a working `docker-init`; the backend asks the engine,
    since an `init=True` container on an engine without one is created but never starts.
    `workspace` and `outbox` are the host directories the backend's storage keeps (the
    workspace is a project's when the spec names one); `inputs` maps each of `spec.inputs`
    to the host directory of that sandbox's outputs, mounted read-only at /inputs/<id>;
    `network` names the cluster's own network under a members-only plan.
    """
    memory = spec.limits.memory_mb * 1024 * 1024
    mounts = [
        Mount(target=d.target, source=str(d.host_path), type="bind", read_only=True)
        for d in spec.datasets
    ]
    mounts.extend(_input_mounts(spec, inputs or {}))
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
        # Named even for runc, so an engine whose default runtime is another still runs it.
        "runtime": ENGINE_RUNTIMES[spec.runtime],
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
        "pids_limit": engine_pids_limit(spec.limits.pids, spec.runtime),
        "ulimits": ulimits(),
        "init": init,
        "stdin_open": False,
        "tty": False,
        **({"device_requests": [gpu_request(spec.gpus)]} if spec.gpus else {}),
        "log_config": LogConfig(
            type=LogConfig.types.JSON,
            config={"max-size": _LOG_MAX_SIZE, "max-file": _LOG_MAX_FILES},
        ),
    }


def member_kwargs(spec: SandboxSpec, rank: int, *, installation: str, init: bool,
                  workspace: Path, outbox: Path, secrets: Path,
                  holder: str = "", inputs: Mapping[str, Path] | None = None) -> dict[str, Any]:
    """`create_kwargs` for member `rank` of a cluster: the launcher (rank 0, `holder` empty)
    runs the command under mpirun and holds the loopback-only namespace; every other rank runs
    its sshd in the launcher's namespace (`holder`: the launcher's container id). Every
    member has the same limits, datasets, inputs, workspace and outbox, and the cluster's
    keys read-only."""
    if spec.network is not NetworkPlan.MEMBERS_ONLY or not 0 <= rank < spec.ranks:
        raise ValueError("member_kwargs is for the ranks of a cluster")
    if (rank == 0) == bool(holder):
        raise ValueError("the launcher holds the namespace; every other rank joins it")
    kwargs = create_kwargs(spec, installation=installation, init=init, workspace=workspace,
                           outbox=outbox, network=holder, inputs=inputs)
    kwargs["command"] = (launcher_command(spec.ranks, spec.command) if rank == 0
                         else rank_command(rank))
    mounts = kwargs["mounts"]
    if rank > 0:  # one outbox, written by rank 0 only; the others may read it
        mounts = [Mount(target=OUTBOX, source=str(outbox), type="bind", read_only=True)
                  if m["Target"] == OUTBOX else m for m in mounts]
    kwargs["mounts"] = [*mounts, Mount(target=SECRETS_TARGET, source=str(secrets),
                                       type="bind", read_only=True)]
    if rank == 0:
        kwargs["hostname"] = member_name(0)
    else:
        del kwargs["hostname"]  # the engine refuses a hostname with another's namespace
    return kwargs


def _host_mode(value: object) -> bool:
    return isinstance(value, str) and (value == "host" or value.startswith("container:"))


def _mount_violations(attrs: Mapping[str, Any], plan: NetworkPlan,
                      inputs: Collection[str] | None) -> list[str]:
    found: list[str] = []
    mounted_inputs: set[str] = set()
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
        if target == SECRETS_TARGET and plan is NetworkPlan.MEMBERS_ONLY:
            if writable:
                found.append(f"cluster keys at {target} are writable")
            continue
        parent, _, name = target.rpartition("/")
        if parent == DATA_ROOT and name:
            if writable:
                found.append(f"dataset mount {target} is writable")
        elif parent == INPUTS_ROOT and valid_sandbox_id(name):
            mounted_inputs.add(name)
            if writable:
                found.append(f"input mount {target} is writable")
            if inputs is not None and name not in inputs:
                found.append(f"input mount {target} was not asked for")
        else:
            found.append(f"unexpected mount at {target}")
    for missing in sorted(set(inputs or ()) - mounted_inputs):
        found.append(f"input {missing} is not mounted")
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
        return ["members-only plan without the cluster's own namespace"]
    # The launcher holds the namespace with no network; the others join exactly it.
    if mode not in ("none", f"container:{network}"):
        return [f"network mode is {mode!r}, not 'none' nor the cluster's own namespace"]
    return []


def assert_hardened(attrs: Mapping[str, Any], plan: NetworkPlan,
                    network: str = "", *, gpus: int = 0,
                    inputs: Collection[str] | None = None,
                    runtime: Runtime = Runtime.RUNC) -> list[str]:
    """Every way a `docker inspect` result falls short of `create_kwargs` under the network
    plan it was given (and the cluster's own network, for members-only); [] when sealed.

    Every mount under /inputs must be exactly /inputs/<sandbox id>, read-only; given
    `inputs` (the sandbox ids the spec asked for), exactly those. The container runs on
    exactly the `runtime` planned (a gVisor plan on runc is a violation, and so is the
    reverse: the plan is what was decided and recorded)."""
    found: list[str] = []
    host = attrs.get("HostConfig") or {}
    config = attrs.get("Config") or {}

    found.extend(_network_violations(attrs, plan, network))
    engine_runtime = ENGINE_RUNTIMES[runtime]
    if host.get("Runtime") != engine_runtime:
        found.append(f"runtime is {host.get('Runtime')!r}, not {engine_runtime!r} "
                     f"({runtime})")
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
    found.extend(_ulimit_violations(host))

    if host.get("IpcMode") != "private":
        found.append(f"IPC mode is {host.get('IpcMode')!r}, not 'private'")
    for key in ("PidMode", "UTSMode", "UsernsMode", "CgroupnsMode"):
        if _host_mode(host.get(key)):
            found.append(f"{key} shares the host's namespace ({host.get(key)!r})")
    if host.get("Devices"):
        found.append("host devices passed in")
    found.extend(_gpu_violations(host, gpus))
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
    found.extend(_mount_violations(attrs, plan, inputs))

    labels = config.get("Labels") or {}
    for label in (LABEL_SANDBOX, LABEL_OWNER, LABEL_INSTALLATION):
        if not labels.get(label):
            found.append(f"label {label} missing")
    return found
