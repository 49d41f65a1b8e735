"""The audit table. Rows are only ever inserted; `hash` chains each row to the previous one."""

from __future__ import annotations

from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 1


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
