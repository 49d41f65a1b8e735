"""index audit events by request id (the console checks every request left one)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_audit_event_request_id', 'audit_event', ['request_id'])


def downgrade() -> None:
    op.drop_index('ix_audit_event_request_id', table_name='audit_event')
