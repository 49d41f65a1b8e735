"""The audit tables. Rows are only ever inserted: `hash` chains each event to the previous
one, and each checkpoint signs the chain's head at a tree size."""

from __future__ import annotations

from sqlmodel import Field, SQLModel

#: Version of new events: 2 encodes `details` per RFC 8785 (1: sorted `json.dumps`).
SCHEMA_VERSION = 2


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    schema_version: int = Field(default=SCHEMA_VERSION)
    time: str = Field(index=True)
    actor: str = Field(index=True)
    actor_role: str = ""
    auth_method: str = ""
    source: str = ""
    action: str = Field(index=True)
    target: str = Field(default="", index=True)
    outcome: str = Field(index=True)
    reason: str = ""
    request_id: str = Field(default="", index=True)
    details: str = "{}"
    prev_hash: str
    hash: str = Field(unique=True)


class AuditCheckpoint(SQLModel, table=True):
    """A signed statement: the chain had `tree_size` events and its head was `head_hash`."""

    __tablename__ = "audit_checkpoint"

    id: int | None = Field(default=None, primary_key=True)
    tree_size: int = Field(unique=True, index=True)
    head_hash: str
    time: str
    keyid: str
    signature: str
