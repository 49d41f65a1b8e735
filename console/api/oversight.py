"""/api/v1/oversight/*: every live sandbox of every user (officers and auditors), and the
security officer's stop of any of them (`console.services.oversight`)."""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from console.api.blueprint import BadApiRequest as _Bad
from console.api.blueprint import api
from console.guards import api_requires, api_requires_any, caller, core
from console.permissions import Permission
from console.services import oversight as oversight_service
from console.services import sandboxes as sandbox_service


@api.route("/oversight/sandboxes", methods=["GET"])
@api_requires_any(Permission.SANDBOX_OVERSEE, Permission.SANDBOX_INSPECT)
def running_sandboxes() -> Any:
    rows = oversight_service.running(core(), caller())
    return jsonify({"policy_version": core().policy.version,
                    "sandboxes": [row.to_dict() for row in rows]})


@api.route("/oversight/sandboxes/<sandbox_id>/stop", methods=["POST"])
@api_requires(Permission.SANDBOX_OVERSEE)
def stop_any_sandbox(sandbox_id: str) -> Any:
    data = request.get_json(silent=True) if request.content_length else {}
    if not isinstance(data, dict):
        raise _Bad('send {"reason": "..."} or no body')
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise _Bad("reason must be a string")
    record = oversight_service.stop(core(), caller(), sandbox_id, reason)
    return jsonify(sandbox_service.to_dict(record))
