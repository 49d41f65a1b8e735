"""the SSH gateway: users' public keys and terminal sessions with their recordings

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'ssh_key',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('name', AutoString(), nullable=False),
        sa.Column('algorithm', AutoString(), nullable=False),
        sa.Column('bits', sa.Integer(), nullable=False),
        sa.Column('fingerprint', AutoString(), nullable=False),
        sa.Column('public_key', AutoString(), nullable=False),
        sa.Column('created_at', AutoString(), nullable=False),
        sa.Column('last_used_at', AutoString(), nullable=True),
        sa.Column('removed_at', AutoString(), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['user.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('ssh_key') as batch:
        batch.create_index('ix_ssh_key_user_id', ['user_id'], unique=False)
        batch.create_index('ix_ssh_key_fingerprint', ['fingerprint'], unique=True)
    op.create_table(
        'terminal_session',
        sa.Column('id', AutoString(), nullable=False),
        sa.Column('user', AutoString(), nullable=False),
        sa.Column('sandbox_id', AutoString(), nullable=False),
        sa.Column('member', AutoString(), nullable=False),
        sa.Column('key_fingerprint', AutoString(), nullable=False),
        sa.Column('source', AutoString(), nullable=False),
        sa.Column('started_at', AutoString(), nullable=False),
        sa.Column('ended_at', AutoString(), nullable=True),
        sa.Column('end_reason', AutoString(), nullable=False),
        sa.Column('end_rule', AutoString(), nullable=False),
        sa.Column('bytes_out', sa.Integer(), nullable=False),
        sa.Column('bytes_in', sa.Integer(), nullable=False),
        sa.Column('recording', AutoString(), nullable=False),
        sa.Column('recording_sha256', AutoString(), nullable=False),
        sa.Column('recording_bytes', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('terminal_session') as batch:
        batch.create_index('ix_terminal_session_user', ['user'], unique=False)
        batch.create_index('ix_terminal_session_sandbox_id', ['sandbox_id'], unique=False)


def downgrade() -> None:
    op.drop_table('terminal_session')
    op.drop_table('ssh_key')
