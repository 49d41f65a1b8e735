"""The audit log as auditors review it: filtered, keyset-paged event lists, event detail,
per-sandbox and per-release timelines, chain status and export. Every read is audited.

Paging walks the primary key (`id < cursor ORDER BY id DESC`), so page N costs the same as
page 1 at any size of log; filters are equalities or prefix ranges on indexed columns.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnClause, func, literal_column, or_
from sqlmodel import Session, col, select

from audit.chain import append, utc_now
from audit.events import AuditAction, EventDraft, Outcome
from audit.keyring import PublicKeyInfo
from audit.models import AuditEvent
from console.core import Caller, Sealroom
from console.models import ReleaseRequest, Sandbox, TerminalSession
from console.services import recordings
from console.services.errors import BadRequest, NotFound

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_TEXT_MAX = 200
_NO_ID = 1 << 62
_LIKELY: ColumnClause[Any] = literal_column("0.99")  # SQLite wants the likelihood as a literal


#: The last word of an action that only reads (a page, a list, a file's view).
READ_VERBS = frozenset({"view", "read", "list"})
#: Actions that only read, derived from the one enumeration: what "hide reads" leaves out
#: (with the completeness net's record of a served GET, `console:request:serve` "GET …").
READ_ACTIONS = tuple(sorted(a.value for a in AuditAction
                            if a.value.rsplit(":", 1)[-1] in READ_VERBS))


def is_read(action: str, target: str = "") -> bool:
    """Whether an event only records a read (for timelines filtered in memory)."""
    return action in READ_ACTIONS or (action == AuditAction.REQUEST_SERVE
                                      and target.startswith("GET "))


@dataclass(frozen=True)
class EventFilter:
    """What an auditor asked for. `action` and `target` ending in `*` or `:` match a prefix;
    `hide_reads` ("1") leaves out the events that only record a read (`READ_ACTIONS`)."""

    actor: str = ""
    action: str = ""
    target: str = ""
    outcome: str = ""
    since: str = ""  # ISO 8601; a bare date means its first instant
    until: str = ""  # ISO 8601; a bare date means its last instant
    hide_reads: str = ""

    def is_empty(self) -> bool:
        return not any(asdict(self).values())

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v}


@dataclass
class EventPage:
    events: list[AuditEvent]
    newer: int | None = None  # cursor for the page of newer events (`after`)
    older: int | None = None  # cursor for the page of older events (`before`)
    filters: dict[str, str] = field(default_factory=dict)


def _timestamp(text: str, *, end: bool) -> str:
    """Normalise a user's time to the stored form (UTC, microseconds, `Z`)."""
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"not a date or time: {text[:40]!r} (use 2026-11-23 or "
                         "2026-11-23T14:05)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end and len(text) <= 10:  # a bare date: the whole day
        moment += timedelta(days=1, microseconds=-1)
    elif end and len(text) <= 16:  # to the minute: the whole minute
        moment += timedelta(minutes=1, microseconds=-1)
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _prefix_bounds(prefix: str) -> tuple[str, str]:
    """[low, high) covering every string that starts with `prefix` (uses the column index)."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _match(query: Any, column: Any, value: str) -> Any:
    if value.endswith(("*", ":")):
        prefix = value.rstrip("*")
        if not prefix:
            return query
        low, high = _prefix_bounds(prefix)
        return query.where(column >= low).where(column < high)
    return query.where(column == value)


def _time_to_ids(session: Session, since: str, until: str) -> tuple[int | None, int | None]:
    """Turn a time range into an id range through the time index. Events are appended under
    the write lock with the current time, so time grows with id (a wall clock stepped back
    could misplace the events of that step)."""
    low = high = None
    if since:
        low = session.exec(select(AuditEvent.id).where(AuditEvent.time >= since)
                           .order_by(col(AuditEvent.time)).limit(1)).first()
        low = low if low is not None else _NO_ID  # nothing that late: an empty range
    if until:
        high = session.exec(select(AuditEvent.id).where(AuditEvent.time <= until)
                            .order_by(col(AuditEvent.time).desc()).limit(1)).first()
        high = high if high is not None else -1  # nothing that early
    return low, high


def _parse_filter(filters: EventFilter) -> EventFilter:
    if filters.outcome and filters.outcome not in {o.value for o in Outcome}:
        raise BadRequest(f"outcome is one of: {', '.join(o.value for o in Outcome)}")
    for name in ("actor", "action", "target"):
        if len(getattr(filters, name)) > _TEXT_MAX:
            raise BadRequest(f"the {name} filter is too long")
    since = _timestamp(filters.since, end=False) if filters.since else ""
    until = _timestamp(filters.until, end=True) if filters.until else ""
    if since and until and since > until:
        raise BadRequest("the time range ends before it starts")
    if filters.hide_reads not in ("", "0", "1"):
        raise BadRequest("hide_reads is 1 (leave out reads) or 0")
    return EventFilter(filters.actor.strip(), filters.action.strip(), filters.target.strip(),
                       filters.outcome, since, until,
                       "1" if filters.hide_reads == "1" else "")


def _queries(session: Session, parsed: EventFilter) -> list[Any]:
    """The filter as queries that each walk an index in id order; their union is the answer.

    An action prefix becomes one query per matching action name (from the one enumeration),
    merged by id: a range over the action index would come out sorted by name and need a
    sort of every match. Time bounds become an id range, found through the time index."""
    query = select(AuditEvent)
    if parsed.actor:
        query = _match(query, AuditEvent.actor, parsed.actor)
    if parsed.target:
        query = _match(query, AuditEvent.target, parsed.target)
    if parsed.outcome:
        query = query.where(AuditEvent.outcome == parsed.outcome)
    if parsed.since or parsed.until:
        low, high = _time_to_ids(session, parsed.since, parsed.until)
        if low is not None:
            query = query.where(col(AuditEvent.id) >= low)
        if high is not None:
            query = query.where(col(AuditEvent.id) <= high)
        # Still exact; hinted as unselective so the planner keeps to the id order.
        if parsed.since:
            query = query.where(func.likelihood(AuditEvent.time >= parsed.since, _LIKELY))
        if parsed.until:
            query = query.where(func.likelihood(AuditEvent.time <= parsed.until, _LIKELY))
    if parsed.hide_reads:
        query = query.where(col(AuditEvent.action).not_in(READ_ACTIONS)).where(
            or_(col(AuditEvent.action) != AuditAction.REQUEST_SERVE.value,
                col(AuditEvent.target).not_like("GET %")))
    if not parsed.action:
        return [query]
    prefix = parsed.action.rstrip("*")
    if parsed.action.endswith(("*", ":")) and prefix:
        names = [a.value for a in AuditAction if a.value.startswith(prefix)]
        return [query.where(AuditEvent.action == name) for name in names]
    return [_match(query, AuditEvent.action, parsed.action)]


def search(core: Sealroom, caller: Caller, filters: EventFilter, *, before: int | None = None,
           after: int | None = None, limit: int = PAGE_SIZE, audit: bool = True) -> EventPage:
    """One page of events, newest first, matching `filters`; audited with the filters used."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise BadRequest(f"limit is between 1 and {MAX_PAGE_SIZE}")
    parsed = _parse_filter(filters)
    newest_first = after is None
    with core.read() as session:
        found: list[AuditEvent] = []
        for query in _queries(session, parsed):
            if newest_first:
                if before is not None:
                    query = query.where(col(AuditEvent.id) < before)
                query = query.order_by(col(AuditEvent.id).desc())
            else:
                query = query.where(col(AuditEvent.id) > after).order_by(col(AuditEvent.id))
            found += session.exec(query.limit(limit + 1)).all()
    found.sort(key=lambda e: e.id or 0, reverse=newest_first)
    more, rows = len(found) > limit, found[:limit]
    if newest_first:
        more_older, more_newer = more, before is not None and bool(rows)
    else:
        rows.reverse()
        more_older, more_newer = bool(rows), more
    if audit:
        core.record(caller.actor, AuditAction.AUDIT_VIEW, target="audit:events",
                    request_id=caller.request_id, filters=parsed.to_dict(),
                    before=before, after=after, shown=len(rows))
    return EventPage(
        events=rows,
        newer=rows[0].id if rows and more_newer else None,
        older=rows[-1].id if rows and more_older else None,
        filters=parsed.to_dict())


