"""Appending to the hash chain.

Each event's hash covers its canonical JSON (`audit.hashing`, whose names are importable from
here too), which includes its id and the previous event's hash, so changing, inserting,
deleting or reordering a row breaks a link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import rfc8785
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from audit.errors import AuditWriteFailed
from audit.events import EventDraft
from audit.hashing import (
    GENESIS,
    HASHED_FIELDS,
    SCHEMA_VERSIONS,
    canonical_json,
    canonical_json_v1,
    encode_details,
    event_body,
    event_hash,
    utc_now,
)
from audit.models import SCHEMA_VERSION
from audit.verify import verify_connection

__all__ = [
    "GENESIS", "HASHED_FIELDS", "SCHEMA_VERSIONS", "SIGNER_KEY", "ChainReport", "ChainedEvent",
    "CheckpointSigner", "append", "canonical_json", "canonical_json_v1", "encode_details",
    "event_body", "event_hash", "utc_now", "verify",
]

_HASHED_FIELDS = HASHED_FIELDS  # the name earlier code used

#: Where `append` finds the checkpoint signer of the session it writes in (set by the console).
SIGNER_KEY = "sealroom.audit.signer"


class CheckpointSigner(Protocol):
    """What `append` needs from the checkpoint machinery (see `audit.checkpoints`)."""

    def after_append(self, session: Session, tree_size: int, head_hash: str,
                     last_checkpoint: int) -> None: ...


@dataclass(frozen=True)
class ChainedEvent:
    """What `append` wrote: the event's id, time and place in the chain."""

    id: int
    time: str
    prev_hash: str
    hash: str


# Plain SQL, not the ORM: an append is on the path of every audited operation, and the ORM's
# object bookkeeping cost several times the hashing and the insert together.
_HEAD_SQL = "SELECT id, hash FROM audit_event ORDER BY id DESC LIMIT 1"
_HEAD_AND_CHECKPOINT_SQL = ("SELECT (SELECT id FROM audit_event ORDER BY id DESC LIMIT 1), "
                            "(SELECT hash FROM audit_event ORDER BY id DESC LIMIT 1), "
                            "(SELECT max(tree_size) FROM audit_checkpoint)")
_INSERT_SQL = (f"INSERT INTO audit_event ({', '.join(HASHED_FIELDS)}, hash) "  # noqa: S608
               f"VALUES ({', '.join('?' * (len(HASHED_FIELDS) + 1))})")


def append(session: Session, draft: EventDraft) -> ChainedEvent:
    """Add `draft` to the chain inside the caller's transaction.

    The caller's transaction must hold the database write lock (the console opens every
    transaction with BEGIN IMMEDIATE), so two writers can never chain to the same head. When
    the session carries a checkpoint signer, a signed checkpoint is made in the same
    transaction every N events.
    """
    signer: CheckpointSigner | None = session.info.get(SIGNER_KEY)
    try:
        session.flush()  # the caller's pending changes first, as one unit with the event
        conn = session.connection()
        if signer is not None:
            head_id, head_hash, last_checkpoint = conn.exec_driver_sql(
                _HEAD_AND_CHECKPOINT_SQL).one()
        else:
            row = conn.exec_driver_sql(_HEAD_SQL).first()
            head_id, head_hash = row if row is not None else (None, None)
        fields: dict[str, Any] = {
            "id": (head_id or 0) + 1,
            "schema_version": SCHEMA_VERSION,
            "time": utc_now(),
            "actor": draft.actor.name,
            "actor_role": draft.actor.role,
            "auth_method": draft.actor.auth_method,
            "source": draft.actor.source,
            "action": str(draft.action),
            "target": draft.target,
            "outcome": str(draft.outcome),
            "reason": draft.reason,
            "request_id": draft.request_id,
            "details": encode_details(draft.details),
            "prev_hash": head_hash or GENESIS,
        }
        digest = event_hash(fields)
        conn.exec_driver_sql(_INSERT_SQL, (*(fields[name] for name in HASHED_FIELDS), digest))
        if signer is not None:
            signer.after_append(session, fields["id"], digest, last_checkpoint or 0)
    except SQLAlchemyError as exc:
        raise AuditWriteFailed(f"audit write failed: {exc}") from exc
    except (TypeError, ValueError, rfc8785.CanonicalizationError) as exc:
        raise AuditWriteFailed(f"audit event cannot be encoded: {exc}") from exc
    return ChainedEvent(fields["id"], fields["time"], fields["prev_hash"], digest)


@dataclass(frozen=True)
class ChainReport:
    """Result of walking the chain: how far it holds and where it first breaks.

    Kept for callers of `verify`; `audit.verify.VerificationReport` says more (kind of
    tampering, checkpoints).
    """

    events: int
    verified_up_to: int
    head_hash: str
    first_break: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.first_break is None


def verify(session: Session) -> ChainReport:
    """Walk the chain in `session` (no checkpoints): see `audit.verify.verify_database`."""
    return _chain_report(verify_connection(session.connection(), checkpoints=()))


def _chain_report(report: Any) -> ChainReport:
    return ChainReport(report.events, report.verified_up_to, report.head_hash,
                       report.first_bad, report.message if not report.ok else "")
