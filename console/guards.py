"""Who is calling and may they: session and token authentication, permission decorators,
and the audit record of every denied request."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, jsonify, redirect, render_template, request, url_for
from flask_login import UserMixin, current_user

from audit.events import Actor, AuditAction, Outcome
from console.core import Caller, Sealroom
from console.models import User
from console.permissions import PUBLIC, Permission, declare, role_has
from console.services import accounts

F = TypeVar("F", bound=Callable[..., Any])


class SessionUser(UserMixin):  # type: ignore[misc]
    """The Flask-Login view of a user row."""

    def __init__(self, user: User) -> None:
        assert user.id is not None
        self.id = user.id
        self.name = user.name
        self.role = user.role
        self.active = user.active

    @property
    def is_active(self) -> bool:
        return self.active

    def get_id(self) -> str:
        return str(self.id)


def core() -> Sealroom:
    sealroom: Sealroom = current_app.extensions["sealroom"]
    return sealroom


def source_address() -> str:
    return request.remote_addr or ""


def caller() -> Caller:
    """The caller of the current request, as services see it."""
    user = getattr(g, "api_user", None)
    if user is not None:
        return Caller(Actor(user.name, user.role, "token", source_address()),
                      user_id=user.id, request_id=g.request_id)
    if current_user.is_authenticated:
        return Caller(Actor(current_user.name, current_user.role, "session", source_address()),
                      user_id=current_user.id, request_id=g.request_id)
    return Caller(Actor.anonymous(source_address()), request_id=g.request_id)


def _deny(permission: str, reason: str) -> None:
    core().record(caller().actor, AuditAction.REQUEST_DENIED,
                  target=f"{request.method} {request.path}"[:200], outcome=Outcome.DENIED,
                  reason=reason, request_id=g.request_id, permission=permission)


def public(view: F) -> F:
    return declare(view, PUBLIC)


def requires(permission: Permission) -> Callable[[F], F]:
    """For console pages: a logged-in user whose role holds `permission`."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                _deny(permission, "not logged in")
                return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
            if not role_has(current_user.role, permission):
                _deny(permission, f"role {current_user.role} lacks {permission}")
                return render_template("error.html", status=403,
                                       message="You do not have access to this page."), 403
            return view(*args, **kwargs)

        return declare(wrapper, permission)  # type: ignore[return-value]

    return decorate


def api_error(status: int, code: str, message: str, **extra: Any) -> Any:
    body: dict[str, Any] = {"error": {"code": code, "message": message, **extra}}
    response = jsonify(body)
    response.status_code = status
    return response


def api_requires(permission: Permission) -> Callable[[F], F]:
    """For /api/v1: a bearer token (never a session cookie) whose user holds `permission`."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            user = accounts.user_for_token(core(), token.strip()) \
                if scheme.lower() == "bearer" else None
            if user is None:
                _deny(permission, "missing or invalid API token")
                return api_error(401, "unauthorized", "a valid API token is required "
                                 "(Authorization: Bearer <token>)")
            g.api_user = user
            if not role_has(user.role, permission):
                _deny(permission, f"role {user.role} lacks {permission}")
                return api_error(403, "forbidden", f"your role may not {permission}")
            return view(*args, **kwargs)

        return declare(wrapper, permission)  # type: ignore[return-value]

    return decorate
