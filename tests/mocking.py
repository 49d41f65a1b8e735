"""Test doubles: `FakeBackend`, an in-memory `Backend` that stands in for the real engine in
fast, hermetic unit tests of the console (registered as `SEALROOM_BACKEND=fake` by
tests/conftest.py; the product itself knows only `docker`).

It mirrors what `DockerBackend` was observed to do on a real engine (exit codes, OOM, stop,
idempotent stop/remove, lost containers, log cursors and rotation); each of those behaviours
has a real-engine test too (tests/integration/test_docker_backend.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sandbox.backend import LogChunk, OwnedSandbox, RunState, SandboxStatus
from sandbox.errors import EngineUnavailable, SandboxNotFound
from sandbox.spec import SandboxSpec

#: Exit code of a sandbox stopped while running: SIGTERM through docker-init (128 + 15).
STOPPED_EXIT_CODE = 143
#: Exit code of a sandbox whose main process the kernel OOM-killed (128 + SIGKILL).
OOM_EXIT_CODE = 137


def _exit_code(code: int | None, oom_killed: bool) -> int:
    if code is not None:
        return code
    return OOM_EXIT_CODE if oom_killed else 0


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


@dataclass
class FakeBackend:
    """A `Backend` held in memory. Script outcomes per sandbox id before `create`, or per
    handle after; `vanish` a handle to simulate a container removed behind the console's back.
    """

    engine_up: bool = True
    default_outcome: ScriptedOutcome = field(default_factory=ScriptedOutcome)
    created_specs: list[SandboxSpec] = field(default_factory=list)
    sandboxes: dict[str, FakeSandbox] = field(default_factory=dict)
    _by_sandbox_id: dict[str, ScriptedOutcome] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- scripting ---------------------------------------------------------------------------

    def script(self, sandbox_id: str, outcome: ScriptedOutcome) -> None:
        """What the sandbox with this id will do when created and started later."""
        self._by_sandbox_id[sandbox_id] = outcome

    def script_handle(self, handle: str, outcome: ScriptedOutcome) -> None:
        """Change what an already created sandbox does when (next) started."""
        self._get(handle).outcome = outcome

    def finish(
        self, handle: str, *, exit_code: int | None = None, oom_killed: bool = False
    ) -> None:
        """End a running sandbox as if its command had exited."""
        box = self._get(handle)
        if box.state is RunState.RUNNING:
            self._exit(box, _exit_code(exit_code, oom_killed), oom_killed=oom_killed)

    def vanish(self, handle: str) -> None:
        """Drop a sandbox without telling anyone, like `docker rm -f` by an operator."""
        self.sandboxes.pop(handle, None)

    def emit(self, handle: str, data: bytes) -> None:
        """The sandbox writes more output."""
        self._get(handle).written.append(data)

    def rotate(self, handle: str) -> None:
        """The engine rotates the log: everything written so far is gone from `logs`."""
        box = self._get(handle)
        box.rotated = len(box.frames())

    def handle_of(self, sandbox_id: str) -> str:
        for box in self.sandboxes.values():
            if box.spec.sandbox_id == sandbox_id:
                return box.handle
        raise KeyError(sandbox_id)

    # -- Backend -----------------------------------------------------------------------------

    def ping(self) -> None:
        self._engine()

    def create(self, spec: SandboxSpec) -> str:
        self._engine()
        handle = f"fake{next(self._ids):060x}"
        outcome = self._by_sandbox_id.get(spec.sandbox_id, self.default_outcome)
        self.sandboxes[handle] = FakeSandbox(handle=handle, spec=spec, outcome=outcome)
        self.created_specs.append(spec)
        return handle

    def start(self, handle: str) -> None:
        self._engine()
        box = self._get(handle)
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

    def poll(self, handle: str) -> SandboxStatus:
        self._engine()
        box = self.sandboxes.get(handle)
        return SandboxStatus(state=RunState.MISSING) if box is None else box.status()

    def logs(self, handle: str, *, tail: int | None = None) -> bytes:
        self._engine()
        box = self._get(handle)
        output = b"".join(box.frames()[box.rotated:])
        if tail is None:
            return output
        lines = output.splitlines(keepends=True)
        return b"".join(lines[-tail:]) if tail > 0 else b""

    def logs_since(self, handle: str, cursor: str = "", *,
                   max_bytes: int = 16 << 20) -> LogChunk:
        """The cursor counts writes, as the real engine's timestamps order them."""
        self._engine()
        box = self._get(handle)
        frames = box.frames()
        done = max(int(cursor or 0), box.rotated)
        taken: list[bytes] = []
        size = 0
        while done < len(frames) and size < max_bytes:
            taken.append(frames[done])
            size += len(frames[done])
            done += 1
        return LogChunk(b"".join(taken), str(done))

    def stop(self, handle: str, *, timeout_s: int = 10) -> None:
        self._engine()
        box = self.sandboxes.get(handle)
        if box is not None and box.state is RunState.RUNNING:
            self._exit(box, STOPPED_EXIT_CODE, oom_killed=False)

    def remove(self, handle: str) -> None:
        self._engine()
        self.sandboxes.pop(handle, None)

    def list_owned(self) -> Sequence[OwnedSandbox]:
        self._engine()
        return [
            OwnedSandbox(sandbox_id=b.spec.sandbox_id, owner=b.spec.owner, handle=b.handle)
            for b in self.sandboxes.values()
        ]

    # -- internals ---------------------------------------------------------------------------

    def _engine(self) -> None:
        if not self.engine_up:
            raise EngineUnavailable(
                "The container engine is not available; try again in a minute.",
                detail="FakeBackend.engine_up is False",
            )

    def _get(self, handle: str) -> FakeSandbox:
        box = self.sandboxes.get(handle)
        if box is None:
            raise SandboxNotFound("The sandbox no longer exists.", detail=f"fake {handle}")
        return box

    def _now(self) -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _exit(self, box: FakeSandbox, code: int, *, oom_killed: bool) -> None:
        box.state = RunState.EXITED
        box.exit_code = code
        box.oom_killed = oom_killed
        box.finished_at = self._now()
