"""Security officer pages: the active policy, its history and diffs, edit with validation as
you type, dry run (with what it changes), activate with a reason, restore through the same dry
run, and the running sandboxes the active policy forbids (with a Stop button; every running
sandbox: `console.web.oversight`)."""

from __future__ import annotations

import contextlib
from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user

from console.guards import caller, core, requires
from console.params import whole_number
from console.permissions import Permission, role_has
from console.services import oversight as oversight_service
from console.services import policy as policy_service
from console.services import sandboxes as sandbox_service
from console.services.errors import ServiceError
from console.services.policy import InvalidPolicyDocument
from console.services.policy_diff import DiffLine
from policies.schema import policy_sha256

policy_pages = Blueprint("policy_pages", __name__, url_prefix="/policy")


def _int_arg(name: str) -> int | None:
    value = whole_number(request.args.get(name))
    return value if value else None


@policy_pages.route("")
@requires(Permission.POLICY_READ)
def index() -> Any:
    history = policy_service.versions(core())
    active = history[0]
    old, new = _int_arg("a"), _int_arg("b")
    diff: list[DiffLine] | None = None
    if old and new:
        try:
            diff = policy_service.diff(core(), old, new)
        except ServiceError as exc:
            flash(exc.message, "error")
    policy_service.record_view(core(), caller(), f"policy:{active.version}")
    oversee = role_has(current_user.role, Permission.SANDBOX_OVERSEE)
    forbidden = policy_service.forbidden_sandboxes(core()) if oversee else []
    return render_template("policy.html", active=active, history=history, diff=diff,
                           a=old or (history[1].version if len(history) > 1 else 1),
                           b=new or active.version, forbidden=forbidden, oversee=oversee,
                           can_write=role_has(current_user.role, Permission.POLICY_WRITE))


@policy_pages.route("/versions/<int:number>")
@requires(Permission.POLICY_READ)
def version(number: int) -> Any:
    try:
        row = policy_service.get_version(core(), number)
    except ServiceError as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    policy_service.record_view(core(), caller(), f"policy:{number}")
    return render_template("policy_version.html", row=row,
                           active=policy_service.active_version(core()),
                           can_write=role_has(current_user.role, Permission.POLICY_WRITE))


def _editor(text: str, base: int, *, status: int = 200, problems: Any = (),
            result: policy_service.DryRun | None = None, reason: str = "",
            restoring: int | None = None) -> Any:
    """The editor page; after a dry run, its result first: what changes against the active
    version, what it would deny, and the activation form (a restore when `restoring`)."""
    active, changes = policy_service.changes(core(), text, result) if result else (None, [])
    return render_template("policy_edit.html", text=text, base=base, problems=problems,
                           result=result, reason=reason, restoring=restoring,
                           active=active, changes=changes), status


def _restoring(text: str) -> int | None:
    """The earlier version this form says it restores, if `text` is that version's document
    (once edited, it is a new document, activated as such)."""
    number = whole_number(request.form.get("restored_from"))
    if not number:
        return None
    with contextlib.suppress(ServiceError):
        if policy_service.get_version(core(), number).sha256 == policy_sha256(text):
            return number
    return None


@policy_pages.route("/edit")
@requires(Permission.POLICY_WRITE)
def edit() -> Any:
    active = policy_service.active_version(core())
    return _editor(active.text, active.version)


@policy_pages.route("/check", methods=["POST"])
@requires(Permission.POLICY_WRITE)
def check() -> Any:
    """Validation as you type: JSON in, problems with their lines out. Not audited: it
    changes nothing and would record every keystroke; dry runs and activations are."""
    body = request.get_json(silent=True)
    text = body.get("yaml") if isinstance(body, dict) else None
    if not isinstance(text, str):
        return jsonify({"error": {"code": "bad_request", "message": "send {\"yaml\": text}"}}), 400
    try:
        checked = policy_service.check(core(), text)
    except InvalidPolicyDocument as exc:
        return jsonify({"valid": False, "problems": [p.to_dict() for p in exc.problems],
                        "warnings": []})
    return jsonify({"valid": True, "problems": [],
                    "warnings": [w.to_dict() for w in checked.warnings]})


