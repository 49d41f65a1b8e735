"""Who is calling and may they: session and token authentication, permission decorators,
and the audit record of every denied request."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import (
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import UserMixin, current_user

from audit.events import Actor, AuditAction, Outcome
from console.core import Caller, Sealroom
from console.models import User
from console.permissions import PUBLIC, Permission, declare, role_has
from console.services import accounts

F = TypeVar("F", bound=Callable[..., Any])


class SessionUser(UserMixin):  # type: ignore[misc]
    """The Flask-Login view of a user row. The id kept in the session is `<id>.<epoch>`
    (Flask-Login's "alternative token"): a password change or a deactivation raises the
    user's epoch, and every session begun under an older one ends."""

    def __init__(self, user: User) -> None:
        assert user.id is not None
        self.id = user.id
        self.name = user.name
        self.role = user.role
        self.active = user.active
        self.epoch = user.session_epoch

    @property
    def is_active(self) -> bool:
        return self.active

    def get_id(self) -> str:
        return f"{self.id}.{self.epoch}"

    @classmethod
    def load(cls, sealroom: Sealroom, session_id: str) -> SessionUser | None:
        """Flask-Login's user loader: `load_session_user`."""
        return load_session_user(sealroom, session_id)


_ENDED_SESSIONS_KEPT = 10_000


def load_session_user(sealroom: Sealroom, session_id: str) -> SessionUser | None:
    """Flask-Login's user loader, run on every request that carries a session: the user
    must still exist, be active, and have the epoch the session began under. A session
    that no longer holds is ended here, audited, and its owner told why."""
    number, _, epoch = session_id.partition(".")
    user = accounts.get_user(sealroom, int(number)) if number.isdigit() else None
    if user is None:
        return None
    if user.active and epoch == str(user.session_epoch):
        return SessionUser(user)
    reason = "the account was deactivated" if not user.active else \
        "the password was changed, or the account deactivated, since it began"
    # Recorded once per stale epoch (per process): a replayed old cookie is refused every
    # time, but does not write an event every time (its refusals are `_deny`'s).
    ended: set[str] = current_app.extensions.setdefault("sealroom_ended_sessions", set())
    if session_id not in ended:
        if len(ended) >= _ENDED_SESSIONS_KEPT:
            ended.clear()
        ended.add(session_id)
        sealroom.record(Actor(user.name, user.role, "session", source_address()),
                        AuditAction.LOGOUT, target=f"user:{user.name}",
                        reason=f"session ended: {reason}", request_id=g.get("request_id", ""))
    session.clear()
    flash(f"Your session has ended: {reason}. Log in again.", "info")
    return None


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
            try:
                if scheme.lower() != "bearer":
                    raise accounts.TokenRefused("unauthorized", "a valid API token is "
                                                "required (Authorization: Bearer <token>)")
                user, api_token = accounts.authenticate_token(core(), token.strip())
            except accounts.TokenRefused as exc:
                _deny(permission, "missing or invalid API token" if exc.code == "unauthorized"
                      else exc.detail)
                return api_error(401, exc.code, exc.message)
            g.api_user, g.api_token = user, api_token
            if not role_has(user.role, permission):
                _deny(permission, f"role {user.role} lacks {permission}")
                return api_error(403, "forbidden", f"your role may not {permission}")
            return view(*args, **kwargs)

        return declare(wrapper, permission)  # type: ignore[return-value]

    return decorate
