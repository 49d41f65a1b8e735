"""Upgrading a database from before versioned policies: its dataset grants become version 1's
dataset rules (the default document, comments kept), and the old grants table is gone."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, inspect, text

from console.core import Sealroom
from console.db import alembic_config
from console.settings import Settings


def test_grants_move_into_the_first_policy_version(tmp_path: Path) -> None:
    settings = Settings.from_env(home=tmp_path / "home", testing=True)
    settings.ensure_dirs()
    command.upgrade(alembic_config(settings.database_url), "0003")
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO user (id, name, role, password_hash, active, created_at) "
            "VALUES (1, 'alice', 'engineer', 'x', 1, 'now')"))
        for number, name in ((1, "demo"), (2, "cohort")):
            connection.execute(text(
                "INSERT INTO dataset (id, name, path, digest, size_bytes, files, registered_by, "
                "created_at) VALUES (:id, :name, '/x', 'sha256:0', 1, 1, 'op', 'now')"),
                {"id": number, "name": name})
        connection.execute(text(
            "INSERT INTO dataset_grant (dataset_id, principal) VALUES "
            "(1, 'role:engineer'), (2, 'alice'), (2, 'role:approver')"))
    engine.dispose()

    core = Sealroom(settings, backend=object())  # type: ignore[arg-type]
    try:
        policy = core.policy
        assert policy.version == 1
        with core.transaction() as session:
            (document,) = session.exec(text("SELECT text FROM policy_version")).one()
        assert document.startswith("# Sealroom default policy")
        assert {name: rule.allow for name, rule in policy.datasets.items()} == {
            "demo": ["role:engineer"], "cohort": ["alice", "role:approver"]}
        assert core.evaluator.may_mount("alice", "engineer", "cohort")
        assert "dataset_grant" not in inspect(core.engine).get_table_names()
    finally:
        core.close()
