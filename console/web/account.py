"""The account page, for everyone: who you are, changing your own password (the current
one required; your other sessions end), your API tokens (make one, shown once; revoke), and
for engineers their SSH public keys for the gateway (add, remove) with the `ssh` command."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user

from console.guards import SessionUser, caller, core, requires
from console.permissions import Permission, role_has
from console.services import accounts, ssh_keys
from console.services.errors import BadRequest, ServiceError

account_pages = Blueprint("account_pages", __name__, url_prefix="/account")


def _gateway() -> dict[str, Any] | None:
    """What an engineer needs to reach the SSH gateway: the command and the host key's
    fingerprint (None until the gateway has made its key)."""
    if not role_has(current_user.role, Permission.SSH_KEY_SELF):
        return None
    settings = core().settings
    host = settings.ssh_public_host or urlsplit(request.host_url).hostname or "localhost"
    return {"command": f"ssh -p {settings.ssh_port} {current_user.name}@{host}",
            "host_key": ssh_keys.host_key_fingerprint(settings.ssh_host_key),
            "mine": ssh_keys.list_mine(core(), caller())}


def _page(*, status: int = 200, new_token: accounts.NewToken | None = None,
          token_name: str = "", token_days: str = "", ssh_text: str = "",
          ssh_name: str = "") -> Any:
    return render_template(
        "account.html", tokens=accounts.list_tokens(core(), current_user.name),
        new_token=new_token, min_password=accounts.MIN_PASSWORD,
        default_days=core().settings.token_ttl_days, max_days=core().settings.token_max_days,
        token_name=token_name, token_days=token_days, gateway=_gateway(),
        ssh_text=ssh_text, ssh_name=ssh_name, max_key_name=ssh_keys.MAX_NAME), status


@account_pages.route("")
@requires(Permission.SELF_READ)
def index() -> Any:
    return _page()


@account_pages.route("/password", methods=["POST"])
@requires(Permission.PASSWORD_SELF)
def change_password() -> Any:
    current = request.form.get("current", "")
    new, again = request.form.get("new", ""), request.form.get("again", "")
    try:
        if new != again:
            raise BadRequest("the new password and its repetition differ")
        user = accounts.change_own_password(core(), caller(), current, new)
    except ServiceError as exc:
        flash(f"Password not changed: {exc.message}.", "error")
        return _page(status=exc.status)
    login_user(SessionUser(user))  # this session goes on under the new epoch; others end
    flash("Your password is changed. Your other sessions have ended.", "info")
    return redirect(url_for("account_pages.index"), 303)


def _days(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit():
        raise BadRequest("expires in (days) must be a whole number")
    return int(text)


@account_pages.route("/tokens", methods=["POST"])
@requires(Permission.TOKEN_SELF)
def create_token() -> Any:
    name, days = request.form.get("name", ""), request.form.get("expires_in_days", "")
    try:
        made = accounts.issue_token(core(), caller(), current_user.name, name=name,
                                    expires_in_days=_days(days))
    except ServiceError as exc:
        flash(f"No token made: {exc.message}.", "error")
        return _page(status=exc.status, token_name=name, token_days=days)
    return _page(status=201, new_token=made)


@account_pages.route("/tokens/<int:token_id>/revoke", methods=["POST"])
@requires(Permission.TOKEN_SELF)
def revoke_token(token_id: int) -> Any:
    try:
        accounts.revoke_token(core(), caller(), token_id)
    except ServiceError as exc:
        flash(f"Token {token_id} not revoked: {exc.message}.", "error")
        return _page(status=exc.status)
    flash(f"Token {token_id} is revoked: it is refused from now on.", "info")
    return redirect(url_for("account_pages.index"), 303)


@account_pages.route("/ssh-keys", methods=["POST"])
@requires(Permission.SSH_KEY_SELF)
def add_ssh_key() -> Any:
    text, name = request.form.get("public_key", ""), request.form.get("name", "")
    try:
        key = ssh_keys.add(core(), caller(), text, name)
    except ServiceError as exc:
        flash(f"SSH key not added: {exc.message}.", "error")
        # The form keeps what was pasted, to correct it; never a private key pasted by mistake.
        kept = "" if "PRIVATE KEY" in text else text[:ssh_keys.MAX_TEXT]
        return _page(status=exc.status, ssh_text=kept, ssh_name=name)
    flash(f"SSH key {key['name']!r} added ({key['fingerprint']}).", "info")
    return redirect(url_for("account_pages.index", _anchor="ssh-keys"), 303)


@account_pages.route("/ssh-keys/<int:key_id>/remove", methods=["POST"])
@requires(Permission.SSH_KEY_SELF)
def remove_ssh_key(key_id: int) -> Any:
    try:
        key = ssh_keys.remove(core(), caller(), key_id)
    except ServiceError as exc:
        flash(f"SSH key {key_id} not removed: {exc.message}.", "error")
        return _page(status=exc.status)
    flash(f"SSH key {key['name']!r} is removed: the gateway refuses it from now on.", "info")
    return redirect(url_for("account_pages.index", _anchor="ssh-keys"), 303)
