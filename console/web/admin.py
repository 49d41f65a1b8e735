"""Admin pages, so the CLI is not the only way: users (create with a role, deactivate and
reactivate, reset a password), everyone's API tokens and SSH keys (revoke), and registering a
dataset from the host's import directory (the catalogue itself is the datasets pages')."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from console.guards import caller, core, requires
from console.models import Role
from console.permissions import Permission
from console.services import accounts, imports, ssh_keys
from console.services.errors import BadRequest, ServiceError

admin_pages = Blueprint("admin_pages", __name__, url_prefix="/admin")


# --- users ----------------------------------------------------------------------------------


def _users_page(status: int = 200, **form: str) -> Any:
    return render_template("admin_users.html", users=accounts.list_users(core()),
                           roles=[r.value for r in Role], min_password=accounts.MIN_PASSWORD,
                           form=form), status


@admin_pages.route("/users")
@requires(Permission.USER_ADMIN)
def users() -> Any:
    return _users_page()


@admin_pages.route("/users", methods=["POST"])
@requires(Permission.USER_ADMIN)
def create_user() -> Any:
    name, role = request.form.get("name", "").strip(), request.form.get("role", "")
    try:
        if request.form.get("password", "") != request.form.get("again", ""):
            raise BadRequest("the password and its repetition differ")
        accounts.create_user(core(), caller(), name, role, request.form.get("password", ""))
    except ServiceError as exc:
        flash(f"No user created: {exc.message}.", "error")
        return _users_page(exc.status, name=name, role=role)
    flash(f"User {name} ({role}) created.", "info")
    return redirect(url_for("admin_pages.users"), 303)


@admin_pages.route("/users/<name>/deactivate", methods=["POST"])
@requires(Permission.USER_ADMIN)
def deactivate_user(name: str) -> Any:
    try:
        accounts.set_active(core(), caller(), name, False)
    except ServiceError as exc:
        flash(f"{name} not deactivated: {exc.message}.", "error")
        return _users_page(exc.status)
    flash(f"{name} is deactivated: their sessions have ended and their API tokens are "
          "revoked.", "info")
    return redirect(url_for("admin_pages.users"), 303)


@admin_pages.route("/users/<name>/activate", methods=["POST"])
@requires(Permission.USER_ADMIN)
def activate_user(name: str) -> Any:
    try:
        accounts.set_active(core(), caller(), name, True)
    except ServiceError as exc:
        flash(f"{name} not reactivated: {exc.message}.", "error")
        return _users_page(exc.status)
    flash(f"{name} may log in again (with new tokens: the old ones stay revoked).", "info")
    return redirect(url_for("admin_pages.users"), 303)


@admin_pages.route("/users/<name>/password", methods=["POST"])
@requires(Permission.USER_ADMIN)
def reset_password(name: str) -> Any:
    try:
        accounts.set_password(core(), caller(), name, request.form.get("password", ""))
    except ServiceError as exc:
        flash(f"Password of {name} not set: {exc.message}.", "error")
        return _users_page(exc.status)
    flash(f"The password of {name} is set; their sessions have ended.", "info")
    return redirect(url_for("admin_pages.users"), 303)


# --- tokens ---------------------------------------------------------------------------------


def _tokens_page(status: int = 200) -> Any:
    return render_template("admin_tokens.html", tokens=accounts.list_tokens(core()),
                           ssh_keys=ssh_keys.list_all(core())), status


@admin_pages.route("/tokens")
@requires(Permission.TOKEN_ADMIN)
def tokens() -> Any:
    return _tokens_page()


@admin_pages.route("/tokens/<int:token_id>/revoke", methods=["POST"])
@requires(Permission.TOKEN_ADMIN)
def revoke_token(token_id: int) -> Any:
    try:
        accounts.revoke_token(core(), caller(), token_id, any_owner=True)
    except ServiceError as exc:
        flash(f"Token {token_id} not revoked: {exc.message}.", "error")
        return _tokens_page(exc.status)
    flash(f"Token {token_id} is revoked.", "info")
    return redirect(url_for("admin_pages.tokens"), 303)


@admin_pages.route("/ssh-keys/<int:key_id>/revoke", methods=["POST"])
@requires(Permission.TOKEN_ADMIN)
def revoke_ssh_key(key_id: int) -> Any:
    try:
        key = ssh_keys.revoke(core(), caller(), key_id)
    except ServiceError as exc:
        flash(f"SSH key {key_id} not removed: {exc.message}.", "error")
        return _tokens_page(exc.status)
    flash(f"SSH key {key_id} ({key['fingerprint']}) is removed: the gateway refuses it from "
          "now on.", "info")
    return redirect(url_for("admin_pages.tokens", _anchor="ssh-keys"), 303)


# --- datasets from the host -----------------------------------------------------------------


def _datasets_page(status: int = 200, **form: str) -> Any:
    return render_template("admin_datasets.html", root=imports.import_root(core()),
                           entries=imports.candidates(core()), form=form), status


@admin_pages.route("/datasets")
@requires(Permission.DATASET_IMPORT)
def datasets() -> Any:
    return _datasets_page()


@admin_pages.route("/datasets", methods=["POST"])
@requires(Permission.DATASET_IMPORT)
def import_dataset() -> Any:
    entry, name = request.form.get("entry", ""), request.form.get("name", "").strip()
    allow_text = request.form.get("allow", "")
    allow = [a for a in allow_text.replace(",", " ").split() if a]
    try:
        record = imports.register_from_import(core(), caller(), entry, name, allow)
    except ServiceError as exc:
        flash(f"Nothing registered: {exc.message}.", "error")
        return _datasets_page(exc.status, entry=entry, name=name, allow=allow_text)
    flash(f"Dataset {record.label} registered: {record.files} files, {record.size_bytes} "
          f"bytes{', granted to ' + ', '.join(allow) if allow else ' (granted to nobody yet)'}.",
          "info")
    return redirect(url_for("admin_pages.datasets"), 303)
