"""/api/v1/policy/*: the active policy, its versions, validation, dry run and activation.

A document is sent as JSON `{"yaml": "..."}` or as the raw body (`Content-Type:
application/yaml` or text/plain). An invalid one answers 400 with `error.line` and every
problem in `error.problems`.
"""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from audit.events import AuditAction
from console.api.blueprint import BadApiRequest as _Bad
from console.api.blueprint import api
from console.guards import api_error, api_requires, caller, core
from console.permissions import Permission
from console.services import disclosure as disclosure_service
from console.services import policy as policy_service
from console.services.policy import InvalidPolicyDocument


@api.errorhandler(InvalidPolicyDocument)
def _invalid(exc: InvalidPolicyDocument) -> Any:
    return api_error(400, exc.code, exc.message, line=exc.line,
                     problems=[p.to_dict() for p in exc.problems])


def _document() -> tuple[str, dict[str, Any]]:
    if request.mimetype in ("application/json", ""):
        data = request.get_json(silent=True)
        if not isinstance(data, dict) or not isinstance(data.get("yaml"), str):
            raise _Bad('send {"yaml": "<policy document>"} or the document itself as '
                       "application/yaml")
        return data["yaml"], data
    return request.get_data(as_text=True), dict(request.args)


@api.route("/policy", methods=["GET"])
@api_requires(Permission.POLICY_READ)
def get_policy() -> Any:
    row = policy_service.active_version(core())
    policy_service.record_view(core(), caller(), f"policy:{row.version}")
    body = policy_service.version_to_dict(row)
    body["policy"] = core().policy.model_dump(mode="json", exclude={"version"})
    return jsonify(body)


@api.route("/policy/versions", methods=["GET"])
@api_requires(Permission.POLICY_READ)
def list_policy_versions() -> Any:
    rows = policy_service.versions(core())
    policy_service.record_view(core(), caller(), "policy:versions")
    return jsonify({"active": rows[0].version,
                    "versions": [policy_service.version_to_dict(r, text=False) for r in rows]})


@api.route("/policy/versions/<int:number>", methods=["GET"])
@api_requires(Permission.POLICY_READ)
def get_policy_version(number: int) -> Any:
    row = policy_service.get_version(core(), number)
    policy_service.record_view(core(), caller(), f"policy:{number}")
    return jsonify(policy_service.version_to_dict(row))


@api.route("/policy/validate", methods=["POST"])
@api_requires(Permission.POLICY_WRITE)
def validate_policy() -> Any:
    text, _ = _document()
    checked = policy_service.validate(core(), caller(), text)
    return jsonify({"valid": True, "sha256": checked.sha256,
                    "warnings": [w.to_dict() for w in checked.warnings]})


@api.route("/policy/dry-run", methods=["POST"])
@api_requires(Permission.POLICY_WRITE)
def dry_run_policy() -> Any:
    text, _ = _document()
    result = policy_service.dry_run(core(), caller(), text)
    active, changes = policy_service.changes(core(), text, result)
    # The same diff the dry-run page shows, as unified-diff text (officers' words, no sandbox's).
    return jsonify({**result.to_dict(), "against": active.version,
                    "diff": "\n".join(line.text for line in changes)})


@api.route("/policy/activate", methods=["POST"])
@api_requires(Permission.POLICY_WRITE)
def activate_policy() -> Any:
    text, data = _document()
    reason, base = data.get("reason", ""), data.get("base_version")
    if not isinstance(reason, str):
        raise _Bad("reason must be a string")
    if isinstance(base, str) and base.isdigit():
        base = int(base)
    if base is not None and (isinstance(base, bool) or not isinstance(base, int)):
        raise _Bad("base_version must be a version number")
    activation = policy_service.activate(core(), caller(), text, reason, base_version=base)
    return _activated(activation)


@api.route("/policy/versions/<int:number>/restore", methods=["POST"])
@api_requires(Permission.POLICY_WRITE)
def restore_policy_version(number: int) -> Any:
    reason = (request.get_json(silent=True) or {}).get("reason", "")
    if not isinstance(reason, str):
        raise _Bad("reason must be a string")
    return _activated(policy_service.restore(core(), caller(), number, reason))


def _activated(activation: policy_service.Activation) -> Any:
    body = policy_service.version_to_dict(activation.version, text=False)
    body["dry_run"] = activation.result.to_dict()
    response = jsonify(body)
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/policy/versions/{activation.version.version}"
    return response


@api.route("/disclosure", methods=["GET"])
@api_requires(Permission.DISCLOSURE_READ)
def get_disclosure() -> Any:
    """A user's disclosure spending (`?user=`), or every user's today."""
    user = (request.args.get("user") or "").strip()
    if len(user) > 64:
        raise _Bad("user is at most 64 characters")
    core().record(caller().actor, AuditAction.DISCLOSURE_VIEW,
                  target=f"user:{user}" if user else "disclosure:today",
                  request_id=caller().request_id)
    if user:
        return jsonify(disclosure_service.usage(core(), user))
    return jsonify({"day": disclosure_service.today(),
                    "users": disclosure_service.users_today(core())})
