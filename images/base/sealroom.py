"""Training metrics for the Sealroom console: ``from sealroom import log_metrics``.

Each call prints one line, ``SEALROOM-METRIC {json}``, to standard output in one write. The
console reads these lines from the sandbox's log, keeps finite numbers under short names
(letters, digits and ``_ . / : -``, at most 32 characters), and draws them as live curves on
the sandbox page. Whatever a curve shows spends the sandbox's disclosure budget, so the policy
caps how many points and series a run may show and how fast; the rest is dropped and audited.

    from sealroom import declare_total_steps, log_metrics, save_metrics

    declare_total_steps(EPOCHS)          # the sandbox page shows progress and an estimate
    for epoch in range(EPOCHS):
        ...
        log_metrics(epoch, loss=loss, accuracy=accuracy)
    save_metrics("/outbox/metrics.json")  # the last values, as a file a release can carry

The rank of an MPI/Horovod process is found in the environment (``OMPI_COMM_WORLD_RANK``,
``HOROVOD_RANK``, ``RANK``) unless given. Plain ``print`` keeps working beside it.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Any

__all__ = ["declare_total_steps", "log_metrics", "save_metrics"]

#: What starts a metric line; the console reads nothing else as a metric.
PREFIX = "SEALROOM-METRIC "
#: What the console accepts as a metric name.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./:-]{0,31}")

_last: dict[str, float] = {}


def _rank(rank: int | None) -> int:
    if rank is not None:
        return int(rank)
    for variable in ("OMPI_COMM_WORLD_RANK", "HOROVOD_RANK", "PMI_RANK", "RANK"):
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 0


def _emit(record: dict[str, Any]) -> None:
    line = (PREFIX + json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
    sys.stdout.flush()  # what was printed before comes before
    os.write(sys.stdout.fileno(), line)  # one write: never interleaved with another rank's


def log_metrics(step: int, *, rank: int | None = None, **values: float) -> None:
    """Record `values` (name=number) at training step `step`. Names must match ``NAME`` and
    values be finite numbers: anything else raises ValueError here rather than being
    dropped by the console."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError("step must be a whole number, 0 or more")
    numbers: dict[str, float] = {}
    for name, value in values.items():
        if not NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r} is not 1-32 letters, digits or _ . / : -")
        if isinstance(value, bool | str | bytes):
            raise ValueError(f"metric {name!r} must be a number, not {type(value).__name__}")
        number = float(value)  # a torch or numpy scalar becomes a float here
        if not math.isfinite(number):
            raise ValueError(f"metric {name!r} is {number}, not a finite number")
        numbers[name] = number
    if not numbers:
        return
    _emit({"step": step, "rank": _rank(rank), "values": numbers})
    if _rank(rank) == 0:
        _last.update(numbers)


def declare_total_steps(total: int) -> None:
    """Say how many steps the run will take, so the console can show progress."""
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError("total must be a whole number, 1 or more")
    _emit({"total_steps": total, "rank": _rank(None)})


def save_metrics(path: str = "/outbox/metrics.json") -> dict[str, float]:
    """Write rank 0's last value of each metric as a JSON object: the metrics file a release
    request can carry (the gate checks it like any metrics file). Returns what it wrote."""
    final = dict(sorted(_last.items()))
    with open(path, "w", encoding="ascii") as handle:
        json.dump(final, handle, indent=2, allow_nan=False)
        handle.write("\n")
    return final
