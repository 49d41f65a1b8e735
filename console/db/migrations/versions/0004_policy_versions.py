"""policy versions: the policy document becomes versioned data; dataset grants move into it

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('policy_version',
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('text', AutoString(), nullable=False),
    sa.Column('sha256', AutoString(), nullable=False),
    sa.Column('author', AutoString(), nullable=False),
    sa.Column('reason', AutoString(), nullable=False),
    sa.Column('created_at', AutoString(), nullable=False),
    sa.Column('restored_from', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('version')
    )
    with op.batch_alter_table('policy_version', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_policy_version_sha256'), ['sha256'], unique=False)

    # Grants made before policies were versioned become version 1's dataset rules; on a
    # fresh database there are none and the console writes version 1 (audited) on start.
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT dataset.name, dataset_grant.principal FROM dataset_grant "
        "JOIN dataset ON dataset.id = dataset_grant.dataset_id ORDER BY dataset_grant.id"
    )).all()
    if rows:
        from policies.edit import with_dataset_rule
        from policies.schema import default_policy_text

        grants: dict[str, list[str]] = {}
        for name, principal in rows:
            grants.setdefault(name, []).append(principal)
        text = default_policy_text()
        for name, principals in grants.items():
            text = with_dataset_rule(text, name, principals)
        bind.execute(sa.text(
            "INSERT INTO policy_version (version, text, sha256, author, reason, created_at) "
            "VALUES (1, :text, :sha, 'system', :reason, :now)"), {
                "text": text, "sha": hashlib.sha256(text.encode()).hexdigest(),
                "reason": "initial policy: policies/default.yaml with the dataset grants "
                          "made before policies were versioned",
                "now": datetime.now(UTC).isoformat(timespec="microseconds").replace(
                    "+00:00", "Z")})
    with op.batch_alter_table('dataset_grant', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dataset_grant_dataset_id'))
    op.drop_table('dataset_grant')


def downgrade() -> None:
    op.create_table('dataset_grant',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('principal', AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('dataset_grant', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_grant_dataset_id'), ['dataset_id'], unique=False)
    with op.batch_alter_table('policy_version', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_policy_version_sha256'))
    op.drop_table('policy_version')
