"""run names and tags: what an engineer calls a sandbox and their labels for it

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sandbox') as batch:
        batch.add_column(sa.Column('name', AutoString(), nullable=False, server_default=''))
        batch.add_column(sa.Column('tags', AutoString(), nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('sandbox') as batch:
        batch.drop_column('tags')
        batch.drop_column('name')
