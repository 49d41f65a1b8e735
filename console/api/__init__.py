"""The JSON API, /api/v1, authenticated by bearer tokens only (never the session cookie).

Paths here are contracts: keep them.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response, jsonify, request, send_file

from audit.events import AuditAction
from console.api import audit as _audit_routes  # noqa: F401
from console.api import datasets as _dataset_routes  # noqa: F401
from console.api import oversight as _oversight_routes  # noqa: F401
from console.api import policy as _policy_routes  # noqa: F401
from console.api import projects as _project_routes  # noqa: F401
from console.api import ssh_keys as _ssh_key_routes  # noqa: F401
from console.api import terminals as _terminal_routes  # noqa: F401
from console.api import tokens as _token_routes  # noqa: F401
from console.api.blueprint import BadApiRequest as _Bad
from console.api.blueprint import api
from console.guards import api_requires, api_requires_any, caller, core, public

# Routes kept in their own modules register on the same blueprint when imported.
from console.params import whole_number
from console.permissions import Permission, role_has
from console.services import labels, sandbox_search, sandbox_usage
from console.services import launch as launch_service
from console.services import releases as release_service
from console.services import sandboxes as sandbox_service
from console.services.errors import ServiceError

__all__ = ["api"]


def _number(data: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Bad(f"limits.{key} must be a number")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise _Bad(f"limits.{key} must be a number") from None


def _launch_order() -> launch_service.LaunchOrder:
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
    command = data.get("command", launch_service.DEFAULT_COMMAND)
    if not isinstance(command, str):
        raise _Bad("command must be a string")
    kind = data.get("kind", "single")
    if not isinstance(kind, str):
        raise _Bad("kind must be 'single' or 'mpi'")
    ranks = data.get("ranks", 1)
    if isinstance(ranks, bool) or not isinstance(ranks, int):
        raise _Bad("ranks must be a whole number")
    inputs = data.get("inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise _Bad("inputs must be a list of sandbox ids")
    project = data.get("project") or ""
    if not isinstance(project, str):
        raise _Bad("project must be a project name")
    shell = data.get("shell", False)
    if not isinstance(shell, bool):
        raise _Bad("shell must be true (run the command with sh -c) or false")
    name, tags = _label_fields(data)
    order = launch_service.LaunchOrder(
        datasets=datasets, example=example, command=command, shell=shell,
        cpus=_number(limits, "cpus", float, 1.0),
        memory_mb=_number(limits, "memory_mb", int, 2048),
        pids=_number(limits, "pids", int, 256),
        timeout_s=_number(limits, "timeout_s", int, 1800),
        gpus=_number(limits, "gpus", int, 0), kind=kind, ranks=ranks, inputs=inputs,
        project=project, name=name or "", tags=tags or [])
    if upload is not None and upload.filename:
        order.code_name, order.code = upload.filename, upload.read()
    return order


def _label_fields(data: dict[str, Any]) -> tuple[str | None, list[str] | None]:
    """`name` (a string) and `tags` (a list of strings) of a JSON body, None where absent;
    what they may hold is the service's to check (`console.services.labels`)."""
    name, tags = data.get("name"), data.get("tags")
    if name is not None and not isinstance(name, str):
        raise _Bad("name must be a string")
    if tags is not None and (not isinstance(tags, list)
                             or not all(isinstance(t, str) for t in tags)):
        raise _Bad("tags must be a list of strings")
    return name, tags


@api.route("/sandboxes", methods=["POST"])
@api_requires(Permission.SANDBOX_LAUNCH)
def create_sandbox() -> Any:
    try:
        order = _launch_order()
    except _Bad as exc:
        # refused before the service saw it: audit as the service would
        launch_service.audit_refused_launch(core(), caller(), exc.message)
        exc.audited = True
        raise
    record = launch_service.launch(core(), caller(), order)
    response = jsonify(sandbox_service.to_dict(record))
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/sandboxes/{record.id}"
    return response


