"""Auditor pages: the event list with filters and paging, event detail, per-sandbox and
per-release timelines, the chain's status at a glance, and the export. All audited."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, render_template, request

from console.api.audit import export_response, filters_from_args
from console.guards import caller, core, requires
from console.permissions import Permission
from console.services import audit_log
from console.services.errors import ServiceError

audit_pages = Blueprint("audit_pages", __name__, url_prefix="/audit")


def _error(exc: ServiceError) -> Any:
    return render_template("error.html", status=exc.status, message=exc.message), exc.status


def _cursor(name: str) -> int | None:
    value = request.args.get(name, "")
    return int(value) if value.isdigit() else None


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
        timeline=(kind, object_id) if kind in ("sandbox", "release") and object_id else None)


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
