"""A sandbox's running figures as the console composes them: time used against its limit
(from the console's own record) and CPU and memory use (from the engine's counters, read
through the backend).

These are numbers the console writes, not bytes the sandbox wrote, so they are shown without
spending the disclosure budget. A sandbox can still steer its own CPU and memory use, so the
engine's figures are coarse (`STEPS` steps of each limit) and read at most once every
`SAMPLE_S` per sandbox, whoever asks: what such steering could carry stays a few bits a
sample.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from console.core import Sealroom
from console.models import Sandbox, SandboxStatus
from console.services.sandboxes import state_of
from sandbox.backend import ResourceUsage
from sandbox.errors import SandboxError

log = logging.getLogger(__name__)

#: CPU and memory are shown in steps of 1/STEPS of their limit (5 %).
STEPS = 20
#: The engine is asked about one sandbox at most this often (seconds); answers in between
#: repeat the last figures.
SAMPLE_S = 5.0


@dataclass(frozen=True)
class _Sample:
    usage: ResourceUsage
    taken: datetime
    figures: dict[str, object]


_samples: dict[str, _Sample] = {}
_lock = threading.Lock()


def _parse(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp) if stamp else None


def stepped(value: float, limit: float) -> float:
    """`value` to the nearest 1/STEPS of `limit`, within 0 and `limit`."""
    if limit <= 0:
        return 0.0
    step = limit / STEPS
    return min(max(round(value / step), 0), STEPS) * step


def figures(core: Sealroom, record: Sandbox, *, now: datetime | None = None,
            ask_engine: bool = True) -> dict[str, object]:
    """Elapsed and remaining time, and (while it runs) CPU and memory use with their limits:
    every figure the console's own. `None` where a figure does not apply or is not known.
    Without `ask_engine` (a page being rendered), CPU and memory are the last reading's."""
    now = now or datetime.now(UTC)
    started, finished = _parse(record.started_at), _parse(record.finished_at)
    elapsed = None if started is None else max(((finished or now) - started).total_seconds(),
                                               0.0)
    running = record.status == SandboxStatus.RUNNING
    remaining = max(record.timeout_s - elapsed, 0.0) \
        if elapsed is not None and running else None
    members = max(record.ranks, 1)  # each member has the limits
    shown: dict[str, object] = {
        "elapsed_s": None if elapsed is None else round(elapsed, 1),
        "time_limit_s": record.timeout_s,
        "remaining_s": None if remaining is None else round(remaining, 1),
        "cpus_used": None, "cpus_limit": round(record.cpus * members, 2),
        "memory_mb_used": None, "memory_mb_limit": record.memory_mb * members,
        "sampled_at": None,
    }
    if not running or started is None:
        with _lock:
            _samples.pop(record.id, None)
    elif ask_engine:
        shown.update(_engine_figures(core, record, started, now))
    else:
        with _lock:
            last = _samples.get(record.id)
        shown.update(last.figures if last is not None else {})
    return shown


def _engine_figures(core: Sealroom, record: Sandbox, started: datetime,
                    now: datetime) -> dict[str, object]:
    with _lock:
        last = _samples.get(record.id)
    if last is not None and (now - last.taken).total_seconds() < SAMPLE_S:
        return last.figures
    state = state_of(record)
    try:
        usage = core.backend.usage(state) if state else None
    except SandboxError as exc:
        log.info("could not read the resource use of %s: %s", record.id, exc.detail)
        return last.figures if last is not None else {}
    if usage is None:
        return {}
    # CPUs busy: over the time since the last sample, or since the start for the first one.
    if last is not None and usage.read_at > last.usage.read_at \
            and usage.cpu_ns >= last.usage.cpu_ns:
        cpu_ns, since = usage.cpu_ns - last.usage.cpu_ns, last.usage.read_at
    else:
        cpu_ns, since = usage.cpu_ns, started
    seconds = (usage.read_at - since).total_seconds()
    busy = cpu_ns / 1e9 / seconds if seconds > 0 else 0.0
    members = max(record.ranks, 1)
    shown: dict[str, object] = {
        "cpus_used": round(stepped(busy, record.cpus * members), 2),
        "memory_mb_used": round(stepped(usage.memory_bytes / (1 << 20),
                                        record.memory_mb * members)),
        "sampled_at": now.isoformat(timespec="seconds"),
    }
    with _lock:
        _samples[record.id] = _Sample(usage, now, shown)
    return shown