@api.route("/sandboxes", methods=["GET"])
@api_requires(Permission.SANDBOX_READ)
def list_sandboxes() -> Any:
    """Your sandboxes, newest first, a page at a time (`per_page`, default 100): `q`
    searches names and ids; `status`, `tag` (repeatable: all of them), `dataset` and `kind`
    filter."""
    args = request.args
    try:
        query = sandbox_search.SandboxQuery.parse(
            q=args.get("q", ""), status=args.get("status", ""), tags=args.getlist("tag"),
            dataset=args.get("dataset", ""), kind=args.get("kind", ""),
            page=args.get("page", ""), per_page=args.get("per_page", ""),
            default_per_page=API_PAGE_SIZE)
    except ServiceError as exc:
        raise _Bad(exc.message) from None
    found = sandbox_search.search(core(), caller(), query)
    return jsonify({"sandboxes": [sandbox_service.to_dict(r) for r in found.sandboxes],
                    "total": found.total, "page": found.page, "pages": found.pages,
                    "per_page": found.per_page})


#: Sandboxes on one page of `GET /api/v1/sandboxes` unless `per_page` says otherwise.
API_PAGE_SIZE = 100


@api.route("/sandboxes/<sandbox_id>", methods=["PATCH"])
@api_requires(Permission.SANDBOX_LAUNCH)
def label_sandbox(sandbox_id: str) -> Any:
    """Rename your sandbox and/or replace its tags: `{"name"?, "tags"?}` (audited)."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise _Bad("send a JSON object with name and/or tags")
    name, tags = _label_fields(data)
    if name is None and tags is None:
        raise _Bad("send name and/or tags")
    record = labels.relabel(core(), caller(), sandbox_id, name=name, tags=tags)
    return jsonify(sandbox_service.to_dict(record))


@api.route("/sandboxes/<sandbox_id>", methods=["GET"])
@api_requires_any(Permission.SANDBOX_READ, Permission.SANDBOX_INSPECT)
def get_sandbox(sandbox_id: str) -> Any:
    """The owner's sandbox; an auditor's read of anyone's (read-only, audited as the page
    is): the console's record, no byte the sandbox wrote."""
    record = sandbox_service.get(core(), caller(), sandbox_id)
    if record.owner != caller().name:
        core().record(caller().actor, AuditAction.SANDBOX_VIEW, target=f"sandbox:{sandbox_id}",
                      request_id=caller().request_id, owner=record.owner, read_only=True)
    return jsonify({**sandbox_service.to_dict(record),
                    "usage": sandbox_usage.figures(core(), record)})


@api.route("/sandboxes/<sandbox_id>/logs", methods=["GET"])
@api_requires_any(Permission.LOGS_READ, Permission.SANDBOX_INSPECT)
def sandbox_logs(sandbox_id: str) -> Any:
    """The log, as the owner's page shows it; an auditor's reading spends the auditor's own
    disclosure budget and is audited under the auditor's name (`sandbox_log.view`)."""
    offset = request.args.get("offset", default=0, type=int)
    rank = request.args.get("rank")
    if rank is None:
        chunk, start, total = sandbox_service.logs(core(), caller(), sandbox_id, offset=offset)
        end = start + len(chunk)
    else:
        number = whole_number(rank)
        if number is None:
            raise _Bad("rank must be a whole number")
        chunk, start, end, total = sandbox_service.rank_logs(core(), caller(), sandbox_id,
                                                             number, offset=offset)
    if request.args.get("format") == "json":
        return jsonify({"log": chunk.decode("utf-8", "replace"), "start": start,
                        "offset": end, "total": total})
    response = Response(chunk, mimetype="text/plain; charset=utf-8")
    response.headers["X-Log-Start"] = str(start)
    response.headers["X-Log-Total"] = str(total)
    return response


@api.route("/sandboxes/<sandbox_id>/metrics", methods=["GET"])
@api_requires_any(Permission.LOGS_READ, Permission.SANDBOX_INSPECT)
def sandbox_metrics(sandbox_id: str) -> Any:
    since = whole_number(request.args.get("since", "0"))
    if since is None:
        raise _Bad("since must be a whole number (the cursor of an earlier answer)")
    return jsonify(sandbox_service.metrics(core(), caller(), sandbox_id, since=since))


@api.route("/sandboxes/<sandbox_id>/stop", methods=["POST"])
@api_requires(Permission.SANDBOX_STOP)
def stop_sandbox(sandbox_id: str) -> Any:
    return jsonify(sandbox_service.to_dict(sandbox_service.stop(core(), caller(), sandbox_id)))


@api.route("/sandboxes/<sandbox_id>/outbox", methods=["GET"])
@api_requires_any(Permission.OUTBOX_READ, Permission.SANDBOX_INSPECT)
def sandbox_outbox(sandbox_id: str) -> Any:
    return jsonify(sandbox_service.outbox(core(), caller(), sandbox_id))


