"""The embedded SQLite database: engine set-up, write and read transactions, and Alembic
migrations.

A write transaction (`transaction`) begins with BEGIN IMMEDIATE: writers are serialised, so
the audit chain appended inside one always extends the true head. A read (`read`) runs on a
separate, query-only engine and never takes the write lock (see `read` for why).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event
from sqlmodel import Session, create_engine

MIGRATIONS = Path(__file__).with_name("migrations")


class WriteInReadTransaction(RuntimeError):
    """A read transaction tried to change the database: a bug in the read path, never a
    condition to handle (writes belong in `transaction`)."""


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """The engine for write transactions (BEGIN IMMEDIATE) or, with `read_only`, the one for
    reads: its connections are `PRAGMA query_only` for good and begin with BEGIN DEFERRED."""
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        if not read_only:  # setting the journal mode writes the header; writers own that
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        if read_only:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    begin = "BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE"

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


class ReadSession(Session):
    """The session of a read: flushing any change raises `WriteInReadTransaction`."""


@event.listens_for(ReadSession, "before_flush")
def _refuse_flush(session: Session, _context: Any, _instances: Any) -> None:
    # Called only when the session holds changes (a clean session does not flush).
    raise WriteInReadTransaction(
        f"a read transaction tried to write ({len(session.new)} new, "
        f"{len(session.dirty)} changed, {len(session.deleted)} deleted rows)")


@contextmanager
def read(engine: Engine) -> Iterator[Session]:
    """A read: one consistent snapshot for every query in the block, and no lock held.

    It is a deferred transaction (BEGIN DEFERRED) on a connection of the query-only engine
    (`make_engine(url, read_only=True)`), not autocommit: the several SELECTs of one page (a
    release and its files, a listing and its counts) then see the same commit. Under WAL a
    deferred reader takes only a snapshot of the log at its first SELECT: it never waits for
    a writer holding BEGIN IMMEDIATE and never makes one wait. A write is refused twice: the
    session refuses to flush changed rows (`WriteInReadTransaction`), and SQLite itself
    refuses any INSERT/UPDATE/DELETE on a query-only connection ("attempt to write a readonly
    database"). Rows come back loaded and detached, as from `transaction`.
    """
    with ReadSession(engine, expire_on_commit=False) as session:
        yield session
        # A change left pending (added, never flushed) would otherwise vanish in silence.
        session.flush()
    # Closing the session ends the deferred transaction (the pool rolls the connection back)
    # without expiring the rows it loaded.


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    return config


def upgrade(url: str) -> None:
    command.upgrade(alembic_config(url), "head")
