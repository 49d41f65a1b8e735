"""The hash chain: appends link, verification finds modification, deletion and reordering."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from audit.chain import GENESIS, append, canonical_json, verify
from audit.errors import AuditWriteFailed
from audit.events import Actor, AuditAction, EventDraft, Outcome
from console.core import Sealroom


def _append(core: Sealroom, n: int) -> None:
    for i in range(n):
        with core.transaction() as session:
            append(session, EventDraft(Actor("alice", "engineer", "token", "127.0.0.1"),
                                       AuditAction.SANDBOX_VIEW, f"sandbox:sb-{i}",
                                       details={"i": i, "ünï": "cödé"}))


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, "x"]}) == b'{"a":[1,"x"],"b":1}'


def test_untouched_chain_verifies(core: Sealroom) -> None:
    _append(core, 20)
    with core.transaction() as session:
        report = verify(session)
    assert report.ok, report.problem
    assert report.events == report.verified_up_to >= 20


def test_first_event_links_to_genesis(core: Sealroom) -> None:
    from sqlmodel import select

    from audit.models import AuditEvent

    with core.transaction() as session:
        first = session.exec(select(AuditEvent).order_by(AuditEvent.id)).first()
    assert first is not None and first.prev_hash == GENESIS


def _raw(core: Sealroom) -> sqlite3.Connection:
    path = core.settings.database_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, isolation_level=None)
    # Simulate an insider with the database file: drop the append-only guards first.
    conn.execute("DROP TRIGGER IF EXISTS audit_event_no_update")
    conn.execute("DROP TRIGGER IF EXISTS audit_event_no_delete")
    return conn


@pytest.mark.parametrize("tamper, expected", [
    ("UPDATE audit_event SET reason='nothing to see' WHERE id=5", 5),
    ("DELETE FROM audit_event WHERE id=7", 7),
    ("UPDATE audit_event SET id=1000 WHERE id=9", 9),
])
def test_tampering_with_plain_sql_is_found(core: Sealroom, tamper: str, expected: int) -> None:
    _append(core, 12)
    with _raw(core) as conn:
        conn.execute(tamper)
    with core.transaction() as session:
        report = verify(session)
    assert not report.ok
    assert report.first_break == expected


def test_the_application_cannot_rewrite_events(core: Sealroom) -> None:
    path = core.settings.database_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit_event SET reason='x' WHERE id=1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit_event")


def test_failed_audit_write_fails_the_operation(core: Sealroom) -> None:
    """The state change and its audit event commit together or not at all."""
    from sqlmodel import select

    from console.models import User

    path = core.settings.database_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TRIGGER fail_audit BEFORE INSERT ON audit_event "
                 "BEGIN SELECT RAISE(ABORT, 'audit store unwritable'); END")
    from console.services import accounts
    from tests.helpers import OPERATOR

    with pytest.raises((AuditWriteFailed, IntegrityError, OperationalError)):
        accounts.create_user(core, OPERATOR, "mallory", "engineer", "long enough pass")
    with core.transaction() as session:
        assert session.exec(select(User).where(User.name == "mallory")).first() is None


def test_outcome_values_are_stable() -> None:
    assert [o.value for o in Outcome] == ["ok", "denied", "failed"]
    assert all(a.value.count(":") == 2 for a in AuditAction)
