"""Log in and log out. Failed logins are audited and rate-limited (`console.services.flood`:
an attempt is counted before its password is checked)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlparse

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user

from audit.events import AuditAction
from console.extensions import limits
from console.guards import (
    SessionUser,
    caller,
    core,
    public,
    refusal_recorded,
    requires,
    source_address,
    too_many,
)
from console.permissions import Permission
from console.services import accounts
from console.web.forms import LoginForm

auth = Blueprint("auth", __name__)


def start_session_clock() -> None:
    """Called at login: the times the policy's session timeouts (checked in `console.app`)
    count from."""
    now = time.time()
    session["login_at"] = now
    session["seen_at"] = now


def _safe_next(target: str | None) -> str:
    if target and urlparse(target).netloc == "" and target.startswith("/") \
            and not target.startswith("//"):
        return target
    return url_for("home.index")


TOO_MANY_ATTEMPTS = "Too many attempts. Wait a minute and try again."


@auth.route("/login", methods=["GET", "POST"])
@public
def login() -> Any:
    form = LoginForm()
    if form.validate_on_submit():
        name = form.username.data.strip()
        admission = limits.login.admit(name, source_address())
        if not admission:
            refusal_recorded(AuditAction.LOGIN, f"user:{name[:64]}",
                             "too many attempts (rate limited)", limit=admission.refused_by)
            return too_many(TOO_MANY_ATTEMPTS, admission.retry_after_s)
        user = accounts.authenticate(core(), caller(), name, form.password.data)
        if user is not None:
            limits.login.succeeded(admission)
            session.clear()
            login_user(SessionUser(user))
            session.permanent = True
            start_session_clock()
            return redirect(_safe_next(request.args.get("next")))
        flash("Wrong user name or password.", "error")
        return render_template("login.html", form=form), 401
    if request.method == "POST":
        return render_template("login.html", form=form), 400
    if current_user.is_authenticated:
        return redirect(url_for("home.index"))
    return render_template("login.html", form=form)


@auth.route("/logout", methods=["POST"])
@requires(Permission.SELF_READ)
def logout() -> Any:
    core().record(caller().actor, AuditAction.LOGOUT, target=f"user:{current_user.name}",
                  request_id=caller().request_id)
    logout_user()
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))
