"""Training curves: the metric lines a job prints (`sealroom.log_metrics`), read from the
console's copy of its log when a person asks for them, kept within the policy's caps and paid
for from the disclosure ledger before anyone sees them.

Only numbers and short names of a fixed charset are kept; every other line, and every point
past a cap or the budget, is dropped and counted in an audit event by reason (the console's
words, never the line's text). A point kept once is free to show again.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, insert
from sqlalchemy import select as columns
from sqlmodel import Session, col, select

from audit.chain import append
from audit.events import Actor, AuditAction, EventDraft, Outcome
from console.core import Caller, Sealroom
from console.models import MetricPoint, MetricStream, Sandbox, SandboxLog, SandboxStatus
from console.services import disclosure, sandbox_log
from console.services.sandbox_locks import SandboxLocks
from policies.evaluator import PolicyDecision
from sandbox.training_metrics import MARKER, Dropped, MetricLines, parse_lines
from sandbox.training_metrics import MetricPoint as TrainingPoint

#: Log bytes read per pass while points may still be kept (a pass parses whole lines).
PARSE_BYTES = 1 << 20
#: Log bytes skipped per pass once nothing more may be kept (only metric lines are counted).
SKIP_BYTES = 16 << 20

#: Ingesting one sandbox's metric lines is done by one thread at a time.
_lock = SandboxLocks()


@dataclass(frozen=True)
class Pass:
    """What one reading of new metric lines did."""

    kept: int
    dropped: Counter[str]
    spent: int
    refusal: PolicyDecision | None  # why points were dropped by policy or budget, if they were


def _running_s(record: Sandbox, now: datetime) -> float:
    if not record.started_at:
        return 0.0
    start = datetime.fromisoformat(record.started_at)
    end = datetime.fromisoformat(record.finished_at) if record.finished_at else now
    return max((end - start).total_seconds(), 0.0)


def _window(core: Sealroom, log: SandboxLog, start: int, *, running: bool,
            limit: int) -> tuple[bytes, int]:
    """Whole lines of the log copy from `start`, at most `limit` bytes; returns them and the
    position after them. While the log can still grow, a line without its end waits; a
    line longer than `limit` is passed over whole (its marker counts as malformed)."""
    end = min(log.size, start + limit)
    chunk = sandbox_log.read(core, log, start, end)
    growing = running or not log.complete
    if end < log.size or growing:
        cut = chunk.rfind(b"\n") + 1
        if cut == 0 and len(chunk) < limit:
            return b"", start
        if cut > 0:
            chunk = chunk[:cut]
    return chunk, start + len(chunk)


def _known_series(session: Session, sandbox_id: str) -> set[tuple[int, str]]:
    return {(rank, name) for rank, name in session.exec(
        select(MetricPoint.rank, MetricPoint.name).where(
            MetricPoint.sandbox_id == sandbox_id).distinct()).all()}


def ingest(core: Sealroom, caller: Caller, record: Sandbox) -> Pass:
    """Read the metric lines the log copy gained since the last pass, keep what the policy
    and the caller's disclosure budget allow, drop the rest; audited when anything was kept
    or dropped. The log copy is brought up to date first (outside any transaction)."""
    running = not SandboxStatus(record.status).terminal
    state = json.loads(record.backend_state or "{}")
    log = sandbox_log.current(core, record.id, state if isinstance(state, dict) else {},
                              running=running and bool(state))
    with _lock(record.id):
        return _ingest_locked(core, caller, record, log, running=running)


def _ingest_locked(core: Sealroom, caller: Caller, record: Sandbox, log: SandboxLog, *,
                   running: bool) -> Pass:
    metrics = core.policy.metrics
    with core.read() as session:
        stream = session.get(MetricStream, record.id) or MetricStream(sandbox_id=record.id)
    start = max(stream.position, log.base)
    if start >= log.size:
        return Pass(0, Counter(), 0, None)
    decision, room, series_room = core.evaluator.metrics_room(
        shown_points=stream.points, series=stream.series,
        running_s=_running_s(record, datetime.now(UTC)))
    if not metrics.enabled:
        return Pass(0, Counter(), 0, decision)
    chunk, end = _window(core, log, start, running=running,
                         limit=PARSE_BYTES if room > 0 else SKIP_BYTES)
    if end == start:
        return Pass(0, Counter(), 0, None)
    found = parse_lines(chunk, ranks=record.ranks, stop_after=room) if room > 0 \
        else MetricLines(dropped=Counter({Dropped.RATE.value: chunk.count(MARKER)}))
    if room <= 0 and decision.rule == "metrics.max_points":
        found.dropped[Dropped.POINTS.value] = found.dropped.pop(Dropped.RATE.value, 0)
    with core.transaction() as session:
        known = _known_series(session, record.id)
        kept, refusal = _within_caps(found, known, room, series_room, decision)
        paid, spent, budget = _pay(session, core, caller, record.id, f"{start:012d}",
                                   _costs(kept, known, metrics.bytes_per_point))
        if paid < len(kept):
            found.dropped[Dropped.BUDGET.value] += len(kept) - paid
            refusal = budget
            kept = kept[:paid]
        if kept:  # one executemany: building an ORM object per point is most of the cost
            session.execute(insert(MetricPoint), [
                {"sandbox_id": record.id, "rank": p.rank, "name": p.name, "step": p.step,
                 "value": p.value} for p in kept])
        dropped = Counter({k: v for k, v in found.dropped.items() if v})
        stream.position = end
        stream.points += len(kept)
        stream.series = len(known | {(p.rank, p.name) for p in kept})
        stream.spent += spent
        if found.total_steps is not None:
            stream.total_steps = found.total_steps
        stream.dropped = json.dumps(dict(Counter(json.loads(stream.dropped)) + dropped),
                                    sort_keys=True)
        session.merge(stream)
        _audit(session, caller, record.id, kept=len(kept), spent=spent, dropped=dropped,
               refusal=refusal, span=(start, end), policy_version=decision.policy_version)
    return Pass(len(kept), dropped, spent, refusal)


def _within_caps(found: MetricLines, known: set[tuple[int, str]], room: int,
                 series_room: int, decision: PolicyDecision) -> tuple[
                     list[TrainingPoint], PolicyDecision | None]:
    """The points the policy's caps let through, in order; the others are counted in
    `found.dropped`. Returns them and the decision that dropped some, if any did."""
    kept: list[TrainingPoint] = []
    new: set[tuple[int, str]] = set()
    refusal: PolicyDecision | None = None
    for point in found.points:
        series = (point.rank, point.name)
        if series not in known and series not in new:
            if len(new) >= series_room:
                found.dropped[Dropped.SERIES.value] += 1
                refusal = refusal or PolicyDecision(
                    False, "metrics.max_series", "more series than the policy allows",
                    decision.policy_version)
                continue
            new.add(series)
        if len(kept) >= room:
            reason = Dropped.POINTS if decision.rule == "metrics.max_points" else Dropped.RATE
            found.dropped[reason.value] += 1
            continue
        kept.append(point)
    if found.dropped[Dropped.RATE.value] or found.dropped[Dropped.POINTS.value]:
        refusal = PolicyDecision(False, decision.rule, "more points than the policy allows "
                                 "so far", decision.policy_version)
    return kept, refusal


def _costs(kept: list[TrainingPoint], known: set[tuple[int, str]],
           bytes_per_point: int) -> list[int]:
    """What each point costs: `bytes_per_point`, and the first point of a new series its
    name's length too (the name is sandbox-chosen text shown to a person)."""
    costs, named = [], set(known)
    for point in kept:
        series = (point.rank, point.name)
        costs.append(bytes_per_point + (0 if series in named else len(point.name)))
        named.add(series)
    return costs


