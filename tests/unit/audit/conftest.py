"""Audit test fixtures: an installation that checkpoints every 10 events, a way to append
many events, and raw SQL on the database file as an insider with the file would use it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest

from audit.chain import append
from audit.events import Actor, AuditAction, EventDraft
from console.core import Sealroom

EVERY = 10


@pytest.fixture
def audit_core(core: Sealroom) -> Sealroom:
    core.audit_checkpoints.every_events = EVERY
    return core


def append_events(core: Sealroom, n: int) -> None:
    for i in range(n):
        with core.transaction() as session:
            append(session, EventDraft(Actor("alice", "engineer", "token", "127.0.0.1"),
                                       AuditAction.SANDBOX_VIEW, f"sandbox:sb-{i}",
                                       details={"i": i, "ünï": "cödé", "x": 1.5}))


def head(core: Sealroom) -> int:
    with core.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT max(id) FROM audit_event").scalar_one())


@pytest.fixture
def raw_sql(core: Sealroom) -> Callable[..., None]:
    """Run statements on the SQLite file with the append-only guards dropped first."""

    def run(*statements: str, params: tuple[object, ...] = ()) -> None:
        path = core.settings.database_url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            for guard in ("audit_event_no_update", "audit_event_no_delete",
                          "audit_checkpoint_no_update", "audit_checkpoint_no_delete"):
                conn.execute(f"DROP TRIGGER IF EXISTS {guard}")
            for statement in statements:
                conn.execute(statement, params if "?" in statement else ())
        finally:
            conn.close()

    return run
