"""Security officer pages: the active policy, its history and diffs, edit, dry run, activate."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from console.guards import requires
from console.permissions import Permission

policy_pages = Blueprint("policy_pages", __name__, url_prefix="/policy")


@policy_pages.route("")
@requires(Permission.POLICY_READ)
def index() -> Any:
    return render_template("home.html")