def _pay(session: Session, core: Sealroom, caller: Caller, sandbox_id: str, key: str,
         costs: list[int]) -> tuple[int, int, PolicyDecision]:
    """Charge the ledger for as many of the points (in order) as the budgets allow; returns
    how many are paid for, the bytes charged and the decision."""
    wanted = sum(costs)
    if not wanted:
        return 0, 0, core.evaluator.disclosure(sandbox_spent=0, user_day_spent=0, wanted=0)[0]
    charged, decision = disclosure.reserve(
        session, core.evaluator, sandbox_id=sandbox_id, user=caller.name,
        channel=disclosure.Channel.METRICS, key=key, wanted=wanted)
    paid = used = 0
    for cost in costs:
        if used + cost > charged:
            break
        paid, used = paid + 1, used + cost
    disclosure.settle(session, sandbox_id=sandbox_id, channel=disclosure.Channel.METRICS,
                      key=key, used=used)
    return paid, used, decision


def _audit(session: Session, caller: Caller, sandbox_id: str, *, kept: int, spent: int,
           dropped: Counter[str], refusal: PolicyDecision | None, span: tuple[int, int],
           policy_version: int) -> None:
    target = f"sandbox:{sandbox_id}"
    if kept:
        append(session, EventDraft(caller.actor, AuditAction.METRICS_VIEW, target,
                                   request_id=caller.request_id, details={
                                       "points": kept, "spent": spent,
                                       "log_span": list(span),
                                       "sandbox_spent": disclosure.sandbox_total(
                                           session, sandbox_id),
                                       "policy_version": policy_version}))
    if dropped:
        rule = refusal.rule if refusal is not None else "metrics.format"
        reason = refusal.reason if refusal is not None else \
            "metric lines or points that are not a short name and a finite number"
        # The platform drops, whoever's view made it read the log: recorded as `system`,
        # with the viewer named in the details and the request id tying the two together.
        append(session, EventDraft(Actor.system("metrics"), AuditAction.METRICS_DROP, target,
                                   Outcome.DENIED, reason, caller.request_id, details={
                                       "viewer": caller.name,
                                       "dropped": dict(sorted(dropped.items())),
                                       "rule": rule, "log_span": list(span),
                                       "policy_version": policy_version}))


