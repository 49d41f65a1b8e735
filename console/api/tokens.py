"""/api/v1/tokens: a user's own API tokens (list, make one, revoke one); admins list and
revoke anyone's. A token made with a token never outlives the token that made it."""

from __future__ import annotations

from typing import Any

from flask import g, jsonify, request

from console.api.blueprint import BadApiRequest as _Bad
from console.api.blueprint import api
from console.guards import api_requires, caller, core
from console.permissions import Permission, role_has
from console.services import accounts
from console.services.errors import Forbidden


def _admin() -> bool:
    return role_has(caller().role, Permission.TOKEN_ADMIN)


@api.route("/tokens", methods=["GET"])
@api_requires(Permission.TOKEN_SELF)
def list_tokens() -> Any:
    """Your tokens; `?user=NAME` or `?all=1` (admins only) someone else's or everyone's."""
    owner: str | None = request.args.get("user") or caller().name
    if request.args.get("all") in ("1", "true"):
        owner = None
    if owner != caller().name and not _admin():
        raise Forbidden("only admins list other users' tokens")
    return jsonify({"tokens": [t.to_dict() for t in accounts.list_tokens(core(), owner)]})


@api.route("/tokens", methods=["POST"])
@api_requires(Permission.TOKEN_SELF)
def create_token() -> Any:
    """{"name": "...", "expires_in_days": N}: the token is in the answer, and only there."""
    data = request.get_json(silent=True)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _Bad("send a JSON object")
    name, days = data.get("name", ""), data.get("expires_in_days")
    if not isinstance(name, str):
        raise _Bad("name must be a string")
    if days is not None and (isinstance(days, bool) or not isinstance(days, int)):
        raise _Bad("expires_in_days must be a whole number")
    made = accounts.issue_token(core(), caller(), caller().name, name=name,
                                expires_in_days=days, not_after=g.api_token.expires_at)
    response = jsonify({**made.info.to_dict(), "token": made.secret})
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/tokens/{made.info.id}"
    return response


@api.route("/tokens/<int:token_id>", methods=["DELETE"])
@api_requires(Permission.TOKEN_SELF)
def delete_token(token_id: int) -> Any:
    return jsonify(accounts.revoke_token(core(), caller(), token_id,
                                         any_owner=_admin()).to_dict())


@api.route("/tokens/<int:token_id>/revoke", methods=["POST"])
@api_requires(Permission.TOKEN_SELF)
def revoke_token(token_id: int) -> Any:
    return jsonify(accounts.revoke_token(core(), caller(), token_id,
                                         any_owner=_admin()).to_dict())
