"""Auditor pages: the event list with filters and paging, event detail, per-sandbox and
per-release timelines, the chain's status at a glance, the export, and terminal sessions
with their recordings replayed in the browser. All audited."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, make_response, render_template, request

from audit.events import AuditAction
from console.api.audit import export_response, filters_from_args, recording_response
from console.guards import caller, core, requires
from console.params import whole_number
from console.permissions import Permission
from console.services import audit_log, recordings
from console.services.errors import ServiceError

audit_pages = Blueprint("audit_pages", __name__, url_prefix="/audit")


def _error(exc: ServiceError) -> Any:
    return render_template("error.html", status=exc.status, message=exc.message), exc.status


def _cursor(name: str) -> int | None:
    return whole_number(request.args.get(name))


@audit_pages.route("")
@requires(Permission.AUDIT_READ)
def events() -> Any:
    filters = filters_from_args()
    try:
        page = audit_log.search(core(), caller(), filters, before=_cursor("before"),
                                after=_cursor("after"))
    except ServiceError as exc:
        return render_template("audit_events.html", page=None, filters=filters,
                               error=exc.message, status=audit_log.last_verification(core()),
                               outcomes=audit_log.OUTCOMES), exc.status
    return render_template("audit_events.html", page=page, filters=filters, error="",
                           status=audit_log.last_verification(core()),
                           outcomes=audit_log.OUTCOMES)


@audit_pages.route("/events/<int:event_id>")
@requires(Permission.AUDIT_READ)
def event(event_id: int) -> Any:
    try:
        record = audit_log.get_event(core(), caller(), event_id)
    except ServiceError as exc:
        return _error(exc)
    kind, _, object_id = record.target.partition(":")
    return render_template(
        "audit_event.html", event=record,
        details=json.dumps(json.loads(record.details or "{}"), indent=2, sort_keys=True),
        timeline=(kind, object_id) if kind in ("sandbox", "release") and object_id else None,
        terminal=object_id if kind == "terminal" and record.action in _TERMINAL_ACTIONS
        else None)


_TERMINAL_ACTIONS = frozenset(a.value for a in (
    AuditAction.SSH_OPEN, AuditAction.SSH_END, AuditAction.SSH_REFUSE,
    AuditAction.SSH_RECORDING_VIEW, AuditAction.AUDIT_VIEW))


@audit_pages.route("/timeline/<kind>/<object_id>")
@requires(Permission.AUDIT_READ)
def timeline(kind: str, object_id: str) -> Any:
    try:
        rows = audit_log.timeline(core(), caller(), kind, object_id)
    except ServiceError as exc:
        return _error(exc)
    return render_template("audit_timeline.html", kind=kind, object_id=object_id, events=rows)


@audit_pages.route("/chain")
@requires(Permission.AUDIT_READ)
def chain() -> Any:
    """Verifies the whole chain against the signed checkpoints each time it is opened."""
    status = audit_log.verify_chain(core(), caller())
    return render_template("audit_chain.html", status=status,
                           checkpoints=audit_log.checkpoints(core(), caller())[-10:][::-1])


@audit_pages.route("/export")
@requires(Permission.AUDIT_EXPORT)
def export() -> Any:
    return export_response()


# --- terminal sessions ---------------------------------------------------------------------

#: The replay page's policy: the site's, plus what asciinema-player 3 needs. It compiles its
#: terminal emulator from WebAssembly, which `script-src 'self'` forbids; 'wasm-unsafe-eval'
#: allows that and no JavaScript eval. Styles stay 'self' (the player sets its cells' colours
#: through the CSSOM, which the CSP allows; the browser test checks no violation is reported).
REPLAY_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
              "script-src 'self' 'wasm-unsafe-eval'; frame-ancestors 'none'; "
              "form-action 'self'")


@audit_pages.route("/sessions")
@requires(Permission.AUDIT_READ)
def sessions() -> Any:
    """Console-composed text only: who, where, when, why it ended, byte counts."""
    filters = {"user": request.args.get("user", ""), "sandbox": request.args.get("sandbox", "")}
    try:
        page = recordings.sessions(core(), caller(), user=filters["user"],
                                   sandbox=filters["sandbox"],
                                   cursor=request.args.get("cursor") or None)
    except ServiceError as exc:
        return render_template("audit_sessions.html", page=None, filters=filters,
                               error=exc.message), exc.status
    return render_template("audit_sessions.html", page=page, filters=filters, error="")


@audit_pages.route("/sessions/<session_id>")
@requires(Permission.AUDIT_READ)
def terminal_session(session_id: str) -> Any:
    """The session's facts (console-composed) and the player, which fetches the recording
    from `recording_file` (charged bytes re-shown, audited there)."""
    try:
        row = recordings.session(core(), caller(), session_id)
    except ServiceError as exc:
        return _error(exc)
    response = make_response(render_template(
        "audit_session.html", s=row, state=recordings.recording_state(core(), row)))
    response.headers["Content-Security-Policy"] = REPLAY_CSP
    return response


@audit_pages.route("/sessions/<session_id>/recording.cast")
@requires(Permission.AUDIT_READ)
def recording_file(session_id: str) -> Any:
    try:
        return recording_response(session_id)
    except ServiceError as exc:
        return _error(exc)
