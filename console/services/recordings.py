"""Terminal sessions as auditors find and replay them: the session list and detail, the
recording served for replay or download, and the check that every recording is still the one
whose hash the audit chain took when its session ended.

Two kinds of view, by the one rule. The list and the detail are text the console composed
itself (ids, names, times, its own words for why a session ended, byte counts, hashes): no
sandbox byte. A replay re-shows a recording's output, which is sandbox bytes, but bytes that
were already charged to the disclosure ledger when the gateway sent them to the engineer's
terminal: a replay spends nothing new, and every one is audited (`audit:recording:view`), the
event committed before the file is served.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from audit.chain import append
from audit.events import AuditAction, EventDraft
from audit.models import AuditEvent
from audit.recordings import ExpectedRecording, RecordingProblem, check_recordings
from console.core import Caller, Sealroom
from console.models import TerminalSession
from console.permissions import Permission, role_has
from console.services.errors import BadRequest, Forbidden, NotFound

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MEDIA_TYPE = "application/x-asciicast"
_TEXT_MAX = 200


@dataclass(frozen=True)
class RecordingState:
    """A recording against the chain: "intact", "changed", "missing" (also: the session
    ended with none), or "open" (not ended, so the chain holds no hash for it yet)."""

    state: str
    chain_sha256: str  # what the chain's `sandbox:terminal:end` event holds ("" while open)
    message: str


@dataclass
class SessionPage:
    sessions: list[TerminalSession]
    older: str | None  # cursor for the next (older) page
    filters: dict[str, str]


def _require(caller: Caller) -> None:
    if not role_has(caller.role, Permission.AUDIT_READ):
        raise Forbidden(f"your role may not {Permission.AUDIT_READ}")


def _cursor(text: str) -> tuple[str, str]:
    started_at, _, session_id = text.partition("|")
    if not started_at or not session_id.startswith("ssh-"):
        raise BadRequest("not a cursor from a session listing")
    return started_at, session_id


def sessions(core: Sealroom, caller: Caller, *, user: str | None = None,
             sandbox: str | None = None, limit: int = PAGE_SIZE,
             cursor: str | None = None) -> SessionPage:
    """Sessions newest first (by start, then id), optionally one user's or one sandbox's;
    `cursor` is the `older` of the page before. Console-composed text only; audited."""
    _require(caller)
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise BadRequest(f"limit is between 1 and {MAX_PAGE_SIZE}")
    filters = {k: v.strip() for k, v in (("user", user or ""), ("sandbox", sandbox or ""))
               if v.strip()}
    if any(len(v) > _TEXT_MAX for v in filters.values()):
        raise BadRequest("a filter is too long")
    query = select(TerminalSession)
    if "user" in filters:
        query = query.where(TerminalSession.user == filters["user"])
    if "sandbox" in filters:
        query = query.where(TerminalSession.sandbox_id == filters["sandbox"])
    if cursor:
        started_at, session_id = _cursor(cursor)
        query = query.where(or_(col(TerminalSession.started_at) < started_at,
                                and_(col(TerminalSession.started_at) == started_at,
                                     col(TerminalSession.id) < session_id)))
    query = query.order_by(col(TerminalSession.started_at).desc(),
                           col(TerminalSession.id).desc()).limit(limit + 1)
    with core.read() as session:
        rows = list(session.exec(query).all())
    more, rows = len(rows) > limit, rows[:limit]
    core.record(caller.actor, AuditAction.AUDIT_VIEW, target="audit:sessions",
                request_id=caller.request_id, filters=filters, cursor=cursor or "",
                shown=len(rows))
    last = rows[-1] if rows and more else None
    return SessionPage(rows, f"{last.started_at}|{last.id}" if last else None, filters)


def _get(session: Session, session_id: str) -> TerminalSession:
    row = session.get(TerminalSession, session_id) if len(session_id) <= _TEXT_MAX else None
    if row is None:
        raise NotFound(f"no terminal session {session_id[:_TEXT_MAX]!r}")
    return row


def session(core: Sealroom, caller: Caller, session_id: str) -> TerminalSession:
    """One session's facts (console-composed text); audited."""
    _require(caller)
    with core.read() as db:
        row = _get(db, session_id)
    core.record(caller.actor, AuditAction.AUDIT_VIEW, target=f"terminal:{session_id}",
                request_id=caller.request_id)
    return row


