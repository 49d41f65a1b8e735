"""training metrics: how far each sandbox's metric lines were read, and the points kept

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'metric_stream',
        sa.Column('sandbox_id', AutoString(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('points', sa.Integer(), nullable=False),
        sa.Column('series', sa.Integer(), nullable=False),
        sa.Column('dropped', AutoString(), nullable=False),
        sa.Column('total_steps', sa.Integer(), nullable=True),
        sa.Column('spent', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['sandbox_id'], ['sandbox.id']),
        sa.PrimaryKeyConstraint('sandbox_id'),
    )
    op.create_table(
        'metric_point',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('sandbox_id', AutoString(), nullable=False),
        sa.Column('rank', sa.Integer(), nullable=False),
        sa.Column('name', AutoString(), nullable=False),
        sa.Column('step', sa.Integer(), nullable=False),
        sa.Column('value', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['sandbox_id'], ['sandbox.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('metric_point') as batch:
        batch.create_index('ix_metric_point_sandbox_id', ['sandbox_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('metric_point') as batch:
        batch.drop_index('ix_metric_point_sandbox_id')
    op.drop_table('metric_point')
    op.drop_table('metric_stream')
