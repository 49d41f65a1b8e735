"""Migration 0011 on an installation from before token expiry: existing tokens keep working
until `created_at` + the default lifetime (none is left without an expiry), one older than
that expires at the upgrade, a revoked one stays revoked, and existing sessions must log in
again. The migrated schema is the models'."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlmodel import SQLModel

from console.core import Sealroom
from console.db import alembic_config
from console.services import accounts
from console.settings import Settings

TOKENS = {"fresh": "sr_fresh" + "f" * 40, "old": "sr_oldold" + "o" * 40,
          "revoked": "sr_revokd" + "r" * 40}


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def test_existing_tokens_get_created_at_plus_the_default_lifetime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEALROOM_TOKEN_TTL_DAYS", raising=False)
    settings = Settings.from_env(home=tmp_path / "home", testing=True)
    settings.ensure_dirs()
    command.upgrade(alembic_config(settings.database_url), "0010")
    now = datetime.now(UTC)
    made = {"fresh": now - timedelta(days=10), "old": now - timedelta(days=100),
            "revoked": now - timedelta(days=1)}
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO user (id, name, role, password_hash, active, created_at) "
            "VALUES (1, 'alice', 'engineer', 'x', 1, 'now')"))
        for key, token in TOKENS.items():
            connection.execute(text(
                "INSERT INTO api_token (user_id, prefix, token_hash, created_at, revoked) "
                "VALUES (1, :prefix, :hash, :created, :revoked)"),
                {"prefix": token[:10], "hash": accounts._digest(token),
                 "created": _iso(made[key]), "revoked": key == "revoked"})
    engine.dispose()
    command.upgrade(alembic_config(settings.database_url), "0011")
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        rows = {r.prefix: r for r in connection.execute(text("SELECT * FROM api_token"))}
        epoch = connection.execute(text("SELECT session_epoch FROM user")).scalar_one()
    engine.dispose()
    # The later migrations (0012: SSH keys and terminal sessions) bring it to the models.
    command.upgrade(alembic_config(settings.database_url), "head")
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        differences = compare_metadata(MigrationContext.configure(connection),
                                       SQLModel.metadata)
    engine.dispose()
    assert differences == []
    assert epoch == 0
    fresh = rows[TOKENS["fresh"][:10]]
    assert fresh.expires_at == _iso(made["fresh"] + timedelta(days=90))
    assert fresh.revoked_at is None and fresh.name.startswith("token ")
    assert rows[TOKENS["revoked"][:10]].revoked_by == "migration 0011"

    core = Sealroom(settings, backend=object())  # type: ignore[arg-type]
    try:
        user, _ = accounts.authenticate_token(core, TOKENS["fresh"])
        assert user.name == "alice"
        with pytest.raises(accounts.TokenRefused) as old:
            accounts.authenticate_token(core, TOKENS["old"])
        assert old.value.code == "token_expired"
        with pytest.raises(accounts.TokenRefused) as revoked:
            accounts.authenticate_token(core, TOKENS["revoked"])
        assert revoked.value.code == "token_revoked"
    finally:
        core.close()


def test_downgrade_keeps_dead_tokens_dead(tmp_path: Path) -> None:
    settings = Settings.from_env(home=tmp_path / "home", testing=True)
    core = Sealroom(settings, backend=object())  # type: ignore[arg-type]
    from tests.helpers import OPERATOR, PASSWORD

    accounts.create_user(core, OPERATOR, "alice", "engineer", PASSWORD)
    keep = accounts.issue_token(core, OPERATOR, "alice", name="keep")
    gone = accounts.issue_token(core, OPERATOR, "alice", name="gone")
    accounts.revoke_token(core, OPERATOR, gone.info.id, any_owner=True)
    core.close()
    command.downgrade(alembic_config(settings.database_url), "0010")
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        revoked: dict[int, int] = dict(connection.execute(
            text("SELECT id, revoked FROM api_token")).all())
    engine.dispose()
    assert revoked == {keep.info.id: 0, gone.info.id: 1}
