"""Appending to and verifying the hash chain.

Each event's hash covers its canonical JSON and the previous event's hash, so changing,
inserting, deleting or reordering a row breaks every link after it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from audit.errors import AuditWriteFailed, ChainBroken
from audit.events import EventDraft
from audit.models import SCHEMA_VERSION, AuditEvent

GENESIS = "0" * 64

_HASHED_FIELDS = (
    "id",
    "schema_version",
    "time",
    "actor",
    "actor_role",
    "auth_method",
    "source",
    "action",
    "target",
    "outcome",
    "reason",
    "request_id",
    "details",
    "prev_hash",
)


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant white space, UTF-8: the bytes that get hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(fields: dict[str, Any]) -> str:
    body = {name: fields[name] for name in _HASHED_FIELDS}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def append(session: Session, draft: EventDraft) -> AuditEvent:
    """Add `draft` to the chain inside the caller's transaction.

    The caller's transaction must hold the database write lock (the console opens every
    transaction with BEGIN IMMEDIATE), so two writers can never chain to the same head.
    """
    try:
        head = session.exec(select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(1)).first()
        next_id = (head.id or 0) + 1 if head else 1
        event = AuditEvent(
            id=next_id,
            schema_version=SCHEMA_VERSION,
            time=utc_now(),
            actor=draft.actor.name,
            actor_role=draft.actor.role,
            auth_method=draft.actor.auth_method,
            source=draft.actor.source,
            action=str(draft.action),
            target=draft.target,
            outcome=str(draft.outcome),
            reason=draft.reason,
            request_id=draft.request_id,
            details=canonical_json(draft.details).decode(),
            prev_hash=head.hash if head else GENESIS,
            hash="",
        )
        event.hash = event_hash(event.model_dump())
        session.add(event)
        session.flush()
    except SQLAlchemyError as exc:
        raise AuditWriteFailed(f"audit write failed: {exc}") from exc
    return event


@dataclass(frozen=True)
class ChainReport:
    """Result of walking the chain: how far it holds and where it first breaks."""

    events: int
    verified_up_to: int
    head_hash: str
    first_break: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.first_break is None


def verify_events(events: Iterable[AuditEvent]) -> ChainReport:
    """Check ids are consecutive, every link points at the previous hash, every hash holds."""
    prev_hash, prev_id, count = GENESIS, 0, 0
    try:
        for event in events:
            count += 1
            if event.id != prev_id + 1:
                raise ChainBroken(f"event {prev_id + 1} missing or reordered", event_id=prev_id + 1)
            if event.prev_hash != prev_hash:
                raise ChainBroken(f"event {event.id} does not link to its predecessor",
                                  event_id=event.id)
            if event_hash(event.model_dump()) != event.hash:
                raise ChainBroken(f"event {event.id} was modified", event_id=event.id)
            prev_hash, prev_id = event.hash, event.id
    except ChainBroken as broken:
        return ChainReport(count, prev_id, prev_hash, broken.event_id, str(broken))
    return ChainReport(count, prev_id, prev_hash)


def verify(session: Session) -> ChainReport:
    rows = session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).yield_per(1000)
    return verify_events(rows)
