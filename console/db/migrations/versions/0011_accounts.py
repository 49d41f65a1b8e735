"""accounts that can be revoked: token names, expiry, last use and revocation; session epochs

Every token now expires. Tokens made before this migration expire `SEALROOM_TOKEN_TTL_DAYS`
(default 90) after they were made: a token older than that stops working at the upgrade,
and its owner makes a new one. A token the old `revoked` flag marked stays revoked.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

DEFAULT_TTL_DAYS = 90


def _iso(moment: datetime) -> str:
    # The form of audit.hashing.utc_now (not imported: a migration keeps its own copy).
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _made_at(text: str, now: datetime) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return now  # unreadable: count the token as made at the upgrade
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def upgrade() -> None:
    ttl = timedelta(days=int(os.environ.get("SEALROOM_TOKEN_TTL_DAYS", DEFAULT_TTL_DAYS)))
    now = datetime.now(UTC)
    with op.batch_alter_table('user') as batch:
        batch.add_column(sa.Column('session_epoch', sa.Integer(), nullable=False,
                                   server_default='0'))
    with op.batch_alter_table('api_token') as batch:
        batch.add_column(sa.Column('name', AutoString(), nullable=False, server_default=''))
        batch.add_column(sa.Column('expires_at', AutoString(), nullable=True))
        batch.add_column(sa.Column('last_used_at', AutoString(), nullable=True))
        batch.add_column(sa.Column('revoked_at', AutoString(), nullable=True))
        batch.add_column(sa.Column('revoked_by', AutoString(), nullable=False,
                                   server_default=''))
    connection = op.get_bind()
    rows = connection.execute(sa.text("SELECT id, created_at, revoked FROM api_token")).all()
    for token_id, created_at, revoked in rows:
        connection.execute(
            sa.text("UPDATE api_token SET name = :name, expires_at = :expires, "
                    "revoked_at = :revoked_at, revoked_by = :revoked_by WHERE id = :id"),
            {"id": token_id, "name": f"token {token_id}",
             "expires": _iso(_made_at(created_at, now) + ttl),
             "revoked_at": _iso(now) if revoked else None,
             "revoked_by": "migration 0011" if revoked else ""})
    with op.batch_alter_table('api_token') as batch:
        batch.alter_column('expires_at', existing_type=AutoString(), nullable=False)
        batch.drop_column('revoked')


def downgrade() -> None:
    with op.batch_alter_table('api_token') as batch:
        batch.add_column(sa.Column('revoked', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    # Expired tokens count as revoked in the old schema, which knew no expiry.
    op.get_bind().execute(sa.text("UPDATE api_token SET revoked = 1 WHERE revoked_at IS NOT NULL "
                                  "OR expires_at <= :now"), {"now": _iso(datetime.now(UTC))})
    with op.batch_alter_table('api_token') as batch:
        for column in ('revoked_by', 'revoked_at', 'last_used_at', 'expires_at', 'name'):
            batch.drop_column(column)
    with op.batch_alter_table('user') as batch:
        batch.drop_column('session_epoch')
