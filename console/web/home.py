"""The landing page: what this user's role can do."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, url_for
from flask_login import current_user

from console.guards import requires
from console.permissions import Permission, role_has

home = Blueprint("home", __name__)


@home.route("/")
@requires(Permission.SELF_READ)
def index() -> Any:
    if role_has(current_user.role, Permission.SANDBOX_LAUNCH):
        return redirect(url_for("engineer.sandboxes"))
    if role_has(current_user.role, Permission.POLICY_WRITE):
        return redirect(url_for("policy_pages.index"))
    return render_template("home.html")
