"""/api/v1/projects and /api/v1/sandboxes/<id>/lineage: projects (a workspace carried from
sandbox to sandbox) and what a sandbox builds on and what builds on it."""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from console.api.blueprint import BadApiRequest as _Bad
from console.api.blueprint import api
from console.guards import api_requires, caller, core
from console.permissions import Permission
from console.services import projects as project_service
from console.services import sandboxes as sandbox_service


@api.route("/projects", methods=["POST"])
@api_requires(Permission.PROJECT_USE)
def create_project() -> Any:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise _Bad('send {"name": ..., "quota_mb": ...}')
    name, quota = data.get("name"), data.get("quota_mb", 1024)
    if not isinstance(name, str):
        raise _Bad("name must be a project name")
    if isinstance(quota, bool) or not isinstance(quota, int):
        raise _Bad("quota_mb must be a whole number of MB")
    record = project_service.create(core(), caller(), name, quota)
    response = jsonify(project_service.to_dict(core(), record))
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/projects/{record.name}"
    return response


@api.route("/projects", methods=["GET"])
@api_requires(Permission.PROJECT_USE)
def list_projects() -> Any:
    return jsonify({"projects": [project_service.to_dict(core(), p)
                                 for p in project_service.listing(core(), caller())]})


@api.route("/projects/<name>", methods=["GET"])
@api_requires(Permission.PROJECT_USE)
def get_project(name: str) -> Any:
    record = project_service.get(core(), caller(), name)
    body = project_service.to_dict(core(), record)
    body["sandboxes"] = [s.id for s in project_service.sandboxes_of(core(), name)]
    return jsonify(body)


@api.route("/sandboxes/<sandbox_id>/lineage", methods=["GET"])
@api_requires(Permission.SELF_READ)
def sandbox_lineage(sandbox_id: str) -> Any:
    return jsonify(sandbox_service.lineage(core(), caller(), sandbox_id))
