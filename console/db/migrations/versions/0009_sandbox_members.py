"""each member's last observed status (a cluster's ranks), as the supervisor saw it

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sandbox') as batch:
        batch.add_column(sa.Column('members', sa.String(), nullable=False,
                                   server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('sandbox') as batch:
        batch.drop_column('members')