def _chain_record(db: Session, session_id: str) -> ExpectedRecording | None:
    """The recording the chain named when the session ended (None if it has not ended)."""
    event = db.exec(select(AuditEvent).where(AuditEvent.action == AuditAction.SSH_END.value)
                    .where(AuditEvent.target == f"terminal:{session_id}")
                    .order_by(col(AuditEvent.id).desc()).limit(1)).first()
    if event is None:
        return None
    body: dict[str, Any] = json.loads(event.details or "{}")
    return ExpectedRecording(session_id, str(body.get("recording", "")),
                             str(body.get("recording_sha256", "")))


def _state(core: Sealroom, named: ExpectedRecording | None) -> RecordingState:
    """The file the chain names (not the row's, which an insider could repoint), hashed."""
    if named is None:
        return RecordingState("open", "", "the session has not ended: the audit chain holds "
                              "no hash for its recording yet")
    if not named.sha256:  # the gateway died and its recording was gone when it recovered
        return RecordingState("missing", "", "the session ended with no recording: the "
                              "audit chain holds no hash for it")
    problem = next(iter(check_recordings([named], core.settings.recordings_dir)), None)
    if problem is not None:
        return RecordingState(problem.problem, named.sha256, problem.message)
    return RecordingState("intact", named.sha256, "the recording is the one the audit chain "
                          "names")


def recording_state(core: Sealroom, row: TerminalSession) -> RecordingState:
    """Whether the session's recording is still the one the chain names (for the page)."""
    with core.read() as db:
        named = _chain_record(db, row.id)
    return _state(core, named)


def _path(core: Sealroom, name: str) -> Path | None:
    if not name or Path(name).name != name:
        return None
    return core.settings.recordings_dir / name


def recording(core: Sealroom, caller: Caller, session_id: str) -> Path:
    """The recording file, for replay or download. The output in it was charged to the
    disclosure ledger when the gateway sent it to the engineer's terminal; re-showing it to an
    auditor spends nothing new and is audited (`audit:recording:view`): the event is
    committed before a byte is served, and nothing is served if it cannot be. A changed
    recording is still served (the view's event and the page say it is changed); a missing
    one is NotFound."""
    _require(caller)
    with core.read() as db:
        row = _get(db, session_id)
        named = _chain_record(db, session_id)
    # Hashed before the write transaction: a long file does not hold the write lock.
    state = _state(core, named)
    name = named.name if named is not None and named.name else row.recording
    path = _path(core, name)
    if state.state == "missing" or path is None or not path.is_file():
        raise NotFound(f"the recording of session {session_id} ({name}) is missing")
    with core.transaction() as db:
        _get(db, session_id)
        append(db, EventDraft(caller.actor, AuditAction.SSH_RECORDING_VIEW,
                              f"terminal:{session_id}", request_id=caller.request_id,
                              details={"session": row.id, "sandbox": row.sandbox_id,
                                       "user": row.user, "recording": name,
                                       "state": state.state,
                                       "chain_sha256": state.chain_sha256,
                                       "ledger": "already charged when first sent"}))
    return path


def expected(core: Sealroom) -> list[ExpectedRecording]:
    """Every recording the chain names, from its `sandbox:terminal:end` events."""
    with core.read() as db:
        details = db.exec(select(AuditEvent.details).where(
            AuditEvent.action == AuditAction.SSH_END.value).order_by(col(AuditEvent.id))).all()
    found: list[ExpectedRecording] = []
    for text in details:
        body: dict[str, Any] = json.loads(text or "{}")
        if body.get("session") and body.get("recording") and body.get("recording_sha256"):
            found.append(ExpectedRecording(str(body["session"]), str(body["recording"]),
                                           str(body["recording_sha256"])))
    return found


def problems(core: Sealroom, found: list[ExpectedRecording] | None = None
             ) -> list[RecordingProblem]:
    """Recordings the chain names that are missing or no longer hash as recorded."""
    return check_recordings(expected(core) if found is None else found,
                            core.settings.recordings_dir)


def to_dict(row: TerminalSession) -> dict[str, Any]:
    """A session as the API shows it: console-composed fields only."""
    return {"id": row.id, "user": row.user, "sandbox": row.sandbox_id, "member": row.member,
            "key_fingerprint": row.key_fingerprint, "source": row.source,
            "started_at": row.started_at, "ended_at": row.ended_at,
            "end_reason": row.end_reason, "end_rule": row.end_rule,
            "bytes_out": row.bytes_out, "bytes_in": row.bytes_in,
            "recording": row.recording, "recording_sha256": row.recording_sha256,
            "recording_bytes": row.recording_bytes}


def problem_dict(problem: RecordingProblem) -> dict[str, str]:
    return asdict(problem)
