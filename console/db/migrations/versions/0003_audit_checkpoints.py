"""audit checkpoints: signed (tree size, head hash, time) statements, append-only

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_checkpoint',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tree_size', sa.Integer(), nullable=False),
    sa.Column('head_hash', AutoString(), nullable=False),
    sa.Column('time', AutoString(), nullable=False),
    sa.Column('keyid', AutoString(), nullable=False),
    sa.Column('signature', AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_checkpoint', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_checkpoint_tree_size'), ['tree_size'],
                              unique=True)
    op.execute("CREATE TRIGGER audit_checkpoint_no_update BEFORE UPDATE ON audit_checkpoint "
               "BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END")
    op.execute("CREATE TRIGGER audit_checkpoint_no_delete BEFORE DELETE ON audit_checkpoint "
               "BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_checkpoint_no_update")
    op.execute("DROP TRIGGER IF EXISTS audit_checkpoint_no_delete")
    with op.batch_alter_table('audit_checkpoint', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_checkpoint_tree_size'))
    op.drop_table('audit_checkpoint')