# --- releases -----------------------------------------------------------------------------


def _json_body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise _Bad("send a JSON object")
    return data


@api.route("/releases", methods=["POST"])
@api_requires(Permission.RELEASE_REQUEST)
def create_release() -> Any:
    data = _json_body()
    files = data.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise _Bad("files must be a list of outbox file names")
    sandbox_id, justification = data.get("sandbox"), data.get("justification", "")
    if not isinstance(sandbox_id, str) or not isinstance(justification, str):
        raise _Bad("sandbox and justification must be strings")
    record = release_service.create(core(), caller(), sandbox_id, files, justification)
    response = jsonify(release_service.to_dict(core(), record))
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/releases/{record.id}"
    return response


@api.route("/releases", methods=["GET"])
@api_requires_any(Permission.RELEASE_READ, Permission.RELEASE_INSPECT)
def list_releases() -> Any:
    """The caller's requests; an approver's and an auditor's, everyone's (read-only)."""
    status = request.args.get("status") or None
    rows = release_service.listing(core(), caller(), status=status)
    if not role_has(caller().role, Permission.RELEASE_READ):  # an auditor's read
        core().record(caller().actor, AuditAction.RELEASE_LIST, target="releases",
                      request_id=caller().request_id, shown=len(rows), read_only=True,
                      status=(status or "")[:32])
    return jsonify({"releases": rows})


@api.route("/releases/<release_id>", methods=["GET"])
@api_requires_any(Permission.RELEASE_READ, Permission.RELEASE_INSPECT)
def get_release(release_id: str) -> Any:
    record = release_service.get(core(), caller(), release_id)
    if not role_has(caller().role, Permission.RELEASE_READ):  # an auditor's read
        core().record(caller().actor, AuditAction.RELEASE_VIEW, target=f"release:{release_id}",
                      request_id=caller().request_id, read_only=True)
    return jsonify(release_service.to_dict(core(), record))


@api.route("/releases/<release_id>/files/<int:position>/view", methods=["GET"])
@api_requires_any(Permission.RELEASE_READ, Permission.RELEASE_INSPECT)
def release_file_view(release_id: str, position: int) -> Any:
    return jsonify(release_service.file_view(core(), caller(), release_id, position))


@api.route("/releases/<release_id>/approve", methods=["POST"])
@api_requires(Permission.RELEASE_REVIEW)
def approve_release(release_id: str) -> Any:
    comment = _review_note("comment")
    record = release_service.approve(core(), caller(), release_id, comment)
    return jsonify(release_service.to_dict(core(), record))


def _review_note(key: str, required: str = "") -> str:
    """A review's words from the JSON body; bad input is refused here, before the service,
    so it is recorded at the request level and not in the release's timeline."""
    note = (request.get_json(silent=True) or {}).get(key, "")
    if not isinstance(note, str):
        raise _Bad(f"{key} must be a string")
    try:
        return release_service.review_note(note, required=required)
    except ServiceError as exc:
        raise _Bad(exc.message) from None


@api.route("/releases/<release_id>/reject", methods=["POST"])
@api_requires(Permission.RELEASE_REVIEW)
def reject_release(release_id: str) -> Any:
    reason = _review_note("reason", release_service.REJECT_NEEDS_REASON)
    record = release_service.reject(core(), caller(), release_id, reason)
    return jsonify(release_service.to_dict(core(), record))


@api.route("/releases/<release_id>/withdraw", methods=["POST"])
@api_requires(Permission.RELEASE_WITHDRAW)
def withdraw_release(release_id: str) -> Any:
    reason = _review_note("reason")
    record = release_service.withdraw(core(), caller(), release_id, reason)
    return jsonify(release_service.to_dict(core(), record))


@api.route("/releases/<release_id>/bundle", methods=["GET"])
@api_requires(Permission.BUNDLE_DOWNLOAD)
def release_bundle(release_id: str) -> Any:
    archive = release_service.bundle_archive(core(), caller(), release_id)
    return send_file(archive, mimetype="application/x-tar", as_attachment=True,
                     download_name=f"{release_id}.tar")


@api.route("/keys/release.pem", methods=["GET"])
@public
def release_key() -> Any:
    """The gate's active public key: anyone may verify a bundle offline with it."""
    return Response(core().gate_public_pem(), mimetype="application/x-pem-file")

