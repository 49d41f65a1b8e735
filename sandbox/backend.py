"""The lifecycle contract every sandbox backend implements.

Small on purpose, like JupyterHub's Spawner: start, poll, logs, stop, remove, list owned.
Stop and remove are safe to repeat. Backends select what they own by labels, never names.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sandbox.spec import SandboxSpec

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
class SandboxStatus:
    """What the backend observes about one sandbox right now."""

    state: RunState
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    error: str = ""


@dataclass(frozen=True)
class LogChunk:
    """Log output written after a cursor, and the cursor after it. The cursor is the
    backend's own (opaque) position: it survives the engine rotating its log files."""

    data: bytes
    cursor: str


@dataclass(frozen=True)
class OwnedSandbox:
    """A sandbox the engine holds for this installation, found by label."""

    sandbox_id: str
    owner: str
    handle: str


@runtime_checkable
class Backend(Protocol):
    """Runs sandboxes. `handle` is the backend's own id (a container id for Docker)."""

    def ping(self) -> None:
        """Raise `EngineUnavailable` when the engine does not answer."""

    def create(self, spec: SandboxSpec) -> str:
        """Create (not start) the sandbox; return its handle."""

    def start(self, handle: str) -> None: ...

    def poll(self, handle: str) -> SandboxStatus: ...

    def logs(self, handle: str, *, tail: int | None = None) -> bytes: ...

    def logs_since(self, handle: str, cursor: str = "", *,
                   max_bytes: int = 16 << 20) -> LogChunk:
        """Output written after `cursor` ("" for the start), at most about `max_bytes`."""

    def stop(self, handle: str, *, timeout_s: int = 10) -> None:
        """Stop; a missing or already stopped sandbox counts as done."""

    def remove(self, handle: str) -> None:
        """Remove; a missing sandbox counts as done."""

    def list_owned(self) -> Sequence[OwnedSandbox]:
        """Every sandbox of this installation the engine knows, running or not."""
