"""`sealroom policy`: validate, activate and show policy documents."""

from __future__ import annotations

import click


@click.group()
def policy() -> None:
    """Policies: what may be used and what may leave."""
