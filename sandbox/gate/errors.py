"""Errors raised by the release gate; `GateError` is the root.

Each refusal is its own type so a check can say precisely why a file may not leave. The
`user_message` is shown to the engineer before any approval, so it is composed only of the
gate's own words, numbers and positions, never of anything read from the file under review;
what the file really held (a key, a tensor name, a checker message) goes in `detail`, for the log.
"""

from __future__ import annotations


class GateError(Exception):
    """Root of every error the release gate raises. Its own root, not the sandbox runtime's:
    the gate runs on files copied out of a sandbox and needs nothing of the runtime."""

    #: HTTP-ish status the console should map this error to.
    status = 422

    def __init__(self, user_message: str, *, detail: str | None = None) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.detail = detail or user_message


class BlobRefused(GateError):
    """A file that cannot be taken into the blob store: not a regular file, unreadable, or
    larger than the limit."""

    status = 400


class InvalidFormat(GateError):
    """A file is not what its extension says, is malformed or ambiguous as that type, or holds
    more text than the type needs (names, metadata, doc strings).

    `limit` names the `CheckRules` field that refused it, where one did."""

    def __init__(self, user_message: str, *, limit: str = "", detail: str | None = None) -> None:
        super().__init__(user_message, detail=detail)
        self.limit = limit


class UnsafePickle(GateError):
    """A pickle imports or calls something outside the allowlist of torch reconstructors."""

    def __init__(self, user_message: str, *, global_name: str | None = None,
                 detail: str | None = None) -> None:
        super().__init__(user_message, detail=detail)
        self.global_name = global_name


class MetricsRefused(GateError):
    """A metrics file carries more than short names and finite numbers, or a small count.

    `limit` names the `CheckRules` field that refused it, where one did."""

    def __init__(self, user_message: str, *, limit: str = "", detail: str | None = None) -> None:
        super().__init__(user_message, detail=detail)
        self.limit = limit


class DatasetUnreadable(GateError):
    """A mounted dataset cannot be read to build the leak-scan index."""

    status = 500


class DatasetLeak(GateError):
    """A released file holds a record of a mounted dataset verbatim."""
