"""`sealroom audit`: export the audit log and verify an export offline, without the server."""

from __future__ import annotations

import click


@click.group()
def audit() -> None:
    """The audit log: export and offline verification."""
