"""Where an id leads for the person looking: the one place pages decide whether a sandbox id
shown to this viewer is a link, and to which page."""

from __future__ import annotations

from flask import url_for

from console.web import may


def sandbox_link(sandbox_id: str) -> str | None:
    """The read-only sandbox page (auditors), else its lineage (officers), else nowhere (an
    engineer's own sandboxes are linked by the pages that list them)."""
    if may("SANDBOX_INSPECT"):
        return url_for("engineer.detail", sandbox_id=sandbox_id)
    if may("LINEAGE_READ"):
        return url_for("lineage_pages.sandbox", sandbox_id=sandbox_id)
    return None