# --- what a person sees ---------------------------------------------------------------------


def _progress(record: Sandbox, stream: MetricStream, step: int | None) -> dict[str, object] | None:
    if stream.total_steps is None:
        return None
    done = min(step or 0, stream.total_steps)
    elapsed = _running_s(record, datetime.now(UTC))
    remaining = elapsed * (stream.total_steps - done) / done if done and \
        not SandboxStatus(record.status).terminal else None
    return {"step": done, "total_steps": stream.total_steps,
            "fraction": done / stream.total_steps, "elapsed_s": round(elapsed, 1),
            "remaining_s": None if remaining is None else round(remaining, 1)}


def series(core: Sealroom, caller: Caller, record: Sandbox, *,
           since: int = 0) -> dict[str, object]:
    """The sandbox's curves after reading what is new: points with an id past `since` (the
    `cursor` of an earlier answer), grouped by name and rank; progress when the job declared
    its total steps; what was dropped and why. Only numbers, the console's words and names
    already paid for."""
    done = ingest(core, caller, record)
    with core.read() as session:
        stream = session.get(MetricStream, record.id) or MetricStream(sandbox_id=record.id)
        rows = session.execute(columns(col(MetricPoint.id), col(MetricPoint.name),
                                       col(MetricPoint.rank), col(MetricPoint.step),
                                       col(MetricPoint.value))
                               .where(col(MetricPoint.sandbox_id) == record.id)
                               .where(col(MetricPoint.id) > since)
                               .order_by(col(MetricPoint.id))).all()
        step = session.exec(select(func.max(MetricPoint.step)).where(
            MetricPoint.sandbox_id == record.id)).one()
        log = session.get(SandboxLog, record.id)
    grouped: dict[tuple[str, int], list[list[float]]] = {}
    for _, name, rank, step_, value in rows:
        grouped.setdefault((name, rank), []).append([step_, value])
    cursor = max([since, *(row[0] or 0 for row in rows)])
    refusal = done.refusal
    return {
        "sandbox": record.id, "status": record.status, "ranks": record.ranks,
        "cursor": cursor,
        "series": [{"name": name, "rank": rank, "points": points}
                   for (name, rank), points in sorted(grouped.items())],
        "points": stream.points, "series_count": stream.series, "spent": stream.spent,
        "dropped": json.loads(stream.dropped),
        "progress": _progress(record, stream, step),
        "more": log is not None and stream.position < log.size and bool(done.kept or done.dropped),
        "refused": None if refusal is None else {"reason": refusal.reason,
                                                 "rule": refusal.rule},
        "limits": _limits(core),
    }


def _limits(core: Sealroom) -> dict[str, object]:
    metrics = core.policy.metrics
    return {"enabled": metrics.enabled, "points_per_minute": metrics.points_per_minute,
            "max_points": metrics.max_points, "max_series": metrics.max_series,
            "bytes_per_point": metrics.bytes_per_point}
