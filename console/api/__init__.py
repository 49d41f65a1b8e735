"""The JSON API, /api/v1, authenticated by bearer tokens only (never the session cookie).

Paths here are contracts: keep them.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, request

from console.guards import api_error, api_requires, caller, core
from console.permissions import Permission
from console.services import sandboxes as sandbox_service
from console.services.errors import ServiceError

api = Blueprint("api", __name__, url_prefix="/api/v1")


@api.errorhandler(ServiceError)
def _service_error(exc: ServiceError) -> Any:
    extra = {"rule": exc.rule} if exc.rule else {}
    return api_error(exc.status, exc.code, exc.message, **extra)


def _number(data: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Bad(f"limits.{key} must be a number")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise _Bad(f"limits.{key} must be a number") from None


class _Bad(ServiceError):
    status, code = 400, "bad_request"


def _launch_order() -> sandbox_service.LaunchOrder:
    """Accepts JSON, or multipart with a `code` file and a `request` JSON field."""
    upload = None
    if request.mimetype == "multipart/form-data":
        try:
            data = json.loads(request.form.get("request", "{}"))
        except json.JSONDecodeError as exc:
            raise _Bad(f"the 'request' field is not JSON: {exc}") from None
        upload = request.files.get("code")
    else:
        data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise _Bad("send a JSON object")
    datasets = data.get("datasets") or ([data["dataset"]] if data.get("dataset") else [])
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        raise _Bad("datasets must be a list of dataset names")
    limits = data.get("limits") or {}
    if not isinstance(limits, dict):
        raise _Bad("limits must be an object")
    example = data.get("example")
    if example is not None and not isinstance(example, str):
        raise _Bad("example must be a name")
    command = data.get("command", sandbox_service.DEFAULT_COMMAND)
    if not isinstance(command, str):
        raise _Bad("command must be a string")
    order = sandbox_service.LaunchOrder(
        datasets=datasets, example=example, command=command,
        cpus=_number(limits, "cpus", float, 1.0),
        memory_mb=_number(limits, "memory_mb", int, 2048),
        pids=_number(limits, "pids", int, 256),
        timeout_s=_number(limits, "timeout_s", int, 1800))
    if upload is not None and upload.filename:
        order.code_name, order.code = upload.filename, upload.read()
    return order


@api.route("/sandboxes", methods=["POST"])
@api_requires(Permission.SANDBOX_LAUNCH)
def create_sandbox() -> Any:
    try:
        order = _launch_order()
    except _Bad as exc:
        # refused before the service saw it: audit as the service would
        sandbox_service.audit_refused_launch(core(), caller(), exc.message)
        raise
    record = sandbox_service.launch(core(), caller(), order)
    response = jsonify(sandbox_service.to_dict(record))
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/sandboxes/{record.id}"
    return response


@api.route("/sandboxes", methods=["GET"])
@api_requires(Permission.SANDBOX_READ)
def list_sandboxes() -> Any:
    return jsonify({"sandboxes": [sandbox_service.to_dict(r)
                                  for r in sandbox_service.list_for(core(), caller())]})


@api.route("/sandboxes/<sandbox_id>", methods=["GET"])
@api_requires(Permission.SANDBOX_READ)
def get_sandbox(sandbox_id: str) -> Any:
    return jsonify(sandbox_service.to_dict(sandbox_service.get(core(), caller(), sandbox_id)))


@api.route("/sandboxes/<sandbox_id>/logs", methods=["GET"])
@api_requires(Permission.LOGS_READ)
def sandbox_logs(sandbox_id: str) -> Any:
    offset = request.args.get("offset", default=0, type=int)
    chunk, total = sandbox_service.logs(core(), caller(), sandbox_id, offset=offset)
    if request.args.get("format") == "json":
        return jsonify({"log": chunk.decode("utf-8", "replace"), "offset": offset + len(chunk),
                        "total": total})
    response = Response(chunk, mimetype="text/plain; charset=utf-8")
    response.headers["X-Log-Total"] = str(total)
    return response


@api.route("/sandboxes/<sandbox_id>/stop", methods=["POST"])
@api_requires(Permission.SANDBOX_STOP)
def stop_sandbox(sandbox_id: str) -> Any:
    return jsonify(sandbox_service.to_dict(sandbox_service.stop(core(), caller(), sandbox_id)))


@api.route("/sandboxes/<sandbox_id>/outbox", methods=["GET"])
@api_requires(Permission.OUTBOX_READ)
def sandbox_outbox(sandbox_id: str) -> Any:
    return jsonify({"sandbox": sandbox_id,
                    "files": sandbox_service.outbox(core(), caller(), sandbox_id)})
