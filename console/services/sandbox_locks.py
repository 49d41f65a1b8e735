"""Per-sandbox locks for work a console process must not do twice at once for one sandbox."""

from __future__ import annotations

import threading


class SandboxLocks:
    """One lock per sandbox id, made on first use; each user of the class keeps its own set."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def __call__(self, sandbox_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(sandbox_id, threading.Lock())
