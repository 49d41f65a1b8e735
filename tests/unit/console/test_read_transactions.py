"""Reads and writes: pages read in deferred, query-only transactions that never take the write
lock and refuse to write; the supervisor alone polls the engine; a release list is one read."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from audit.chain import append, utc_now
from audit.errors import AuditWriteFailed
from audit.events import Actor, AuditAction, EventDraft
from audit.models import AuditEvent
from console.core import Caller, Sealroom
from console.db import WriteInReadTransaction
from console.models import ReleaseDecision, ReleaseFile, ReleaseRequest, Sandbox, User
from console.services import disclosure as disclosure_service
from console.services import launch as launch_service
from console.services import policy as policy_service
from console.services import releases as release_service
from console.services import sandboxes as sandbox_service
from tests.helpers import bearer, login, supervisor_pass
from tests.mocking import FakeBackend, ScriptedOutcome

ALICE = Caller(Actor("alice", "engineer", "token", "test"))
BOB = Caller(Actor("bob", "approver", "token", "test"))
#: How long a read may take while a writer holds the lock before we call it blocked; a read
#: that waits for the lock waits the whole busy timeout (30 s), so this bound is generous.
BLOCKED_AFTER_S = 10.0


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1]
            for name, role in [("alice", "engineer"), ("bob", "approver")]}


def _launch(core: Sealroom) -> str:
    order = launch_service.LaunchOrder(datasets=["demo"], example="mlp")
    return launch_service.launch(core, ALICE, order).id


def _database(core: Sealroom) -> str:
    return core.settings.database_url.removeprefix("sqlite:///")


@contextmanager
def _writer_holding_the_lock(core: Sealroom) -> Iterator[sqlite3.Connection]:
    """Another connection in the middle of a write transaction (BEGIN IMMEDIATE, uncommitted),
    like a slow launch or an audit append in another request."""
    connection = sqlite3.connect(_database(core), isolation_level=None, timeout=1)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("UPDATE sandbox SET reason = 'being written' WHERE 1 = 0")
        yield connection
    finally:
        connection.execute("ROLLBACK")
        connection.close()


def _completes_beside_a_writer(
        core: Sealroom, read: Callable[[], object],
        pending: Callable[[sqlite3.Connection], object] = lambda writer: None) -> object:
    """What `read` returns when run while another connection holds the write lock (after
    making the `pending`, uncommitted change); fails if the read waited for the lock."""
    results: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(read())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    with _writer_holding_the_lock(core) as writer:
        pending(writer)
        reader = threading.Thread(target=run, daemon=True)
        reader.start()
        reader.join(BLOCKED_AFTER_S)
        blocked = reader.is_alive()
    reader.join()  # the writer is gone: a blocked read ends now
    assert not blocked, "the read waited for the writer's lock"
    assert not errors, errors
    return results[0]


# --- (a) reads never wait for a writer -----------------------------------------------------


@pytest.mark.parametrize("read", [
    pytest.param(lambda core, sid: sandbox_service.list_for(core, ALICE), id="sandbox list"),
    pytest.param(lambda core, sid: sandbox_service.get(core, ALICE, sid), id="sandbox"),
    pytest.param(lambda core, sid: release_service.listing(core, BOB), id="release list"),
    pytest.param(lambda core, sid: policy_service.versions(core), id="policy history"),
    pytest.param(lambda core, sid: disclosure_service.users_today(core), id="disclosure"),
    pytest.param(lambda core, sid: core.policy, id="active policy"),
])
def test_a_page_read_completes_while_a_writer_holds_the_lock(
        core: Sealroom, people: dict[str, str], read: Callable[[Sealroom, str], object]) -> None:
    sandbox_id = _launch(core)
    _completes_beside_a_writer(core, lambda: read(core, sandbox_id))


def test_a_read_sees_the_last_commit_not_the_writers_pending_change(
        core: Sealroom, people: dict[str, str]) -> None:
    sandbox_id = _launch(core)
    record = _completes_beside_a_writer(
        core, lambda: sandbox_service.get(core, ALICE, sandbox_id),
        lambda writer: writer.execute("UPDATE sandbox SET reason = 'uncommitted' WHERE id = ?",
                                      (sandbox_id,)))
    assert isinstance(record, Sandbox)
    assert record.reason == ""


# --- (b) a read that writes fails loudly ---------------------------------------------------


def _user() -> User:
    return User(name="eve", role="admin", password_hash="x", created_at=utc_now())


def _no_eve(core: Sealroom) -> None:
    with core.transaction() as session:
        assert session.exec(select(User).where(User.name == "eve")).first() is None


def test_a_row_added_in_a_read_raises(core: Sealroom) -> None:
    with pytest.raises(WriteInReadTransaction), core.read() as session:
        session.add(_user())
    _no_eve(core)


def test_a_row_added_then_queried_in_a_read_raises_at_the_autoflush(core: Sealroom) -> None:
    with pytest.raises(WriteInReadTransaction), core.read() as session:
        session.add(_user())
        session.exec(select(User)).all()
    _no_eve(core)


def test_a_row_changed_in_a_read_raises(core: Sealroom, people: dict[str, str]) -> None:
    with pytest.raises(WriteInReadTransaction), core.read() as session:
        alice = session.exec(select(User).where(User.name == "alice")).one()
        alice.role = "admin"
    with core.transaction() as session:
        assert session.exec(select(User).where(User.name == "alice")).one().role == "engineer"


def test_sql_that_writes_in_a_read_is_refused_by_sqlite(core: Sealroom) -> None:
    with pytest.raises(OperationalError, match="readonly"), core.read() as session:
        session.connection().execute(text(
            "INSERT INTO user (name, role, password_hash, active, created_at) "
            "VALUES ('eve', 'admin', 'x', 1, '')"))
    _no_eve(core)


def test_an_audit_append_in_a_read_raises_and_leaves_the_chain_alone(core: Sealroom) -> None:
    with core.read() as session:
        before = len(session.exec(select(AuditEvent.id)).all())
    with pytest.raises(AuditWriteFailed, match="readonly"), core.read() as session:
        append(session, EventDraft(Actor.system(), AuditAction.REQUEST_SERVE, "x"))
    with core.read() as session:
        assert len(session.exec(select(AuditEvent.id)).all()) == before


def test_the_read_engine_is_query_only_and_deferred(core: Sealroom) -> None:
    with core.read_engine.connect() as connection:
        assert connection.execute(text("PRAGMA query_only")).scalar_one() == 1


# --- (c) pages never call the engine; (d) the supervisor does ------------------------------


_ENGINE_CALLS = ("ping", "create", "start", "poll", "logs", "logs_since", "stop", "remove",
                 "list_owned")


@pytest.fixture
def engine_calls(fake_backend: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call made to the (fake) engine, by method name."""
    calls: list[str] = []
    for name in _ENGINE_CALLS:
        method = getattr(fake_backend, name)

        def counted(*args: Any, _name: str = name, _method: Any = method, **kw: Any) -> Any:
            calls.append(_name)
            return _method(*args, **kw)

        monkeypatch.setattr(fake_backend, name, counted)
    return calls


