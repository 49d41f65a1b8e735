"""Release pages: request a release from a sandbox, my releases, the approvers' queue (and
its "waiting on me" count in the navigation), a release's detail with its checks,
provenance, decisions and audit timeline, the review forms, and the rendered view of each of
its files."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user

from audit.events import AuditAction, Outcome
from console.guards import caller, core, public, requires, requires_any
from console.permissions import Permission, role_has
from console.services import model_risk
from console.services import releases as release_service
from console.services.errors import ServiceError

releases = Blueprint("releases", __name__)


@releases.route("/sandboxes/<sandbox_id>/release", methods=["POST"])
@requires(Permission.RELEASE_REQUEST)
def request_release(sandbox_id: str) -> Any:
    try:
        record = release_service.create(core(), caller(), sandbox_id,
                                        request.form.getlist("files"),
                                        request.form.get("justification", ""))
    except ServiceError as exc:
        flash(exc.message, "error")
        return redirect(url_for("engineer.detail", sandbox_id=sandbox_id)), 303
    if record.status == "checks_failed":
        flash("The automated checks refused this release; see the report below.", "error")
    else:
        flash("Release requested. It is now waiting for approvers.", "info")
    return redirect(url_for("releases.detail", release_id=record.id))


#: Characters of a justification the queue shows (the request's page shows all of it).
JUSTIFICATION_PREVIEW = 140


@releases.app_context_processor
def _waiting_on_me() -> dict[str, Any]:
    """`waiting_on_me()` for the navigation: counted only where a page asks (approvers)."""

    def count() -> int:
        return release_service.waiting_count(core(), caller())

    return {"waiting_on_me": count}


@releases.route("/releases")
@requires_any(Permission.RELEASE_READ, Permission.RELEASE_INSPECT)
def index() -> Any:
    rows = release_service.listing(core(), caller())
    reviewer = role_has(current_user.role, Permission.RELEASE_REVIEW)
    queue = release_service.queue(core(), caller()) if reviewer else []
    return render_template("releases.html", releases=rows, queue=queue, reviewer=reviewer,
                           preview=JUSTIFICATION_PREVIEW)


@releases.route("/releases/<release_id>")
@requires_any(Permission.RELEASE_READ, Permission.RELEASE_INSPECT)
def detail(release_id: str) -> Any:
    return _detail_page(release_id)


def _detail_page(release_id: str, *, reject_error: str = "", comment: str = "",
                 status: int = 200) -> Any:
    """The release's page; after a refused form, again with the form's error and values."""
    try:
        record = release_service.get(core(), caller(), release_id)
    except ServiceError as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    core().record(caller().actor, AuditAction.RELEASE_VIEW, target=f"release:{release_id}",
                  request_id=caller().request_id)
    shown = release_service.detail(core(), record)
    body, sandbox = shown.body, shown.sandbox
    events = [{"time": e.time, "actor": e.actor, "action": e.action, "outcome": e.outcome,
               "reason": e.reason} for e in shown.events]
    mine = record.requester == current_user.name
    return render_template(
        "release_detail.html", release=body, sandbox=sandbox,
        model_risk=model_risk.shown(body["checks"]),
        model_risk_attacks=model_risk.attack_titles(core().policy.release.model_risk),
        datasets=json.loads(sandbox.datasets) if sandbox else [], decisions=shown.decisions,
        events=events, mine=mine, reject_error=reject_error, comment=comment,
        can_view_files=release_service.may_view_files(caller(), record),
        can_withdraw=mine and release_service.may_withdraw(record),
        can_review=role_has(current_user.role, Permission.RELEASE_REVIEW) and not mine
        and record.status == "in_review"
        and current_user.name not in body["approvals"],
        can_download=record.status == "released"
        and (mine or current_user.name in body["approvals"])), status


@releases.route("/releases/<release_id>/files/<int:position>")
@requires_any(Permission.RELEASE_READ, Permission.RELEASE_INSPECT)
def file_view(release_id: str, position: int) -> Any:
    """One file of a release as the console renders it (never its raw bytes), a page per
    file so each view is one audited event."""
    try:
        shown = release_service.file_view(core(), caller(), release_id, position)
    except ServiceError as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    return render_template("release_file.html", shown=shown, view=shown["view"])


def _refused_form(message: str) -> None:
    """Bad input in a review form, recorded at the request level (like the API's parse-time
    refusals), not in the release's timeline: it decided nothing about the release."""
    core().record(caller().actor, AuditAction.REQUEST_DENIED,
                  target=f"{request.method} {request.path}"[:200], outcome=Outcome.DENIED,
                  reason=message, request_id=caller().request_id)


@releases.route("/releases/<release_id>/approve", methods=["POST"])
@requires(Permission.RELEASE_REVIEW)
def approve(release_id: str) -> Any:
    try:
        comment = release_service.review_note(request.form.get("comment", ""))
    except ServiceError as exc:
        _refused_form(exc.message)
        flash(f"Your comment: {exc.message}.", "error")
        return _detail_page(release_id, comment=request.form.get("comment", ""), status=400)
    try:
        record = release_service.approve(core(), caller(), release_id, comment)
        flash("Released and signed." if record.status == "released" else "Approved.", "info")
    except ServiceError as exc:
        flash(exc.message, "error")
    return redirect(url_for("releases.detail", release_id=release_id), 303)


@releases.route("/releases/<release_id>/reject", methods=["POST"])
@requires(Permission.RELEASE_REVIEW)
def reject(release_id: str) -> Any:
    try:
        reason = release_service.review_note(request.form.get("reason", ""),
                                             required=release_service.REJECT_NEEDS_REASON)
    except ServiceError as exc:
        _refused_form(exc.message)
        return _detail_page(release_id, reject_error=exc.message, status=400)
    try:
        release_service.reject(core(), caller(), release_id, reason)
        flash("Rejected.", "info")
    except ServiceError as exc:
        flash(exc.message, "error")
    return redirect(url_for("releases.detail", release_id=release_id), 303)


@releases.route("/releases/<release_id>/withdraw", methods=["POST"])
@requires(Permission.RELEASE_WITHDRAW)
def withdraw(release_id: str) -> Any:
    try:
        release_service.withdraw(core(), caller(), release_id, request.form.get("reason", ""))
        flash("Withdrawn.", "info")
    except ServiceError as exc:
        flash(exc.message, "error")
    return redirect(url_for("releases.detail", release_id=release_id), 303)


@releases.route("/releases/<release_id>/bundle")
@requires(Permission.BUNDLE_DOWNLOAD)
def bundle(release_id: str) -> Any:
    try:
        archive = release_service.bundle_archive(core(), caller(), release_id)
    except ServiceError as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    return send_file(archive, mimetype="application/x-tar", as_attachment=True,
                     download_name=f"{release_id}.tar")


@releases.route("/keys")
@public
def keys() -> Any:
    return render_template("keys.html", pem=core().gate_public_pem().decode(),
                           keys=core().gate_public_keys())