def _posted_text() -> str:
    """The document as posted: a browser sends a textarea's line breaks as CRLF, and the
    same document must hash (and compare with a stored version) the same from every client."""
    return request.form.get("yaml", "").replace("\r\n", "\n")


def _base() -> int:
    return whole_number(request.form.get("base_version")) or 0


@policy_pages.route("/dry-run", methods=["POST"])
@requires(Permission.POLICY_WRITE)
def dry_run() -> Any:
    text = _posted_text()
    restoring = _restoring(text)
    try:
        result = policy_service.dry_run(core(), caller(), text, restoring=restoring)
    except InvalidPolicyDocument as exc:
        flash("The policy does not validate; nothing was changed.", "error")
        return _editor(text, _base(), status=400, problems=exc.problems)
    return _editor(text, _base(), result=result, restoring=restoring)


@policy_pages.route("/activate", methods=["POST"])
@requires(Permission.POLICY_WRITE)
def activate() -> Any:
    text, reason = _posted_text(), request.form.get("reason", "")
    checked_sha = request.form.get("dry_run_sha256", "")
    restoring = _restoring(text)
    try:
        if checked_sha != policy_sha256(text):
            # the text changed after its dry run: show what this text would do first
            flash("The policy changed since its dry run; here is the dry run of this text.",
                  "error")
            result = policy_service.dry_run(core(), caller(), text, restoring=restoring)
            return _editor(text, _base(), status=409, result=result, reason=reason,
                           restoring=restoring)
        if restoring:
            activation = policy_service.restore(core(), caller(), restoring, reason,
                                                base_version=_base())
        else:
            activation = policy_service.activate(core(), caller(), text, reason,
                                                 base_version=_base())
    except InvalidPolicyDocument as exc:
        flash("The policy does not validate; nothing was changed.", "error")
        return _editor(text, _base(), status=400, problems=exc.problems)
    except ServiceError as exc:
        flash(exc.message, "error")
        result = None
        with contextlib.suppress(ServiceError):
            result = policy_service.dry_run(core(), caller(), text, restoring=restoring)
        return _editor(text, _base(), status=exc.status, result=result, reason=reason,
                       restoring=restoring)
    _flash_activation(activation)
    return redirect(url_for("policy_pages.index"))


def _flash_activation(activation: policy_service.Activation) -> None:
    result = activation.result
    denied = [f for f in result.releases if f.denied]
    flash(f"Policy version {activation.version.version} is active. "
          f"{len(result.sandboxes)} running sandbox(es) it forbids are listed below; "
          f"{len(denied)} open release request(s) failed its checks.", "info")


@policy_pages.route("/versions/<int:number>/restore", methods=["POST"])
@requires(Permission.POLICY_WRITE)
def restore(number: int) -> Any:
    """Restore goes through the dry run: version `number`'s document in the editor, what it
    changes against the active version and what it would deny, then activation (confirmed)."""
    try:
        old, result = policy_service.restore_dry_run(core(), caller(), number)
    except InvalidPolicyDocument as exc:
        flash(f"Version {number}'s document does not validate now; nothing was changed.",
              "error")
        text = policy_service.get_version(core(), number).text
        return _editor(text, policy_service.active_version(core()).version, status=400,
                       problems=exc.problems)
    except ServiceError as exc:
        return render_template("error.html", status=exc.status, message=exc.message), \
            exc.status
    return _editor(old.text, policy_service.active_version(core()).version, result=result,
                   restoring=number)


@policy_pages.route("/sandboxes/<sandbox_id>/stop", methods=["POST"])
@requires(Permission.SANDBOX_OVERSEE)
def stop_sandbox(sandbox_id: str) -> Any:
    try:
        # the officer's stop (`console.services.oversight`); with no reason given, only a
        # sandbox the active policy forbids is stopped from here
        record = oversight_service.stop(core(), caller(), sandbox_id)
    except ServiceError as exc:
        flash(exc.message, "error")
        return redirect(url_for("policy_pages.index")), 303
    flash(sandbox_service.stop_message(record), "info")  # what was recorded, in words
    return redirect(url_for("policy_pages.index"))