def test_listing_and_getting_sandboxes_never_calls_the_engine(
        core: Sealroom, client: FlaskClient, people: dict[str, str],
        fake_backend: FakeBackend, engine_calls: list[str]) -> None:
    sandbox_id = _launch(core)
    engine_calls.clear()
    assert [s.id for s in sandbox_service.list_for(core, ALICE)] == [sandbox_id]
    assert sandbox_service.get(core, ALICE, sandbox_id).status == "running"
    token = people["alice"]
    assert client.get("/api/v1/sandboxes", headers=bearer(token)).status_code == 200
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(token)
                      ).status_code == 200
    login(client, "alice")
    assert client.get("/sandboxes").status_code == 200
    assert engine_calls == []


def test_a_page_shows_the_last_recorded_state_until_the_supervisor_polls(
        core: Sealroom, people: dict[str, str], fake_backend: FakeBackend,
        engine_calls: list[str]) -> None:
    sandbox_id = _launch(core)
    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
    engine_calls.clear()
    assert sandbox_service.get(core, ALICE, sandbox_id).status == "running"
    assert engine_calls == []
    supervisor_pass(core)
    assert "poll" in engine_calls
    record = sandbox_service.get(core, ALICE, sandbox_id)
    assert (record.status, record.exit_code) == ("succeeded", 0)


@pytest.mark.parametrize(("outcome", "status", "exit_code"), [
    (ScriptedOutcome(exit_code=0), "succeeded", 0),
    (ScriptedOutcome(exit_code=3), "failed", 3),
    (ScriptedOutcome(oom_killed=True), "oom_killed", 137),
])
def test_the_supervisor_records_exits(core: Sealroom, people: dict[str, str],
                                      fake_backend: FakeBackend, outcome: ScriptedOutcome,
                                      status: str, exit_code: int) -> None:
    fake_backend.default_outcome = outcome
    sandbox_id = _launch(core)
    supervisor_pass(core)
    record = sandbox_service.get(core, ALICE, sandbox_id)
    assert (record.status, record.exit_code) == (status, exit_code)
    with core.read() as session:
        actions = [e.action for e in session.exec(select(AuditEvent).where(
            AuditEvent.target == f"sandbox:{sandbox_id}")).all()]
    # (the outbox's hashing, recorded in the background, may come after)
    assert {AuditAction.SANDBOX_EXIT.value, AuditAction.SANDBOX_OOM.value} & set(actions)


