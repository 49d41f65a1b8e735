"""Migration 0014 on an installation from before run names: every recorded sandbox has no
name and no tags, new ones keep theirs, and the migration goes back down cleanly. The
migrated schema is the models'."""

from __future__ import annotations

import json
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

from console.db import alembic_config
from console.settings import Settings


def test_recorded_sandboxes_get_no_name_and_no_tags(tmp_path: Path) -> None:
    settings = Settings.from_env(home=tmp_path / "home", testing=True)
    settings.ensure_dirs()
    config = alembic_config(settings.database_url)
    command.upgrade(config, "0013")
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO user (id, name, role, password_hash, active, created_at) "
            "VALUES (1, 'alice', 'engineer', 'x', 1, 'now')"))
        connection.execute(text(
            "INSERT INTO sandbox (id, owner_id, owner, status, image, image_digest, command,"
            " datasets, code_digest, code_name, spec, cpus, memory_mb, pids, timeout_s,"
            " reason, created_at) VALUES ('sb-old', 1, 'alice', 'succeeded', 'i', 'd', 'c',"
            " '[]', 'x', 'y', '{}', 1, 64, 16, 60, '', 'now')"))
    engine.dispose()
    command.upgrade(config, "head")
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        name, tags = connection.execute(text("SELECT name, tags FROM sandbox")).one()
        differences = compare_metadata(MigrationContext.configure(connection),
                                       SQLModel.metadata)
    engine.dispose()
    assert (name, json.loads(tags)) == ("", [])
    assert differences == []

    command.downgrade(config, "0013")
    engine = create_engine(settings.database_url)
    columns = {c["name"] for c in inspect(engine).get_columns("sandbox")}
    engine.dispose()
    assert "name" not in columns and "tags" not in columns and "lineage" in columns
