"""The lifecycle contract every sandbox backend implements.

Small on purpose, like JupyterHub's Spawner: create, start, poll, logs, stop, remove, list
owned. A backend keeps what it needs about a sandbox in an opaque JSON state the console
stores; a sandbox may be one container or several (a cluster), so status, logs and
reconciliation are per sandbox, not per container. Stop and remove are safe to repeat.
Backends select what they own by labels, never names.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from sandbox.spec import NetworkPlan, Runtime, SandboxSpec, valid_sandbox_id
from sandbox.storage import SandboxStorage
from sandbox.terminal import DEFAULT_SIZE, Terminal, TerminalSize

#: Labels every container, network and volume of ours carries.
LABEL_SANDBOX = "sealroom.sandbox"
LABEL_OWNER = "sealroom.owner"
#: Which Sealroom installation (data directory) owns the object; several may share an engine.
LABEL_INSTALLATION = "sealroom.installation"


class RunState(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    MISSING = "missing"


@dataclass(frozen=True)
class MemberStatus:
    """One member's part of a sandbox's status: its name (the backend's, safe to show), its
    state and, once it has ended, its exit code."""

    name: str
    state: RunState
    exit_code: int | None = None
    oom_killed: bool = False


@dataclass(frozen=True)
class SandboxStatus:
    """What the backend observes about one sandbox right now."""

    state: RunState
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    error: str = ""
    #: The member whose ending ended the sandbox when it is not the launcher ("rank-1"): the
    #: backend's own name, safe to show.
    ended_by: str = ""
    #: Each member's own status, the launcher first (filled by `combine`).
    members: tuple[MemberStatus, ...] = ()


@dataclass(frozen=True)
class LogChunk:
    """Log output written after a cursor, and the cursor after it. The cursor is the
    backend's own (opaque) position: it survives the engine rotating its log files."""

    data: bytes
    cursor: str


@dataclass(frozen=True)
class ResourceUsage:
    """The engine's own counters for a running sandbox, summed over its members: CPU time
    used since it started (nanoseconds), memory in use (bytes, without the page cache the
    kernel may take back), and when the engine read them (UTC)."""

    cpu_ns: int
    memory_bytes: int
    read_at: datetime


#: What a backend keeps about one sandbox, as JSON: opaque to the console, which stores it with
#: the sandbox and hands it back on every call (like JupyterHub's `get_state`/`load_state`).
BackendState = dict[str, Any]

#: The member a backend reads by default: the one whose exit decides the sandbox's.
LAUNCHER = "main"


@dataclass(frozen=True)
class Member:
    """One container of a sandbox: `name` is stable and safe to show ("main", "rank-1")."""

    name: str
    container: str


@dataclass(frozen=True)
class ContainerState:
    """The state of a container backend: its members (the launcher first), the private
    network a cluster gets (empty for none), and the network plan they were created under."""

    members: tuple[Member, ...]
    plan: NetworkPlan = NetworkPlan.NONE
    network: str = ""
    #: The sandbox it belongs to (for what the backend keeps beside the containers: keys).
    sandbox_id: str = ""
    #: GPUs each member was given (its self-check expects exactly these device requests).
    gpus: int = 0
    #: The sandboxes whose outputs each member mounts under /inputs (its self-check expects
    #: exactly these, read-only).
    inputs: tuple[str, ...] = ()
    #: The runtime every member was created on (its self-check expects exactly this one).
    runtime: Runtime = Runtime.RUNC

    def to_state(self) -> BackendState:
        return {"members": [{"name": m.name, "container": m.container} for m in self.members],
                "plan": str(self.plan), "network": self.network,
                "sandbox": self.sandbox_id, "gpus": self.gpus,
                # Only where used, so that states stored before inputs (runtimes) read the same.
                **({"inputs": list(self.inputs)} if self.inputs else {}),
                **({"runtime": str(self.runtime)} if self.runtime is not Runtime.RUNC else {})}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ContainerState:
        """Read a stored state; anything malformed reads as no members (nothing to touch)."""
        members: list[Member] = []
        raw = state.get("members")
        for item in raw if isinstance(raw, list) else []:
            if isinstance(item, dict) and isinstance(item.get("name"), str) \
                    and isinstance(item.get("container"), str) and item["container"]:
                members.append(Member(item["name"], item["container"]))
        try:
            plan = NetworkPlan(str(state.get("plan", NetworkPlan.NONE)))
        except ValueError:
            plan = NetworkPlan.NONE
        network = state.get("network")
        sandbox_id = state.get("sandbox")
        gpus = state.get("gpus")
        raw_inputs = state.get("inputs")
        inputs = tuple(i for i in raw_inputs if isinstance(i, str) and valid_sandbox_id(i)) \
            if isinstance(raw_inputs, list) else ()
        try:
            # Anything else reads as runc: a gVisor container then fails its self-check.
            runtime = Runtime(str(state.get("runtime", Runtime.RUNC)))
        except ValueError:
            runtime = Runtime.RUNC
        return cls(tuple(members), plan, network if isinstance(network, str) else "",
                   sandbox_id if isinstance(sandbox_id, str) else "",
                   gpus if isinstance(gpus, int) and not isinstance(gpus, bool) else 0,
                   inputs, runtime)

    @property
    def objects(self) -> frozenset[str]:
        """Every engine object the state names (a cluster's network is its launcher's)."""
        return frozenset(m.container for m in self.members)

    def member(self, name: str) -> Member | None:
        name = name or LAUNCHER
        return next((m for m in self.members if m.name == name), None)


def combine(statuses: Sequence[SandboxStatus],
            names: Sequence[str] = ()) -> SandboxStatus:
    """One status for a sandbox of several members, the launcher's first (`names` in the
    same order).

    A missing member makes the sandbox missing (lost); any member killed for memory marks the
    whole sandbox OOM-killed. The launcher's state and exit code decide, except that a member
    that has ended while the launcher still runs (ranks never end on their own) ends the
    sandbox with its exit code, naming it in `ended_by`."""
    named = tuple(MemberStatus(names[n] if n < len(names) else f"member {n}", s.state,
                               s.exit_code, s.oom_killed) for n, s in enumerate(statuses))
    if not statuses:
        return SandboxStatus(state=RunState.MISSING)
    if any(s.state is RunState.MISSING for s in statuses):
        return SandboxStatus(state=RunState.MISSING, members=named)
    launcher = statuses[0]
    oom = any(s.oom_killed for s in statuses)
    if launcher.state is not RunState.EXITED:
        for number, member in enumerate(statuses[1:], start=1):
            if member.state is RunState.EXITED:
                return dataclasses.replace(member, oom_killed=oom, ended_by=named[number].name,
                                           started_at=launcher.started_at, members=named)
    return dataclasses.replace(launcher, oom_killed=oom, members=named)


@dataclass(frozen=True)
class OwnedSandbox:
    """What the engine holds for one sandbox of this installation, found by label and
    grouped by sandbox; `state` has the shape the backend's `create` returns."""

    sandbox_id: str
    owner: str
    state: BackendState


@runtime_checkable
class Backend(Protocol):
    """Runs sandboxes. Every call after `create` takes the state `create` returned."""

    @property
    def storage(self) -> SandboxStorage:
        """Where the workspaces and outboxes of this backend's sandboxes live."""

    def ping(self) -> None:
        """Raise `EngineUnavailable` when the engine does not answer."""

    def supports_gpus(self) -> bool:
        """Whether the engine can give sandboxes NVIDIA GPUs (device requests)."""

    def runtimes(self) -> frozenset[Runtime]:
        """The runtimes the engine can run sandboxes on right now (gVisor only where it is
        installed and registered)."""

    def engine_started_at(self) -> datetime | None:
        """When the engine now answering started, where the backend can tell (None if not):
        a container that stopped just before is taken to have been stopped by its restart."""

    def create(self, spec: SandboxSpec) -> BackendState:
        """Create (not start) the sandbox under `spec.network`; return its state. On failure
        nothing it made is left behind."""

    def start(self, state: BackendState) -> None:
        """Check every member is hardened for the plan it was created under, then start."""

    def poll(self, state: BackendState) -> SandboxStatus:
        """One status for the whole sandbox (see `combine`)."""

    def members(self, state: BackendState) -> tuple[str, ...]:
        """The names of the sandbox's members, the launcher first."""

    def logs_since(self, state: BackendState, member: str = "", cursor: str = "", *,
                   max_bytes: int = 16 << 20) -> LogChunk:
        """Output of one member ("" for the launcher) written after `cursor` ("" for the
        start), at most about `max_bytes`."""

    def usage(self, state: BackendState) -> ResourceUsage | None:
        """The engine's CPU and memory counters for the sandbox, read once (None when no
        member runs, or the engine keeps no counters for it)."""

    def open_terminal(self, state: BackendState, member: str = "", *, term: str = "xterm",
                      size: TerminalSize = DEFAULT_SIZE) -> Terminal:
        """An interactive shell on a pseudo-terminal in a running member ("" for the
        launcher), as the sandbox user, inside the member's limits."""

    def stop(self, state: BackendState, *, timeout_s: int = 10) -> None:
        """Stop; a missing or already stopped sandbox counts as done."""

    def remove(self, state: BackendState) -> None:
        """Remove every object the state names; missing ones count as done."""

    def strays(self, held: BackendState, recorded: BackendState) -> BackendState | None:
        """What the engine holds for a sandbox (`held`, from `list_owned`) that its
        recorded state does not name, as a state `remove` takes; None when nothing."""

    def list_owned(self) -> Sequence[OwnedSandbox]:
        """Every sandbox of this installation the engine holds, running or not, one entry
        per sandbox."""
