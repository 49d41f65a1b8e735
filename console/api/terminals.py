"""/api/v1/sandboxes/<id>/terminal: how to open a terminal in a sandbox through the SSH
gateway (or why not), and the sessions opened in it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import jsonify, request

from console.api.blueprint import api
from console.guards import api_requires, caller, core
from console.permissions import Permission
from console.services import sandboxes as sandbox_service
from console.services import terminal_sessions


@api.route("/sandboxes/<sandbox_id>/terminal", methods=["GET"])
@api_requires(Permission.SANDBOX_READ)
def sandbox_terminal(sandbox_id: str) -> Any:
    record = sandbox_service.get(core(), caller(), sandbox_id)
    host = urlsplit(request.host_url).hostname or "localhost"
    return jsonify(terminal_sessions.terminal_facts(core(), caller(), record, host))
