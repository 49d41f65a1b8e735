"""what a sandbox was launched as (kind, MPI ranks, GPUs), so a policy dry run can decide
about it exactly as its launch was decided

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sandbox') as batch:
        batch.add_column(sa.Column('kind', AutoString(), nullable=False,
                                   server_default='single'))
        batch.add_column(sa.Column('ranks', sa.Integer(), nullable=False, server_default='1'))
        batch.add_column(sa.Column('gpus', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('sandbox') as batch:
        batch.drop_column('gpus')
        batch.drop_column('ranks')
        batch.drop_column('kind')