def get_event(core: Sealroom, caller: Caller, event_id: int) -> AuditEvent:
    with core.read() as session:
        event = session.get(AuditEvent, event_id)
    if event is None:
        raise NotFound(f"no audit event {event_id}")
    core.record(caller.actor, AuditAction.AUDIT_VIEW, target=f"audit:event:{event_id}",
                request_id=caller.request_id)
    return event


def timeline(core: Sealroom, caller: Caller, kind: str, object_id: str) -> list[AuditEvent]:
    """Everything that happened to one sandbox (its release requests and terminal sessions)
    or one release."""
    if kind not in ("sandbox", "release"):
        raise NotFound("timelines are for a sandbox or a release")
    with core.read() as session:
        targets = [f"{kind}:{object_id}"]
        if kind == "sandbox":
            if session.get(Sandbox, object_id) is None:
                raise NotFound(f"no sandbox {object_id!r}")
            targets += [f"release:{r}" for r in session.exec(select(ReleaseRequest.id).where(
                ReleaseRequest.sandbox_id == object_id)).all()]
            targets += [f"terminal:{t}" for t in session.exec(select(TerminalSession.id).where(
                TerminalSession.sandbox_id == object_id)).all()]
        else:
            release = session.get(ReleaseRequest, object_id)
            if release is None:
                raise NotFound(f"no release request {object_id!r}")
            targets.append(f"sandbox:{release.sandbox_id}")
        events = list(session.exec(select(AuditEvent).where(col(AuditEvent.target).in_(targets))
                                   .order_by(col(AuditEvent.id))).all())
    core.record(caller.actor, AuditAction.AUDIT_VIEW, target=f"{kind}:{object_id}",
                request_id=caller.request_id, timeline=True, shown=len(events))
    return events


