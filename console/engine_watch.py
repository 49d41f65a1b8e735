"""What the supervisor has seen of the container engine: when it stopped answering and when
it came back (so a sandbox the engine's restart ended is told apart from one whose job
failed), and the removals that failed meanwhile, retried on the next pass instead of at the
console's next start."""

from __future__ import annotations

import threading
from collections import deque
from datetime import datetime, timedelta

from sandbox.backend import BackendState

#: A container stopped this close to an outage is taken to have been stopped by it.
SLACK = timedelta(seconds=10)
#: An engine stops its containers (each within its stop timeout) before it stops, then
#: starts again: a container that ended this long before the engine's start ended with it.
RESTART_WINDOW = timedelta(seconds=60)
#: How long a SIGTERM/SIGKILL exit waits before it is taken as the job's own: an engine
#: shutting down stops its containers while it still answers, then stops answering.
SETTLE_S = 3.0


class EngineWatch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_since: datetime | None = None
        self._outages: deque[tuple[datetime, datetime]] = deque(maxlen=32)
        self._removals: dict[str, BackendState] = {}
        self._exits_seen: dict[str, datetime] = {}
        self.settle_s = SETTLE_S

    def down(self, now: datetime) -> bool:
        """The engine does not answer; True the first time of an outage."""
        with self._lock:
            if self.down_since is not None:
                return False
            self.down_since = now
            return True

    def up(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The engine answers; the outage that just ended, if one had begun."""
        with self._lock:
            if self.down_since is None:
                return None
            outage = (self.down_since, now)
            self._outages.append(outage)
            self.down_since = None
            return outage

    def covers(self, moment: datetime | None, engine_started: datetime | None = None) -> bool:
        """Whether `moment` (a container's end) falls in or beside an outage seen, or just
        before the engine now answering started (a restart quicker than a supervisor pass)."""
        if moment is None:
            return False
        if engine_started is not None and \
                engine_started - RESTART_WINDOW <= moment <= engine_started + SLACK:
            return True
        with self._lock:
            windows = [*self._outages, *([(self.down_since, moment)] if self.down_since
                                         else [])]
        return any(start - SLACK <= moment <= end + SLACK for start, end in windows)

    def settled(self, sandbox_id: str, now: datetime) -> bool:
        """Whether a stop-like exit of `sandbox_id`, first seen now or before, has been seen
        for `settle_s` with the engine answering throughout."""
        with self._lock:
            first = self._exits_seen.setdefault(sandbox_id, now)
            if now - first >= timedelta(seconds=self.settle_s):
                del self._exits_seen[sandbox_id]
                return True
            return False

    def remove_later(self, sandbox_id: str, state: BackendState) -> None:
        with self._lock:
            self._removals[sandbox_id] = state

    def removals(self) -> dict[str, BackendState]:
        with self._lock:
            return dict(self._removals)

    def removed(self, sandbox_id: str) -> None:
        with self._lock:
            self._removals.pop(sandbox_id, None)
