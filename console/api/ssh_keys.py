"""/api/v1/ssh-keys: an engineer's own SSH public keys for the gateway (list, add one,
remove one)."""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from console.api.blueprint import BadApiRequest as _Bad
from console.api.blueprint import api
from console.guards import api_requires, caller, core
from console.permissions import Permission
from console.services import ssh_keys


@api.route("/ssh-keys", methods=["GET"])
@api_requires(Permission.SSH_KEY_SELF)
def list_ssh_keys() -> Any:
    """Your working keys, oldest first."""
    return jsonify({"ssh_keys": ssh_keys.list_mine(core(), caller())})


@api.route("/ssh-keys", methods=["POST"])
@api_requires(Permission.SSH_KEY_SELF)
def add_ssh_key() -> Any:
    """{"public_key": "ssh-ed25519 AAAA... comment", "name": "laptop"}: 201 and the key."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise _Bad("send a JSON object: {\"public_key\": \"...\", \"name\": \"...\"}")
    text, name = data.get("public_key"), data.get("name", "")
    if not isinstance(text, str):
        raise _Bad("public_key must be the line of a .pub file, as a string")
    if not isinstance(name, str):
        raise _Bad("name must be a string")
    key = ssh_keys.add(core(), caller(), text, name)
    response = jsonify(key)
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/ssh-keys/{key['id']}"
    return response


@api.route("/ssh-keys/<int:key_id>", methods=["DELETE"])
@api_requires(Permission.SSH_KEY_SELF)
def remove_ssh_key(key_id: int) -> Any:
    """Your key, removed; someone else's, a removed one or an unknown id is 404."""
    return jsonify(ssh_keys.remove(core(), caller(), key_id))
