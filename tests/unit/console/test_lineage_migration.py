"""Migration 0010 on an installation from before dataset versions: every dataset becomes its
version 1, a second version can be added under the same name, and every recorded sandbox
descends from version 1 of each dataset it mounted. The migrated schema is the models'."""

from __future__ import annotations

import json
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlmodel import SQLModel

from console.db import alembic_config
from console.settings import Settings


def test_datasets_become_version_1_and_sandboxes_descend_from_them(tmp_path: Path) -> None:
    settings = Settings.from_env(home=tmp_path / "home", testing=True)
    settings.ensure_dirs()
    command.upgrade(alembic_config(settings.database_url), "0009")
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO user (id, name, role, password_hash, active, created_at) "
            "VALUES (1, 'alice', 'engineer', 'x', 1, 'now')"))
        connection.execute(text(
            "INSERT INTO dataset (id, name, path, digest, size_bytes, files, registered_by, "
            "created_at) VALUES (1, 'demo', '/d', 'sha256:aa', 1, 1, 'op', 'now')"))
        connection.execute(text(
            "INSERT INTO sandbox (id, owner_id, owner, status, image, image_digest, command,"
            " datasets, code_digest, code_name, spec, cpus, memory_mb, pids, timeout_s,"
            " reason, created_at) VALUES ('sb-old', 1, 'alice', 'succeeded', 'i', 'd', 'c',"
            " :datasets, 'x', 'y', '{}', 1, 64, 16, 60, '', 'now')"),
            {"datasets": json.dumps([{"name": "demo", "digest": "sha256:aa"}])})
    engine.dispose()
    command.upgrade(alembic_config(settings.database_url), "head")
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        version = connection.execute(text("SELECT version FROM dataset")).scalar_one()
        lineage = connection.execute(text("SELECT lineage FROM sandbox")).scalar_one()
        connection.execute(text(
            "INSERT INTO dataset (name, version, path, digest, size_bytes, files, "
            "registered_by, created_at) VALUES ('demo', 2, '/e', 'sha256:bb', 1, 1, 'op', "
            "'now')"))
        differences = compare_metadata(MigrationContext.configure(connection),
                                       SQLModel.metadata)
    engine.dispose()
    assert version == 1
    assert json.loads(lineage) == [{"name": "demo", "version": 1, "digest": "sha256:aa"}]
    assert differences == []
