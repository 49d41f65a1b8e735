"""work that builds on work: dataset versions, sandbox inputs and lineage, projects

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dataset') as batch:
        batch.drop_index('ix_dataset_name')
        batch.add_column(sa.Column('version', sa.Integer(), nullable=False,
                                   server_default='1'))
        batch.add_column(sa.Column('retired_at', AutoString(), nullable=True))
        batch.add_column(sa.Column('removed_at', AutoString(), nullable=True))
        batch.create_index('ix_dataset_name', ['name'], unique=False)
        batch.create_unique_constraint('uq_dataset_name_version', ['name', 'version'])
    with op.batch_alter_table('sandbox') as batch:
        batch.add_column(sa.Column('inputs', AutoString(), nullable=False,
                                   server_default='[]'))
        batch.add_column(sa.Column('project', AutoString(), nullable=False,
                                   server_default=''))
        batch.add_column(sa.Column('project_parent', AutoString(), nullable=False,
                                   server_default=''))
        batch.add_column(sa.Column('lineage', AutoString(), nullable=False,
                                   server_default='[]'))
        batch.create_index('ix_sandbox_project', ['project'], unique=False)
    # Sandboxes recorded before versions descend from version 1 of each of their datasets.
    op.execute("UPDATE sandbox SET lineage = ("
               "SELECT json_group_array(json_object('name', json_extract(d.value, '$.name'), "
               "'version', 1, 'digest', json_extract(d.value, '$.digest'))) "
               "FROM json_each(sandbox.datasets) AS d)")
    op.create_table(
        'sandbox_input',
        sa.Column('sandbox_id', AutoString(), nullable=False),
        sa.Column('source_id', AutoString(), nullable=False),
        sa.ForeignKeyConstraint(['sandbox_id'], ['sandbox.id']),
        sa.ForeignKeyConstraint(['source_id'], ['sandbox.id']),
        sa.PrimaryKeyConstraint('sandbox_id', 'source_id'))
    op.create_index('ix_sandbox_input_source_id', 'sandbox_input', ['source_id'])
    op.create_table(
        'project',
        sa.Column('name', AutoString(), nullable=False),
        sa.Column('owner_id', sa.Integer(), nullable=False),
        sa.Column('owner', AutoString(), nullable=False),
        sa.Column('quota_mb', sa.Integer(), nullable=False),
        sa.Column('created_at', AutoString(), nullable=False),
        sa.Column('lineage', AutoString(), nullable=False, server_default='[]'),
        sa.Column('last_sandbox', AutoString(), nullable=False, server_default=''),
        sa.ForeignKeyConstraint(['owner_id'], ['user.id']),
        sa.PrimaryKeyConstraint('name'))
    op.create_index('ix_project_owner_id', 'project', ['owner_id'])
    op.create_index('ix_project_owner', 'project', ['owner'])


def downgrade() -> None:
    op.drop_table('project')
    op.drop_table('sandbox_input')
    with op.batch_alter_table('sandbox') as batch:
        batch.drop_index('ix_sandbox_project')
        for column in ('lineage', 'project_parent', 'project', 'inputs'):
            batch.drop_column(column)
    with op.batch_alter_table('dataset') as batch:
        batch.drop_constraint('uq_dataset_name_version', type_='unique')
        batch.drop_index('ix_dataset_name')
        for column in ('removed_at', 'retired_at', 'version'):
            batch.drop_column(column)
        batch.create_index('ix_dataset_name', ['name'], unique=True)
