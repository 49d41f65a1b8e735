"""Errors raised by the audit package; `AuditError` is the root."""

from __future__ import annotations


class AuditError(Exception):
    """Root of every error this package raises."""


class AuditWriteFailed(AuditError):
    """An event could not be appended; the operation it records must not happen."""


class ChainBroken(AuditError):
    """Verification found an event whose hash or link does not hold."""

    def __init__(self, message: str, *, event_id: int) -> None:
        super().__init__(message)
        self.event_id = event_id
