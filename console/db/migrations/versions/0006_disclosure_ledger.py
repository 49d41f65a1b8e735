"""the disclosure ledger, the console's own copy of sandbox logs, outbox manifests, and the
label a release file shows before release

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'sandbox_log',
        sa.Column('sandbox_id', sa.String(), sa.ForeignKey('sandbox.id'), primary_key=True),
        sa.Column('cursor', sa.String(), nullable=False, server_default=''),
        sa.Column('base', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('size', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('complete', sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_table(
        'outbox_manifest',
        sa.Column('sandbox_id', sa.String(), sa.ForeignKey('sandbox.id'), primary_key=True),
        sa.Column('state', sa.String(), nullable=False),
        sa.Column('items', sa.String(), nullable=False),
        sa.Column('truncated', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('entries', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('detail', sa.String(), nullable=False, server_default=''),
        sa.Column('created_at', sa.String(), nullable=False),
    )
    op.create_table(
        'disclosure_item',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('sandbox_id', sa.String(), nullable=False),
        sa.Column('user', sa.String(), nullable=False),
        sa.Column('day', sa.String(), nullable=False),
        sa.Column('channel', sa.String(), nullable=False),
        sa.Column('item', sa.String(), nullable=False),
        sa.Column('bytes', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.String(), nullable=False),
        sa.UniqueConstraint('sandbox_id', 'channel', 'item'),
    )
    op.create_index('ix_disclosure_item_sandbox_id', 'disclosure_item', ['sandbox_id'])
    op.create_index('ix_disclosure_item_user', 'disclosure_item', ['user'])
    op.create_index('ix_disclosure_item_day', 'disclosure_item', ['day'])
    with op.batch_alter_table('release_file') as batch:
        batch.add_column(sa.Column('label', sa.String(), nullable=False, server_default=''))
    op.execute("UPDATE release_file SET label = name")


def downgrade() -> None:
    with op.batch_alter_table('release_file') as batch:
        batch.drop_column('label')
    op.drop_table('disclosure_item')
    op.drop_table('outbox_manifest')
    op.drop_table('sandbox_log')
