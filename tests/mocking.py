"""Test doubles: `FakeBackend`, an in-memory `Backend` that stands in for the real engine in
fast, hermetic unit tests of the console (registered as `SEALROOM_BACKEND=fake` by
tests/conftest.py; the product itself knows only `docker`), and `FakeProjectVolumes`,
projects' volumes as plain directories (no loop device, no mount, no quota enforced).

It mirrors what `DockerBackend` was observed to do on a real engine (exit codes, OOM, stop,
idempotent stop/remove, lost containers, log cursors and rotation); each of those behaviours
has a real-engine test too (tests/integration/test_docker_backend.py; projects and inputs:
tests/integration/test_project_volumes.py, tests/security/test_input_mounts.py).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sandbox.backend import (
    LAUNCHER,
    BackendState,
    ContainerState,
    LogChunk,
    Member,
    OwnedSandbox,
    ResourceUsage,
    RunState,
    SandboxStatus,
    combine,
)
from sandbox.cluster import member_name
from sandbox.errors import EngineUnavailable, InvalidSpec, SandboxNotFound
from sandbox.projects import ProjectVolumes
from sandbox.spec import SANDBOX_GID, SANDBOX_UID, NetworkPlan, Runtime, SandboxSpec
from sandbox.storage import LocalStorage
from sandbox.terminal import DEFAULT_SIZE, Terminal, TerminalSize
from sandbox.volumes import LoopFilesystems, SandboxVolumes

#: Exit code of a sandbox stopped while running: SIGTERM through docker-init (128 + 15).
STOPPED_EXIT_CODE = 143
#: Exit code of a sandbox whose main process the kernel OOM-killed (128 + SIGKILL).
OOM_EXIT_CODE = 137


def _exit_code(code: int | None, oom_killed: bool) -> int:
    if code is not None:
        return code
    return OOM_EXIT_CODE if oom_killed else 0


#: How tests name a fake sandbox when scripting it: a container handle (`handle_of`) or the
#: state `create` returned (its launcher).
Ref = str | BackendState


def _container(ref: Ref) -> str:
    if isinstance(ref, str):
        return ref
    members = ContainerState.from_state(ref).members
    return members[0].container if members else ""


@dataclass(frozen=True)
class ScriptedOutcome:
    """What a fake sandbox does once started.

    `stays_running` keeps it running until `finish` or `stop`; otherwise it has exited by the
    first poll. `oom_killed` marks an OOM kill: the exit code is 137 unless `exit_code` says
    otherwise (on a real engine a killed child leaves OOMKilled set and the main process's code).
    """

    exit_code: int | None = None
    oom_killed: bool = False
    stays_running: bool = False
    logs: bytes = b""


@dataclass
class FakeSandbox:
    handle: str
    spec: SandboxSpec
    outcome: ScriptedOutcome
    state: RunState = RunState.CREATED
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    starts: int = 0
    #: Output written after the scripted log, one entry per write, and how many of the
    #: earliest entries the "engine" has rotated away.
    written: list[bytes] = field(default_factory=list)
    rotated: int = 0
    #: The engine's counters while it runs: CPU time used (ns) and memory in use (bytes).
    cpu_ns: int = 0
    memory_bytes: int = 0

    def frames(self) -> list[bytes]:
        if self.starts == 0:
            return []
        return [f for f in [self.outcome.logs, *self.written] if f]

    def status(self) -> SandboxStatus:
        return SandboxStatus(
            state=self.state,
            exit_code=self.exit_code if self.state is RunState.EXITED else None,
            oom_killed=self.oom_killed,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )


class FakeTerminal:
    """A fake member's terminal: this end is the console's, `peer` is the shell's."""

    def __init__(self, container: str, term: str, size: TerminalSize) -> None:
        self.container = container
        self.term = term
        self.sizes = [size]
        self._resized = threading.Condition()
        self._socket, self.peer = socket.socketpair()
        self.closed = False
        self.ended = False

    def fileno(self) -> int:
        return self._socket.fileno()

    def read(self, size: int) -> bytes:
        try:
            return self._socket.recv(size)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        self._socket.sendall(data)

    def resize(self, size: TerminalSize) -> None:
        with self._resized:
            self.sizes.append(size)
            self._resized.notify_all()

    def wait_for_size(self, width: int, height: int, timeout: float = 30.0) -> None:
        """Block until the gateway has passed on a resize to `width`×`height`."""
        wanted = TerminalSize(width=width, height=height)
        with self._resized:
            if not self._resized.wait_for(lambda: self.sizes[-1] == wanted, timeout):
                raise AssertionError(f"no resize to {wanted}; saw {self.sizes}")

    def exit_code(self) -> int | None:
        return 0 if self.ended else None

    def hang_up(self) -> None:
        """The shell ends (the member stopped, or `exit`)."""
        self.ended = True
        with contextlib.suppress(OSError):
            self.peer.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()


@dataclass
class FakeBackend:
    """A `Backend` held in memory. Script outcomes per sandbox id before `create`, or per
    container handle after (`handle_of`); `vanish` a handle to simulate a container removed
    behind the console's back. Its state has the Docker backend's shape (`ContainerState`).
    """

    store: LocalStorage | None = None
    engine_up: bool = True
    #: When the "engine" started (tests of restarts set it; None: unknown).
    engine_start: datetime | None = None
    #: Whether the pretend host has GPUs.
    gpus: bool = False
    #: The runtimes the pretend engine has registered (runc only, like an engine without
    #: gVisor; tests add `Runtime.GVISOR`).
    engine_runtimes: frozenset[Runtime] = frozenset({Runtime.RUNC})
    default_outcome: ScriptedOutcome = field(default_factory=ScriptedOutcome)
    created_specs: list[SandboxSpec] = field(default_factory=list)
    sandboxes: dict[str, FakeSandbox] = field(default_factory=dict)
    #: Every terminal opened, in order (the test plays the shell on each one's `peer`).
    terminals: list[FakeTerminal] = field(default_factory=list)
    _terminal_opened: threading.Condition = field(default_factory=threading.Condition)
    _by_sandbox_id: dict[str, ScriptedOutcome] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- scripting ---------------------------------------------------------------------------

    def script(self, sandbox_id: str, outcome: ScriptedOutcome) -> None:
        """What the sandbox with this id will do when created and started later."""
        self._by_sandbox_id[sandbox_id] = outcome

    def script_handle(self, handle: Ref, outcome: ScriptedOutcome) -> None:
        """Change what an already created sandbox does when (next) started."""
        self._get(handle).outcome = outcome

    def finish(
        self, handle: Ref, *, exit_code: int | None = None, oom_killed: bool = False
    ) -> None:
        """End a running sandbox as if its command had exited."""
        box = self._get(handle)
        if box.state is RunState.RUNNING:
            self._exit(box, _exit_code(exit_code, oom_killed), oom_killed=oom_killed)

    def vanish(self, handle: Ref) -> None:
        """Drop a sandbox without telling anyone, like `docker rm -f` by an operator."""
        self.sandboxes.pop(_container(handle), None)

    def emit(self, handle: Ref, data: bytes) -> None:
        """The sandbox writes more output."""
        self._get(handle).written.append(data)

    def rotate(self, handle: Ref) -> None:
        """The engine rotates the log: everything written so far is gone from `logs`."""
        box = self._get(handle)
        box.rotated = len(box.frames())

    def use(self, handle: Ref, *, cpu_ns: int, memory_bytes: int) -> None:
        """The sandbox has used this much CPU time so far and holds this much memory."""
        box = self._get(handle)
        box.cpu_ns, box.memory_bytes = cpu_ns, memory_bytes

    def handle_of(self, sandbox_id: str) -> str:
        for box in self.sandboxes.values():
            if box.spec.sandbox_id == sandbox_id:
                return box.handle
        raise KeyError(sandbox_id)

    def state_of(self, sandbox_id: str) -> BackendState:
        return ContainerState((Member(LAUNCHER, self.handle_of(sandbox_id)),)).to_state()

    # -- Backend -----------------------------------------------------------------------------

    @property
    def storage(self) -> LocalStorage:
        if self.store is None:
            raise AssertionError("this FakeBackend was built without storage")
        return self.store

    def ping(self) -> None:
        self._engine()

    def supports_gpus(self) -> bool:
        self._engine()
        return self.gpus

    def runtimes(self) -> frozenset[Runtime]:
        self._engine()
        return self.engine_runtimes

    def engine_started_at(self) -> datetime | None:
        return self.engine_start

    def create(self, spec: SandboxSpec) -> BackendState:
        """One fake container per rank; the launcher (rank 0) plays the scripted outcome, the
        other ranks run until stopped (as their sshd would). As `DockerBackend`, refuses an
        input whose outputs are not kept, a runtime the engine lacks (the engine answers
        400, "Unknown runtime specified"), and mounts (finds) the project's volume."""
        self._engine()
        if spec.runtime not in self.engine_runtimes:
            raise InvalidSpec("The engine refused to create the sandbox.",
                              detail=f"fake: unknown runtime {spec.runtime}")
        if self.store is not None:
            for item in spec.inputs:
                path = self.store.input_path(item.sandbox_id)
                if path.is_symlink() or not path.is_dir():
                    raise InvalidSpec(f"The outputs of sandbox {item.sandbox_id} are not "
                                      f"kept, so they cannot be an input.")
            self.store.host_paths(spec)
        outcome = self._by_sandbox_id.get(spec.sandbox_id, self.default_outcome)
        members = []
        for rank in range(spec.ranks):
            handle = f"fake{next(self._ids):060x}"
            self.sandboxes[handle] = FakeSandbox(
                handle=handle, spec=spec,
                outcome=outcome if rank == 0 else ScriptedOutcome(stays_running=True))
            members.append(Member(member_name(rank), handle))
        self.created_specs.append(spec)
        inputs = tuple(i.sandbox_id for i in spec.inputs)
        if spec.ranks == 1:
            return ContainerState(tuple(members), gpus=spec.gpus, inputs=inputs,
                                  runtime=spec.runtime).to_state()
        return ContainerState(tuple(members), NetworkPlan.MEMBERS_ONLY, members[0].container,
                              spec.sandbox_id, spec.gpus, inputs, spec.runtime).to_state()

    def member_handle(self, sandbox_id: str, name: str) -> str:
        """The fake container of one member ("main", "rank-1") of a sandbox."""
        boxes = [b for b in self.sandboxes.values() if b.spec.sandbox_id == sandbox_id]
        for rank, box in enumerate(boxes):
            if member_name(rank) == name:
                return box.handle
        raise KeyError(name)

    def start(self, state: BackendState) -> None:
        self._engine()
        for member in self._members(state).members:
            self._start(self._get(member.container))

    def _start(self, box: FakeSandbox) -> None:
        if box.state is RunState.RUNNING:
            return  # the engine answers 304 and leaves it running
        box.starts += 1
        box.state = RunState.RUNNING
        box.started_at = self._now()
        box.finished_at = None
        box.exit_code = None
        box.oom_killed = False
        if not box.outcome.stays_running:
            outcome = box.outcome
            code = _exit_code(outcome.exit_code, outcome.oom_killed)
            self._exit(box, code, oom_killed=outcome.oom_killed)

    def poll(self, state: BackendState) -> SandboxStatus:
        self._engine()
        statuses = []
        found = ContainerState.from_state(state)
        for member in found.members:
            box = self.sandboxes.get(member.container)
            statuses.append(SandboxStatus(state=RunState.MISSING) if box is None
                            else box.status())
        return combine(statuses, [m.name for m in found.members])

    def logs(self, state: BackendState, member: str = "", *, tail: int | None = None) -> bytes:
        """A member's whole log, or its last `tail` lines (as `DockerBackend.logs`)."""
        self._engine()
        found = self._members(state).member(member)
        if found is None:
            raise SandboxNotFound("The sandbox has no such member.")
        box = self._get(found.container)
        output = b"".join(box.frames()[box.rotated:])
        if tail is None:
            return output
        lines = output.splitlines(keepends=True)
        return b"".join(lines[-tail:]) if tail > 0 else b""

    def members(self, state: BackendState) -> tuple[str, ...]:
        return tuple(m.name for m in ContainerState.from_state(state).members)

    def logs_since(self, state: BackendState, member: str = "", cursor: str = "", *,
                   max_bytes: int = 16 << 20) -> LogChunk:
        """The cursor counts writes, as the real engine's timestamps order them."""
        self._engine()
        found = self._members(state).member(member)
        if found is None:
            raise SandboxNotFound("The sandbox has no such member.")
        box = self._get(found.container)
        frames = box.frames()
        done = max(int(cursor or 0), box.rotated)
        taken: list[bytes] = []
        size = 0
        while done < len(frames) and size < max_bytes:
            taken.append(frames[done])
            size += len(frames[done])
            done += 1
        return LogChunk(b"".join(taken), str(done))

    def usage(self, state: BackendState) -> ResourceUsage | None:
        """The running members' counters summed (as `DockerBackend.usage`), read now."""
        self._engine()
        running = [box for m in ContainerState.from_state(state).members
                   if (box := self.sandboxes.get(m.container)) is not None
                   and box.state is RunState.RUNNING]
        if not running:
            return None
        return ResourceUsage(cpu_ns=sum(b.cpu_ns for b in running),
                             memory_bytes=sum(b.memory_bytes for b in running),
                             read_at=datetime.now(UTC))

    def open_terminal(self, state: BackendState, member: str = "", *, term: str = "xterm",
                      size: TerminalSize = DEFAULT_SIZE) -> Terminal:
        """A socket pair: the test plays the shell on `terminals[-1].peer` (what it writes
        there is the shell's output; what it reads is the client's keystrokes)."""
        self._engine()
        found = ContainerState.from_state(state).member(member)
        box = self.sandboxes.get(found.container) if found else None
        if box is None:
            raise SandboxNotFound("The sandbox has no such member.")
        if box.state is not RunState.RUNNING:
            raise SandboxNotFound("The sandbox is not running.")
        terminal = FakeTerminal(box.handle, term, size)
        with self._terminal_opened:
            self.terminals.append(terminal)
            self._terminal_opened.notify_all()
        return terminal

    def wait_for_terminal(self, count: int = 1, timeout_s: float = 20) -> FakeTerminal:
        """The `count`th terminal opened, once it is (the gateway opens it on its thread)."""
        with self._terminal_opened:
            if not self._terminal_opened.wait_for(lambda: len(self.terminals) >= count,
                                                  timeout_s):
                raise AssertionError(f"no terminal {count} was opened")
            return self.terminals[count - 1]

    def stop(self, state: BackendState, *, timeout_s: int = 10) -> None:
        self._engine()
        for member in ContainerState.from_state(state).members:
            box = self.sandboxes.get(member.container)
            if box is not None and box.state is RunState.RUNNING:
                self._exit(box, STOPPED_EXIT_CODE, oom_killed=False)

    def remove(self, state: BackendState) -> None:
        self._engine()
        for member in ContainerState.from_state(state).members:
            self.sandboxes.pop(member.container, None)

    def strays(self, held: BackendState, recorded: BackendState) -> BackendState | None:
        known = ContainerState.from_state(recorded).objects
        extra = tuple(m for m in ContainerState.from_state(held).members
                      if m.container not in known)
        return ContainerState(extra).to_state() if extra else None

    def list_owned(self) -> Sequence[OwnedSandbox]:
        self._engine()
        groups: dict[str, OwnedSandbox] = {}
        for box in self.sandboxes.values():
            sandbox_id = box.spec.sandbox_id
            previous = ContainerState.from_state(
                groups[sandbox_id].state) if sandbox_id in groups else ContainerState(())
            members = (*previous.members, Member(LAUNCHER if not previous.members
                                                 else f"extra-{len(previous.members)}",
                                                 box.handle))
            groups[sandbox_id] = OwnedSandbox(sandbox_id, box.spec.owner,
                                              ContainerState(members).to_state())
        return list(groups.values())

    # -- internals ---------------------------------------------------------------------------

    def _engine(self) -> None:
        if not self.engine_up:
            raise EngineUnavailable(
                "The container engine is not available; try again in a minute.",
                detail="FakeBackend.engine_up is False",
            )

    def _members(self, state: BackendState) -> ContainerState:
        found = ContainerState.from_state(state)
        if not found.members:
            raise SandboxNotFound("The sandbox no longer exists.", detail="fake: no members")
        return found

    def _get(self, ref: Ref) -> FakeSandbox:
        handle = _container(ref)
        box = self.sandboxes.get(handle)
        if box is None:
            raise SandboxNotFound("The sandbox no longer exists.", detail=f"fake {handle}")
        return box

    def _now(self) -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _exit(self, box: FakeSandbox, code: int, *, oom_killed: bool) -> None:
        for terminal in self.terminals:
            if terminal.container == box.handle:
                terminal.hang_up()
        box.state = RunState.EXITED
        box.exit_code = code
        box.oom_killed = oom_killed
        box.finished_at = self._now()


class FakeLoopHooks(LoopFilesystems):
    """The host's part of `LoopFilesystems` with volumes as plain directories: "mounting" is
    remembered in memory (read-only too), the size only reported (`_capacity`), never
    enforced. Naming, locking, copying in and removal are the real code. Sizes, ENOSPC and
    remounting have real tests in tests/integration (test_project_volumes.py,
    test_quotas.py)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.mounts: set[Path] = set()
        self.read_only: set[Path] = set()

    def _make_filesystem(self, image: Path, size_mb: int) -> None:
        descriptor = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:  # private, as the real image is
            handle.write(f"{size_mb}\n")

    def _mount(self, image: Path, mountpoint: Path, *, read_only: bool = False) -> None:
        self.mounts.add(mountpoint)
        if read_only:
            self.read_only.add(mountpoint)

    def _remount_read_only(self, mountpoint: Path) -> None:
        self.read_only.add(mountpoint)

    def _unmount(self, mountpoint: Path) -> None:
        self.mounts.discard(mountpoint)
        self.read_only.discard(mountpoint)

    def _is_mounted(self, mountpoint: Path) -> bool:
        return mountpoint in self.mounts

    def _backed_by(self, mountpoint: Path, image: Path) -> bool:
        return True

    def _attached(self, image: Path) -> bool:
        return False


class FakeProjectVolumes(FakeLoopHooks, ProjectVolumes):
    """`ProjectVolumes` whose volumes are plain directories (`FakeLoopHooks`)."""

    def _capacity(self, mountpoint: Path) -> tuple[int, int]:
        used = sum(os.lstat(os.path.join(top, name)).st_size
                   for top, dirs, files in os.walk(mountpoint) for name in dirs + files)
        quota_mb = int((mountpoint.parent / "volume.ext4").read_text())
        return used, quota_mb * 1024 * 1024


class FakeSandboxVolumes(FakeLoopHooks, SandboxVolumes):
    """Each sandbox's workspace and outbox volumes as plain directories (`FakeLoopHooks`),
    each "mounted" at `<id>/workspace` and `<id>/outbox` and shown whole (a fake volume has
    no `lost+found` to hide), so they are where they are without volumes (tests write a
    sandbox's outputs there)."""

    def mountpoint(self, sandbox_id: str, kind: str) -> Path:
        return self._dir(sandbox_id) / kind

    def path(self, sandbox_id: str, kind: str) -> Path:
        return self.mountpoint(sandbox_id, kind)

    def _top_directory(self, mountpoint: Path, name: str) -> Path:
        if os.geteuid() == 0 and mountpoint.stat().st_uid != SANDBOX_UID:
            os.chown(mountpoint, SANDBOX_UID, SANDBOX_GID)
        return mountpoint


def fake_storage(root: Path) -> LocalStorage:
    """A `LocalStorage` under `root` whose sandboxes' volumes are `FakeSandboxVolumes` and
    whose projects are `FakeProjectVolumes` beside it."""
    return LocalStorage(root, projects=FakeProjectVolumes(root.parent / "projects"),
                        volumes=FakeSandboxVolumes(root))