def to_dict(event: AuditEvent) -> dict[str, Any]:
    body = event.model_dump()
    body["details"] = json.loads(event.details or "{}")
    return body


def export_lines(core: Sealroom, caller: Caller) -> Iterator[bytes]:
    """The whole chain as JSON Lines for offline verification (`audit.export`). The export is
    recorded first and a checkpoint signed over it, so the export ends at a signature that
    covers its own record."""
    core.record(caller.actor, AuditAction.AUDIT_EXPORT, target="audit:events",
                request_id=caller.request_id)
    checkpoint = core.checkpoint_if_due(force=True)
    return core.audit_export_lines(to_id=checkpoint.tree_size if checkpoint else None)


def record_unaudited_request(core: Sealroom, caller: Caller, method: str, path: str,
                             status: int, permission: str) -> None:
    """Record a served request unless something it did was already recorded under its id."""
    with core.transaction() as session:
        if session.exec(select(AuditEvent.id).where(
                AuditEvent.request_id == caller.request_id).limit(1)).first() is not None:
            return
        outcome = Outcome.OK if status < 400 else Outcome.FAILED if status >= 500 \
            else Outcome.DENIED
        append(session, EventDraft(caller.actor, AuditAction.REQUEST_SERVE,
                                   f"{method} {path}"[:_TEXT_MAX], outcome,
                                   "" if status < 400 else f"HTTP {status}", caller.request_id,
                                   details={"status": status, "permission": permission}))


# --- the chain's integrity -----------------------------------------------------------------


def verify_chain(core: Sealroom, caller: Caller) -> dict[str, Any]:
    """Walk the whole chain now, against the signed checkpoints in the database and in the
    checkpoint file, and hash every terminal recording the chain names (one that is missing
    or changed makes the status not ok, in words naming its session and file); the result
    is itself recorded, so the last verification can be shown at
    a glance without walking again."""
    report = core.verify_audit()
    found = core.audit_checkpoint_list()
    named = recordings.expected(core)
    bad = recordings.problems(core, named)
    problem = report.message if not report.ok else "; ".join(p.message for p in bad) \
        if bad else report.message
    status: dict[str, Any] = {
        "ok": report.ok and not bad, "events": report.events,
        "verified_up_to": report.verified_up_to,
        "head_hash": report.head_hash, "first_bad_event": report.first_bad,
        "kind": report.kind or ("recording" if bad else None), "step": report.step,
        "problem": problem,
        "recordings_checked": len(named),
        "recording_problems": [recordings.problem_dict(p) for p in bad],
        "checkpoints": report.checkpoints, "checkpointed_up_to": report.checkpointed_up_to,
        "unsigned_events": report.unsigned_events,
        "last_checkpoint": found[-1].to_json()["checkpoint"] if found else None,
        "checked_at": utc_now(),
    }
    core.record(caller.actor, AuditAction.AUDIT_VERIFY, target="audit:chain",
                outcome=Outcome.OK if status["ok"] else Outcome.FAILED, reason=problem,
                request_id=caller.request_id, **status)
    return status


def last_verification(core: Sealroom) -> dict[str, Any] | None:
    """The most recent recorded verification (by anyone, or by the supervisor)."""
    with core.read() as session:
        event = session.exec(select(AuditEvent).where(
            AuditEvent.action == AuditAction.AUDIT_VERIFY.value)
            .order_by(col(AuditEvent.id).desc()).limit(1)).first()
    if event is None:
        return None
    details: dict[str, Any] = json.loads(event.details)
    return {**details, "by": event.actor, "event": event.id}


def checkpoints(core: Sealroom, caller: Caller) -> list[dict[str, Any]]:
    return [{**c.to_json()["checkpoint"], "signature": c.signature}
            for c in core.audit_checkpoint_list()]


def public_pem(core: Sealroom, caller: Caller) -> bytes:
    return core.audit_public_pem()


def public_keys(core: Sealroom, caller: Caller) -> list[PublicKeyInfo]:
    """Every audit public key, active first (the console's page of them); audited."""
    keys = core.audit_public_keys()
    core.record(caller.actor, AuditAction.KEY_VIEW, target="key:audit",
                request_id=caller.request_id, keyids=[k.keyid for k in keys])
    return keys


def newest_event_id(core: Sealroom) -> int:
    """The id of the newest event now (the list's first row when unfiltered), 0 if none."""
    with core.read() as session:
        newest = session.exec(select(func.max(AuditEvent.id))).one()
    return int(newest or 0)


OUTCOMES = tuple(o.value for o in Outcome)
