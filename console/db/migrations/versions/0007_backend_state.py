"""a sandbox's backend state as JSON (its members and network), replacing the single handle

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sandbox') as batch:
        batch.add_column(sa.Column('backend_state', sa.String(), nullable=False,
                                   server_default='{}'))
    # A handle named one container: the launcher of a one-member sandbox with no network.
    op.execute(
        "UPDATE sandbox SET backend_state = json_object("
        "'members', json_array(json_object('name', 'main', 'container', handle)), "
        "'plan', 'none', 'network', '') WHERE handle != ''")
    with op.batch_alter_table('sandbox') as batch:
        batch.drop_column('handle')


def downgrade() -> None:
    with op.batch_alter_table('sandbox') as batch:
        batch.add_column(sa.Column('handle', sa.String(), nullable=False, server_default=''))
    op.execute(
        "UPDATE sandbox SET handle = coalesce(json_extract(backend_state, "
        "'$.members[0].container'), '')")
    with op.batch_alter_table('sandbox') as batch:
        batch.drop_column('backend_state')
