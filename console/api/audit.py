"""/api/v1/audit/*: events (filters, keyset paging), one event, the export, checkpoints, the
chain status, terminal sessions and their recordings, and the audit public key. Auditor and
admin only; every call is audited."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Response, jsonify, request, send_file, stream_with_context

from audit.export import MEDIA_TYPE
from console.api.blueprint import api
from console.guards import api_requires, caller, core
from console.params import whole_number
from console.permissions import Permission
from console.services import audit_log, recordings
from console.services.errors import BadRequest


def _int_arg(name: str) -> int | None:
    value = request.args.get(name)
    if value in (None, ""):
        return None
    number = whole_number(value)
    if number is None:
        raise BadRequest(f"{name} must be a whole number")
    return number


def filters_from_args() -> audit_log.EventFilter:
    args = request.args
    return audit_log.EventFilter(
        actor=args.get("actor", ""), action=args.get("action", ""),
        target=args.get("target", ""), outcome=args.get("outcome", ""),
        since=args.get("since", ""), until=args.get("until", ""),
        hide_reads=args.get("hide_reads", ""))


@api.route("/audit/events", methods=["GET"])
@api_requires(Permission.AUDIT_READ)
def audit_events() -> Any:
    limit = _int_arg("limit")
    limit = audit_log.PAGE_SIZE if limit is None else limit
    page = audit_log.search(core(), caller(), filters_from_args(), before=_int_arg("before"),
                            after=_int_arg("after"), limit=limit)

    def link(**cursor: int) -> str:
        return "/api/v1/audit/events?" + urlencode({**page.filters, "limit": limit, **cursor})

    return jsonify({
        "events": [audit_log.to_dict(e) for e in page.events],
        "filters": page.filters,
        "older": link(before=page.older) if page.older is not None else None,
        "newer": link(after=page.newer) if page.newer is not None else None,
    })


@api.route("/audit/events/<int:event_id>", methods=["GET"])
@api_requires(Permission.AUDIT_READ)
def audit_event(event_id: int) -> Any:
    return jsonify(audit_log.to_dict(audit_log.get_event(core(), caller(), event_id)))


@api.route("/audit/chain", methods=["GET"])
@api_requires(Permission.AUDIT_READ)
def audit_chain() -> Any:
    return jsonify(audit_log.verify_chain(core(), caller()))


@api.route("/audit/checkpoints", methods=["GET"])
@api_requires(Permission.AUDIT_READ)
def audit_checkpoints() -> Any:
    return jsonify({"checkpoints": audit_log.checkpoints(core(), caller())})


def export_response() -> Response:
    """The export, streamed as a download (the pages offer the same file)."""
    lines = audit_log.export_lines(core(), caller())
    response = Response(stream_with_context(lines), mimetype=MEDIA_TYPE)
    response.headers["Content-Disposition"] = "attachment; filename=audit-export.jsonl"
    return response


@api.route("/audit/export", methods=["GET"])
@api_requires(Permission.AUDIT_EXPORT)
def audit_export() -> Any:
    return export_response()


@api.route("/keys/audit.pem", methods=["GET"])
@api_requires(Permission.AUDIT_READ)
def audit_key() -> Any:
    """The audit key's public half(s), to verify an export and its checkpoints offline."""
    return Response(audit_log.public_pem(core(), caller()), mimetype="application/x-pem-file")


@api.route("/audit/sessions", methods=["GET"])
@api_requires(Permission.AUDIT_READ)
def audit_sessions() -> Any:
    """Terminal sessions, newest first: console-composed fields only."""
    limit = _int_arg("limit")
    page = recordings.sessions(
        core(), caller(), user=request.args.get("user"), sandbox=request.args.get("sandbox"),
        limit=recordings.PAGE_SIZE if limit is None else limit,
        cursor=request.args.get("cursor") or None)
    older = None
    if page.older is not None:
        older = "/api/v1/audit/sessions?" + urlencode(
            {**page.filters, "limit": limit or recordings.PAGE_SIZE, "cursor": page.older})
    return jsonify({"sessions": [recordings.to_dict(s) for s in page.sessions],
                    "filters": page.filters, "older": older})


@api.route("/audit/sessions/<session_id>", methods=["GET"])
@api_requires(Permission.AUDIT_READ)
def audit_session(session_id: str) -> Any:
    row = recordings.session(core(), caller(), session_id)
    state = recordings.recording_state(core(), row)
    return jsonify({**recordings.to_dict(row),
                    "recording_state": {"state": state.state,
                                        "chain_sha256": state.chain_sha256,
                                        "message": state.message}})


def recording_response(session_id: str) -> Response:
    """The recording as a download (the replay page's player fetches the same): the output
    in it was charged when first sent; this re-showing is audited and spends nothing."""
    path = recordings.recording(core(), caller(), session_id)
    return send_file(path, mimetype=recordings.MEDIA_TYPE, as_attachment=True,
                     download_name=f"{session_id}.cast", max_age=0, conditional=False,
                     etag=False)


@api.route("/audit/sessions/<session_id>/recording", methods=["GET"])
@api_requires(Permission.AUDIT_READ)
def audit_session_recording(session_id: str) -> Any:
    return recording_response(session_id)