def test_the_supervisor_records_a_lost_container(core: Sealroom, people: dict[str, str],
                                                 fake_backend: FakeBackend) -> None:
    sandbox_id = _launch(core)
    fake_backend.vanish(fake_backend.handle_of(sandbox_id))
    assert sandbox_service.get(core, ALICE, sandbox_id).status == "running"
    supervisor_pass(core)
    assert sandbox_service.get(core, ALICE, sandbox_id).status == "lost"


def test_stop_asks_the_engine_so_an_exit_is_recorded_as_the_exit(
        core: Sealroom, people: dict[str, str], fake_backend: FakeBackend) -> None:
    sandbox_id = _launch(core)
    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=4)
    record = sandbox_service.stop(core, ALICE, sandbox_id)
    assert (record.status, record.exit_code) == ("failed", 4)


def test_stop_of_a_running_sandbox_stops_it(core: Sealroom, people: dict[str, str],
                                            fake_backend: FakeBackend) -> None:
    sandbox_id = _launch(core)
    assert sandbox_service.stop(core, ALICE, sandbox_id).status == "stopped"


# --- (e) a release list is one read, whatever its length -----------------------------------


def _add_release(core: Sealroom, sandbox_id: str, number: int) -> str:
    release_id = f"rel-{number:012x}"
    now = utc_now()
    with core.transaction() as session:
        session.add(ReleaseRequest(id=release_id, sandbox_id=sandbox_id, requester="alice",
                                   status="in_review", justification="paper",
                                   approvals_needed=2, policy_version=1, created_at=now,
                                   updated_at=now))
        session.flush()
        for name in ("metrics.json", "model.safetensors"):
            session.add(ReleaseFile(release_id=release_id, name=name, label=name, size=1,
                                    sha256="00" * 32))
        session.add(ReleaseDecision(release_id=release_id, approver="bob",
                                    decision="approve", created_at=now))
    return release_id


class _Opened:
    """Counts the reads and write transactions a piece of work opens."""

    def __init__(self, core: Sealroom, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        self.writes = 0
        read, transaction = core.read, core.transaction

        @contextmanager
        def counted_read() -> Iterator[Session]:
            self.reads += 1
            with read() as session:
                yield session

        @contextmanager
        def counted_transaction() -> Iterator[Session]:
            self.writes += 1
            with transaction() as session:
                yield session

        monkeypatch.setattr(core, "read", counted_read)
        monkeypatch.setattr(core, "transaction", counted_transaction)

    def reset(self) -> None:
        self.reads = self.writes = 0


def test_a_release_list_is_one_read(core: Sealroom, people: dict[str, str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox_id = _launch(core)
    ids = [_add_release(core, sandbox_id, n) for n in range(4)]
    opened = _Opened(core, monkeypatch)
    rows = release_service.listing(core, BOB)
    assert (opened.reads, opened.writes) == (1, 0)
    assert sorted(r["id"] for r in rows) == ids
    assert all(r["approvals"] == ["bob"] and len(r["files"]) == 2 for r in rows)
    opened.reset()
    body = release_service.to_dict(core, release_service.get(core, BOB, ids[0]))
    assert (opened.reads, opened.writes) == (2, 0)  # the request, then its files and approvals
    assert body == next(r for r in rows if r["id"] == ids[0])


def test_the_release_pages_do_not_read_per_release(
        core: Sealroom, client: FlaskClient, people: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox_id = _launch(core)
    _add_release(core, sandbox_id, 0)
    opened = _Opened(core, monkeypatch)
    token = people["bob"]

    def opened_by(path: str, **kw: Any) -> tuple[int, int]:
        opened.reset()
        assert client.get(path, **kw).status_code == 200
        return opened.reads, opened.writes

    api_one = opened_by("/api/v1/releases", headers=bearer(token))
    login(client, "bob")
    page_one = opened_by("/releases")
    for number in range(1, 5):
        _add_release(core, sandbox_id, number)
    assert opened_by("/releases") == page_one
    # a token's use is recorded once a minute (its first use here wrote it): reads are the
    # same, writes at most those of the first call
    reads, writes = opened_by("/api/v1/releases", headers=bearer(token))
    assert reads == api_one[0] and writes <= api_one[1]


def test_the_supervisor_thread_records_what_pages_then_show_and_ends_with_the_core(
        core: Sealroom, people: dict[str, str], fake_backend: FakeBackend) -> None:
    from console.app import create_app

    before = set(threading.enumerate())
    create_app(sealroom=core, supervise=True)
    supervisor, = (t for t in set(threading.enumerate()) - before
                   if t.name == "sealroom-supervisor")
    sandbox_id = _launch(core)
    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
    for _ in range(1200):  # a bounded poll of the database, as a page would read it
        if sandbox_service.get(core, ALICE, sandbox_id).status == "succeeded":
            break
        core.closing.wait(0.05)
    else:
        pytest.fail("the supervisor never recorded the exit")
    core.close()
    supervisor.join(60)
    assert not supervisor.is_alive()
