"""Errors raised by the audit package; `AuditError` is the root.

Verification failures carry the step that failed, the kind of tampering found (see
`FailureKind`) and the first event that can no longer be trusted.
"""

from __future__ import annotations

import enum


class AuditError(Exception):
    """Root of every error this package raises."""


class AuditWriteFailed(AuditError):
    """An event could not be appended; the operation it records must not happen."""


class AuditKeyError(AuditError):
    """The audit signing key cannot be made, opened or read."""


class KeyRingError(AuditKeyError):
    """A key ring (`audit.keyring`) cannot be read or changed.

    `user_message` is the ring's own words, `detail` (a path, a library's message) is for the
    log; the text of the error is both, as operators of the audit key have always seen it."""

    def __init__(self, user_message: str, *, detail: str | None = None) -> None:
        self.user_message = user_message
        self.detail = detail or user_message
        super().__init__(user_message if self.detail == user_message
                         else f"{user_message} ({self.detail})")


class KeyPassphraseError(KeyRingError):
    """No usable passphrase, or the passphrase does not open the active private key."""


class KeyRingCorrupt(KeyRingError):
    """A key file is missing or does not match the key ring's index."""


class UnsupportedKey(KeyRingError):
    """A PEM that is not an ECDSA P-256 key (the only kind the rings sign with)."""


class FailureKind(enum.StrEnum):
    """What verification found, named for what someone did to the record."""

    MODIFIED = "modified"
    INSERTED = "inserted"
    DELETED = "deleted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    BAD_CHECKPOINT = "bad_checkpoint"
    MALFORMED = "malformed"


class VerificationFailed(AuditError):
    """Root of the verification errors: one per kind of failure."""

    kind: FailureKind = FailureKind.MALFORMED
    step: str = ""

    def __init__(self, message: str, *, event_id: int | None = None,
                 checkpoint: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.event_id = event_id
        self.checkpoint = checkpoint


class ExportMalformed(VerificationFailed):
    """The export or checkpoint file is not in the format this verifier reads."""

    kind, step = FailureKind.MALFORMED, "format"


class BadCheckpoint(VerificationFailed):
    """A checkpoint's signature does not hold under any of the given keys."""

    kind, step = FailureKind.BAD_CHECKPOINT, "checkpoint_signatures"


class ChainBroken(VerificationFailed):
    """An event whose hash or link does not hold; subclasses say how."""

    step = "chain"

    def __init__(self, message: str, *, event_id: int | None = None,
                 checkpoint: int | None = None) -> None:
        super().__init__(message, event_id=event_id, checkpoint=checkpoint)


class EventModified(ChainBroken):
    kind = FailureKind.MODIFIED


class EventInserted(ChainBroken):
    kind = FailureKind.INSERTED


class EventDeleted(ChainBroken):
    kind = FailureKind.DELETED


class EventsReordered(ChainBroken):
    kind = FailureKind.REORDERED


class LogTruncated(VerificationFailed):
    """The log is shorter than, or differs from, what a signed checkpoint vouches for."""

    kind, step = FailureKind.TRUNCATED, "checkpoint_heads"
