"""Errors raised by the sandbox package; `SandboxError` is the root.

Each error keeps the message shown to users apart from the detail written to the log,
as JupyterHub's spawners do.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Root of every error this package raises."""

    #: HTTP-ish status the console should map this error to.
    status = 500

    def __init__(self, user_message: str, *, detail: str | None = None) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.detail = detail or user_message


class EngineUnavailable(SandboxError):
    """The container engine does not answer."""

    status = 503


class SandboxNotFound(SandboxError):
    """The backend has no container for this sandbox."""

    status = 404


class InvalidSpec(SandboxError):
    """A spec that can never run safely (bad mount, bad limits, bad command)."""

    status = 400


class InvalidUpload(SandboxError):
    """Uploaded code that cannot be unpacked safely (path traversal, bomb, too large)."""

    status = 400


class ImageBuildError(SandboxError):
    """An image could not be built."""


class ProjectVolumeError(SandboxError):
    """A project's volume could not be made, mounted, filled or removed (or is full)."""
