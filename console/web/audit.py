"""Auditor pages: the event list with filters (reads hidden on request) and paging, event
detail, per-sandbox and per-release timelines, the chain's status at a glance, the export,
the audit public key, and terminal sessions with their recordings replayed in the browser.
All audited. Ids of sandboxes, releases, users and sessions in events are links."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, make_response, render_template, request, url_for
from flask_login import current_user

from audit.events import AuditAction
from console.api.audit import export_response, filters_from_args, recording_response
from console.guards import caller, core, requires
from console.params import whole_number
from console.permissions import Permission, role_has
from console.services import audit_log, recordings
from console.services.errors import NotFound, ServiceError

audit_pages = Blueprint("audit_pages", __name__, url_prefix="/audit")


def _error(exc: ServiceError) -> Any:
    return render_template("error.html", status=exc.status, message=exc.message), exc.status


def _cursor(name: str) -> int | None:
    return whole_number(request.args.get(name))


def target_url(target: str) -> str | None:
    """Where an event's target leads: a sandbox's or release's page for a viewer who may
    inspect anyone's (else its timeline), a user's events, a terminal session, an event."""
    kind, _, object_id = target.partition(":")
    if not object_id or " " in target:
        return None
    role = current_user.role
    if kind == "sandbox":
        return url_for("engineer.detail", sandbox_id=object_id) \
            if role_has(role, Permission.SANDBOX_INSPECT) \
            else url_for("audit_pages.timeline", kind=kind, object_id=object_id)
    if kind == "release":
        return url_for("releases.detail", release_id=object_id) \
            if role_has(role, Permission.RELEASE_INSPECT) \
            else url_for("audit_pages.timeline", kind=kind, object_id=object_id)
    if kind == "user":
        return actor_url(object_id)
    if kind == "terminal":
        return url_for("audit_pages.terminal_session", session_id=object_id)
    number = target.removeprefix("audit:event:")
    if target.startswith("audit:event:") and number.isdigit():
        return url_for("audit_pages.event", event_id=int(number))
    return None


def actor_url(name: str) -> str | None:
    """A person's events (the platform's, `system`, too)."""
    return url_for("audit_pages.events", actor=name) if name and name != "anonymous" else None


def _links() -> dict[str, Any]:
    return {"target_url": target_url, "actor_url": actor_url}


def _events_page(page: audit_log.EventPage | None, filters: audit_log.EventFilter,
                 error: str, newest: int) -> str:
    return render_template("audit_events.html", page=page, filters=filters, error=error,
                           status=audit_log.last_verification(core()), newest=newest,
                           outcomes=audit_log.OUTCOMES, read_actions=audit_log.READ_ACTIONS,
                           **_links())


@audit_pages.route("")
@requires(Permission.AUDIT_READ)
def events() -> Any:
    filters = filters_from_args()
    # The newest event as the list reads it: before this read is itself recorded, so the
    # banner's count and the list's first row (unfiltered) are the same event.
    newest = audit_log.newest_event_id(core())
    try:
        page = audit_log.search(core(), caller(), filters, before=_cursor("before"),
                                after=_cursor("after"))
    except ServiceError as exc:
        return _events_page(None, filters, exc.message, newest), exc.status
    return _events_page(page, filters, "", newest)


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
        else None, **_links())


_TERMINAL_ACTIONS = frozenset(a.value for a in (
    AuditAction.SSH_OPEN, AuditAction.SSH_END, AuditAction.SSH_REFUSE,
    AuditAction.SSH_RECORDING_VIEW, AuditAction.AUDIT_VIEW))


@audit_pages.route("/timeline/<kind>/<object_id>")
@requires(Permission.AUDIT_READ)
def timeline(kind: str, object_id: str) -> Any:
    hide_reads = request.args.get("hide_reads") == "1"
    try:
        rows = audit_log.timeline(core(), caller(), kind, object_id)
    except ServiceError as exc:
        return _error(exc)
    shown = [e for e in rows if not (hide_reads and audit_log.is_read(e.action, e.target))]
    return render_template("audit_timeline.html", kind=kind, object_id=object_id,
                           events=shown, hidden=len(rows) - len(shown),
                           hide_reads=hide_reads, **_links())


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


@audit_pages.route("/keys")
@requires(Permission.AUDIT_READ)
def keys() -> Any:
    """The audit key's public halves, active first: what verifies an export and its
    checkpoints offline."""
    return render_template("audit_keys.html", keys=audit_log.public_keys(core(), caller()))


@audit_pages.route("/keys/<keyid>.pem")
@requires(Permission.AUDIT_READ)
def key_file(keyid: str) -> Any:
    """One audit public key as a PEM file, for `sealroom audit verify --key` (one a file)."""
    found = [k for k in audit_log.public_keys(core(), caller()) if k.keyid == keyid]
    if not found:
        return _error(NotFound(f"no audit key {keyid[:64]!r}"))
    name = "audit.pem" if found[0].active else f"audit-{keyid[:16]}.pem"
    return Response(found[0].pem, mimetype="application/x-pem-file",
                    headers={"Content-Disposition": f"attachment; filename={name}"})


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
