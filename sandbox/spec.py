"""What a sandbox is, as pure data: image, command, datasets, limits.

A `SandboxSpec` says nothing about Docker nor where the workspace and outbox live (that is
the backend's storage, `sandbox.storage`); backends turn it into containers. Builder methods
return a new spec so tests can read like `SandboxSpec(...).with_dataset(...)`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.errors import InvalidSpec

#: The only uid/gid processes inside a sandbox ever run as.
SANDBOX_UID = 10001
SANDBOX_GID = 10001

#: Mount points inside every sandbox.
DATA_ROOT = "/data"
WORKSPACE = "/workspace"
OUTBOX = "/outbox"
#: Where the outputs of earlier sandboxes are mounted, read-only, one directory each.
INPUTS_ROOT = "/inputs"
#: The most earlier sandboxes' outputs one sandbox may mount.
MAX_INPUTS = 64

#: Bounds of a workspace's or outbox's size (ext4 needs a few MB of its own; 1 TiB).
MIN_VOLUME_MB = 16
MAX_VOLUME_MB = 1024 * 1024

#: The most ranks a cluster may have (a rank's address is 127.0.0.<rank + 1>).
MAX_RANKS = 64
#: The most GPUs one member may ask for.
MAX_GPUS = 16

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def valid_sandbox_id(value: str) -> bool:
    """Sandbox ids and dataset names share one safe alphabet (they become paths and labels)."""
    return bool(_NAME.match(value))


class NetworkPlan(enum.StrEnum):
    """The network a sandbox gets, an input to hardening and to its self-check.

    `none`: no interface but loopback (one container). `members-only`: the members of one
    cluster reach each other and nothing else (not the host, not the outside, no DNS beyond
    the members)."""

    NONE = "none"
    MEMBERS_ONLY = "members-only"


class Runtime(enum.StrEnum):
    """The kernel a sandbox's system calls meet, chosen by the policy (`isolation`).

    `runc`: the host's kernel, behind namespaces, cgroups, capabilities and seccomp. `gvisor`:
    gVisor's user-space kernel (the engine's `runsc` runtime) between the sandbox and the
    host's, so an exploit must break gVisor first."""

    RUNC = "runc"
    GVISOR = "gvisor"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox."""

    cpus: float = 1.0
    memory_mb: int = 2048
    pids: int = 256
    timeout_s: int = 3600
    #: Sizes of /tmp (a tmpfs), the workspace and the outbox: writing past one is ENOSPC.
    tmp_mb: int = 512
    workspace_mb: int = 1024
    outbox_mb: int = 256

    def __post_init__(self) -> None:
        if not (0 < self.cpus <= 64):
            raise InvalidSpec("cpus must be between 0 and 64")
        if not (64 <= self.memory_mb <= 1024 * 1024):
            raise InvalidSpec("memory_mb must be at least 64")
        if not (16 <= self.pids <= 65536):
            raise InvalidSpec("pids must be between 16 and 65536")
        if not (1 <= self.timeout_s <= 7 * 24 * 3600):
            raise InvalidSpec("timeout_s must be between 1 second and 7 days")
        if not (1 <= self.tmp_mb <= 64 * 1024):
            raise InvalidSpec("tmp_mb must be between 1 and 65536")
        for name in ("workspace_mb", "outbox_mb"):
            if not (MIN_VOLUME_MB <= getattr(self, name) <= MAX_VOLUME_MB):
                raise InvalidSpec(f"{name} must be between {MIN_VOLUME_MB} and "
                                  f"{MAX_VOLUME_MB}")


@dataclass(frozen=True)
class DatasetMount:
    """A dataset mounted read-only at /data/<name>."""

    name: str
    host_path: Path
    digest: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InvalidSpec(f"invalid dataset name {self.name!r}")
        if not self.host_path.is_absolute():
            raise InvalidSpec("dataset host path must be absolute")

    @property
    def target(self) -> str:
        return f"{DATA_ROOT}/{self.name}"


@dataclass(frozen=True)
class InputMount:
    """A finished sandbox's outputs (its outbox), mounted read-only at /inputs/<sandbox id>;
    `digest` names what it held when it ended (the console's outbox manifest digest)."""

    sandbox_id: str
    digest: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.sandbox_id):
            raise InvalidSpec(f"invalid input sandbox id {self.sandbox_id!r}")

    @property
    def target(self) -> str:
        return f"{INPUTS_ROOT}/{self.sandbox_id}"


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a backend needs to start one sealed sandbox."""

    sandbox_id: str
    owner: str
    image: str
    command: tuple[str, ...]
    datasets: tuple[DatasetMount, ...] = ()
    limits: Limits = field(default_factory=Limits)
    env: tuple[tuple[str, str], ...] = ()
    network: NetworkPlan = NetworkPlan.NONE
    #: Members of an MPI cluster (1: one container). Each rank has `limits` of its own.
    ranks: int = 1
    #: NVIDIA GPUs each member gets (device requests), where the host has them.
    gpus: int = 0
    #: Outputs of earlier sandboxes, each mounted read-only under /inputs.
    inputs: tuple[InputMount, ...] = ()
    #: The project whose persistent volume is the workspace ("": a fresh workspace).
    project: str = ""
    #: The kernel the sandbox runs on (the policy's `isolation`).
    runtime: Runtime = Runtime.RUNC

    def __post_init__(self) -> None:
        if not _NAME.match(self.sandbox_id):
            raise InvalidSpec(f"invalid sandbox id {self.sandbox_id!r}")
        if not self.command:
            raise InvalidSpec("command must not be empty")
        if not 0 <= self.gpus <= MAX_GPUS:
            raise InvalidSpec(f"gpus must be between 0 and {MAX_GPUS}")
        if not 1 <= self.ranks <= MAX_RANKS:
            raise InvalidSpec(f"ranks must be between 1 and {MAX_RANKS}")
        if (self.ranks > 1) != (self.network is NetworkPlan.MEMBERS_ONLY):
            raise InvalidSpec("a cluster (ranks > 1) and only a cluster has a members-only "
                              "network")
        names = [d.name for d in self.datasets]
        if len(names) != len(set(names)):
            raise InvalidSpec("a dataset may be mounted only once")
        sources = [i.sandbox_id for i in self.inputs]
        if len(sources) != len(set(sources)) or self.sandbox_id in sources:
            raise InvalidSpec("an input may be mounted only once, and never a sandbox's own")
        if len(sources) > MAX_INPUTS:
            raise InvalidSpec(f"at most {MAX_INPUTS} inputs")
        if self.project and not _NAME.match(self.project):
            raise InvalidSpec(f"invalid project name {self.project!r}")
        if self.runtime is Runtime.GVISOR and self.ranks > 1:
            # Each member would get its own gVisor kernel and loopback: the ranks could not
            # reach each other through the launcher's network namespace.
            raise InvalidSpec("a cluster (ranks > 1) cannot run under gVisor")
        for key, _ in self.env:
            if not re.match(r"^[A-Z_][A-Z0-9_]*$", key):
                raise InvalidSpec(f"invalid environment variable name {key!r}")

    def with_dataset(self, mount: DatasetMount) -> SandboxSpec:
        return dataclasses.replace(self, datasets=(*self.datasets, mount))

    def with_limits(self, limits: Limits) -> SandboxSpec:
        return dataclasses.replace(self, limits=limits)

    def with_env(self, key: str, value: str) -> SandboxSpec:
        return dataclasses.replace(self, env=(*self.env, (key, value)))

    def with_runtime(self, runtime: Runtime) -> SandboxSpec:
        return dataclasses.replace(self, runtime=runtime)

    def to_dict(self) -> dict[str, object]:
        """A JSON-safe description, recorded with the sandbox and in provenance."""
        return {
            "sandbox_id": self.sandbox_id,
            "owner": self.owner,
            "image": self.image,
            "command": list(self.command),
            "datasets": [{"name": d.name, "digest": d.digest} for d in self.datasets],
            "limits": dataclasses.asdict(self.limits),
            "env": dict(self.env),
            "network": str(self.network),
            "ranks": self.ranks,
            "gpus": self.gpus,
            # Only where used, so that specs recorded before inputs and projects read the same.
            **({"inputs": [{"sandbox": i.sandbox_id, "digest": i.digest}
                           for i in self.inputs]} if self.inputs else {}),
            **({"project": self.project} if self.project else {}),
            **({"runtime": str(self.runtime)} if self.runtime is not Runtime.RUNC else {}),
        }
