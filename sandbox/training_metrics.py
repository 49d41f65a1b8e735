"""Reading training metrics out of a sandbox's log: the lines `sealroom.log_metrics` prints
(images/base/sealroom.py), ``SEALROOM-METRIC {"step":…,"rank":…,"values":{name: number}}``.

Pure parsing: every line becomes points or a reason it was dropped, from a fixed list, never
with the line's own text. Policy (caps, rate, budget) is the console's.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MARKER", "MAX_LINE_BYTES", "NAME", "Dropped", "MetricLines", "MetricPoint",
           "parse_lines"]

MARKER = b"SEALROOM-METRIC "
#: A metric name: what the helper allows, and the gate's metrics files read as a key.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./:-]{0,31}")
#: A longer line is dropped unread (the helper's lines are far shorter).
MAX_LINE_BYTES = 4096
#: Steps are whole numbers a float64 holds exactly.
MAX_STEP = 2**53
#: A line of mpirun's tagged output: `[1,R]<stdout>:` then the rank's bytes.
_TAGGED = re.compile(rb"\[\d+,(\d+)\]<stdout>:")


class Dropped(enum.StrEnum):
    """Why a metric line or point was not kept, in the console's words."""

    MALFORMED = "malformed"  # not the helper's JSON shape, or too long
    NAME = "name"  # not 1-32 of [A-Za-z0-9_./:-]
    VALUE = "value"  # not a finite number
    RANK = "rank"  # no such rank in this sandbox
    RATE = "rate"  # more points than the policy's rate allows so far
    SERIES = "series"  # more series (name × rank) than the policy allows
    POINTS = "points"  # more points than the policy allows for one sandbox
    BUDGET = "budget"  # the disclosure budget is spent


@dataclass(frozen=True)
class MetricPoint:
    rank: int
    name: str
    step: int
    value: float


@dataclass
class MetricLines:
    """What a run of log lines held: points in order, a declared total of steps, and counts
    of what was dropped by reason."""

    points: list[MetricPoint] = field(default_factory=list)
    total_steps: int | None = None
    dropped: Counter[str] = field(default_factory=Counter)


def _whole(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # a JSON integer past a float64's range
        return None
    return number if math.isfinite(number) else None


def _record(payload: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(payload)
    except ValueError:  # also invalid UTF-8, and NaN/Infinity spelled out
        return None
    return record if isinstance(record, dict) else None


def _lines(chunk: bytes) -> Iterator[tuple[int | None, bytes]]:
    """(rank named by an mpirun tag or None, the payload after the marker) of each metric
    line in `chunk`, a run of whole lines."""
    start = 0
    while True:
        found = chunk.find(MARKER, start)
        if found < 0:
            return
        line_start = chunk.rfind(b"\n", 0, found) + 1
        end = chunk.find(b"\n", found)
        end = len(chunk) if end < 0 else end
        start = end + 1
        head = chunk[line_start:found]
        tag = _TAGGED.fullmatch(head)
        if head and tag is None:
            continue  # the marker in the middle of other output is not a metric line
        if end - line_start > MAX_LINE_BYTES:
            yield None, b""
            continue
        yield (int(tag.group(1)) if tag else None), chunk[found + len(MARKER):end].rstrip(b"\r")


def parse_lines(chunk: bytes, *, ranks: int, stop_after: int | None = None) -> MetricLines:
    """The metric lines of `chunk` for a sandbox of `ranks` ranks. Past `stop_after` points,
    metric lines are counted as dropped for `Dropped.RATE` without being read."""
    found = MetricLines()
    lines = _lines(chunk)
    for tag_rank, payload in lines:
        if stop_after is not None and len(found.points) >= stop_after:
            found.dropped[Dropped.RATE] += 1 + sum(1 for _ in lines)
            break
        record = _record(payload) if payload else None
        if record is None:
            found.dropped[Dropped.MALFORMED] += 1
            continue
        rank = tag_rank if tag_rank is not None else _whole(record.get("rank", 0), 0, 1 << 16)
        if rank is None or rank >= ranks:
            found.dropped[Dropped.RANK] += 1
            continue
        if "total_steps" in record:
            total = _whole(record["total_steps"], 1, MAX_STEP)
            if total is None or set(record) - {"total_steps", "rank"}:
                found.dropped[Dropped.MALFORMED] += 1
            else:
                found.total_steps = total
            continue
        step, values = _whole(record.get("step"), 0, MAX_STEP), record.get("values")
        if step is None or not isinstance(values, dict) or not values \
                or set(record) - {"step", "rank", "values"}:
            found.dropped[Dropped.MALFORMED] += 1
            continue
        for name, value in values.items():
            number = _finite(value)
            if not NAME.fullmatch(name):
                found.dropped[Dropped.NAME] += 1
            elif number is None:
                found.dropped[Dropped.VALUE] += 1
            else:
                found.points.append(MetricPoint(rank, name, step, number))
    return found
