"""Reconciling with the engine by sets of sandboxes, on the in-memory backend (the same
behaviour on the real engine: tests/integration/test_reconcile.py and test_docker_backend.py).

A sandbox is what its recorded backend state names, however many members: nothing of a live
sandbox is an orphan; what belongs to no live sandbox, or that no record names, goes.
"""

from __future__ import annotations

import json
from pathlib import Path

from alembic import command
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from console.core import Sealroom
from console.db import alembic_config
from console.models import Sandbox, SandboxStatus
from console.services import sandboxes
from console.settings import Settings
from sandbox.backend import LAUNCHER, ContainerState, Member
from sandbox.spec import SandboxSpec
from tests.helpers import bearer, recorded
from tests.mocking import FakeBackend


def _launch(client: FlaskClient, token: str) -> str:
    created = client.post("/api/v1/sandboxes", headers=bearer(token),
                          json={"dataset": "demo", "example": "mlp"})
    assert created.status_code == 201, created.get_json()
    return str(created.get_json()["id"])


def _record(core: Sealroom, sandbox_id: str) -> Sandbox:
    with core.transaction() as session:
        row = session.get(Sandbox, sandbox_id)
        assert row is not None
        return row


def _second_member(core: Sealroom, fake: FakeBackend, sandbox_id: str) -> str:
    """Another container labelled with the same sandbox, as a cluster's rank would be."""
    record = _record(core, sandbox_id)
    spec = SandboxSpec(sandbox_id=sandbox_id, owner=record.owner, image="sealroom/base:test",
                       command=("python3", "rank.py"))
    extra = ContainerState.from_state(fake.create(spec)).members[0].container
    fake.start(ContainerState((Member("rank-1", extra),)).to_state())
    return extra


def test_every_recorded_member_of_a_live_sandbox_survives(
        client: FlaskClient, alice: str, core: Sealroom, fake_backend: FakeBackend) -> None:
    sandbox_id = _launch(client, alice)
    extra = _second_member(core, fake_backend, sandbox_id)
    launcher = fake_backend.handle_of(sandbox_id)
    with core.transaction() as session:
        row = session.get(Sandbox, sandbox_id)
        assert row is not None
        row.backend_state = json.dumps(ContainerState(
            (Member(LAUNCHER, launcher), Member("rank-1", extra))).to_state())
        session.add(row)
    sandboxes.reconcile(core)
    assert set(fake_backend.sandboxes) == {launcher, extra}  # the cluster is not torn down
    assert _record(core, sandbox_id).status == SandboxStatus.RUNNING
    assert recorded(core, "system:container:remove_orphan") == []


def test_what_no_record_names_is_removed_and_audited(
        client: FlaskClient, alice: str, core: Sealroom, fake_backend: FakeBackend) -> None:
    sandbox_id = _launch(client, alice)
    stray = _second_member(core, fake_backend, sandbox_id)
    unknown = fake_backend.create(SandboxSpec(sandbox_id="sb-unknown", owner="mallory",
                                              image="sealroom/base:test", command=("true",)))
    sandboxes.reconcile(core)
    assert set(fake_backend.sandboxes) == {fake_backend.handle_of(sandbox_id)}
    unknown_container = ContainerState.from_state(unknown).members[0].container
    assert unknown_container not in fake_backend.sandboxes
    assert stray not in fake_backend.sandboxes
    assert _record(core, sandbox_id).status == SandboxStatus.RUNNING
    removed = {e.target: json.loads(e.details)
               for e in recorded(core, "system:container:remove_orphan")}
    assert set(removed) == {f"sandbox:{sandbox_id}", "sandbox:sb-unknown"}
    assert removed["sandbox:sb-unknown"]["owner"] == "mallory"


def test_a_live_sandbox_the_engine_lost_is_lost(
        client: FlaskClient, alice: str, core: Sealroom, fake_backend: FakeBackend) -> None:
    sandbox_id = _launch(client, alice)
    fake_backend.vanish(fake_backend.handle_of(sandbox_id))
    sandboxes.reconcile(core)
    assert _record(core, sandbox_id).status == SandboxStatus.LOST


def test_a_handle_from_before_becomes_the_launcher_of_a_one_member_state(
        tmp_path: Path) -> None:
    settings = Settings.from_env(home=tmp_path / "home", testing=True)
    settings.ensure_dirs()
    command.upgrade(alembic_config(settings.database_url), "0006")
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO user (id, name, role, password_hash, active, created_at) "
            "VALUES (1, 'alice', 'engineer', 'x', 1, 'now')"))
        for sandbox_id, handle in (("sb-old", "c0ffee"), ("sb-never", "")):
            connection.execute(text(
                "INSERT INTO sandbox (id, owner_id, owner, status, image, image_digest, command,"
                " datasets, code_digest, code_name, spec, cpus, memory_mb, pids, timeout_s,"
                " handle, reason, created_at) VALUES (:id, 1, 'alice', 'running', 'i', 'd', 'c',"
                " '[]', 'x', 'y', '{}', 1, 64, 16, 60, :handle, '', 'now')"),
                {"id": sandbox_id, "handle": handle})
    engine.dispose()
    command.upgrade(alembic_config(settings.database_url), "head")
    engine = create_engine(settings.database_url)
    with engine.connect() as connection:
        rows = dict(connection.execute(text("SELECT id, backend_state FROM sandbox")).all())
        columns = {c[1] for c in connection.execute(text("PRAGMA table_info(sandbox)")).all()}
    engine.dispose()
    assert "handle" not in columns
    assert ContainerState.from_state(json.loads(rows["sb-old"])) == ContainerState(
        (Member(LAUNCHER, "c0ffee"),))
    assert json.loads(rows["sb-never"]) == {}
