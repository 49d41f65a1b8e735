"""Auditor pages: the event list with filters, event detail, timelines, chain status, export."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from console.guards import requires
from console.permissions import Permission

audit_pages = Blueprint("audit_pages", __name__, url_prefix="/audit")


@audit_pages.route("")
@requires(Permission.AUDIT_READ)
def events() -> Any:
    return render_template("home.html")
