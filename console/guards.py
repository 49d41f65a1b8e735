"""Who is calling and may they: session and token authentication, permission decorators,
the caller's real address behind trusted proxies, and the audit record of every denied
request (one by one, or counted per source in a flood: `console.services.flood`)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable
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
from werkzeug.exceptions import TooManyRequests

from audit.events import Actor, AuditAction, Outcome
from console.core import Caller, Sealroom
from console.extensions import limits
from console.models import User
from console.permissions import PUBLIC, Permission, declare, role_has
from console.services import accounts
from console.services.flood import record_counted

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


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _ip(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(peer: str, forwarded_for: Iterable[str], trusted: tuple[str, ...]) -> str:
    """The client's address. The direct peer's, unless the peer is a trusted proxy: then
    X-Forwarded-For (every such header, in order) is read from the right, each hop a proxy
    appended, and the first address that is not a trusted proxy is the client. A hop that is
    not an address was not written by a trusted proxy, so the walk stops at the last
    trusted one. Unlike Werkzeug's ProxyFix (a fixed number of hops), only addresses named
    in SEALROOM_TRUSTED_PROXIES are believed, however many hops there are."""
    networks = _networks(trusted)

    def is_trusted(address: IPAddress) -> bool:
        return any(address in network for network in networks)

    current = _ip(peer)
    if current is None or not is_trusted(current):
        return str(current) if current is not None else peer
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        address = _ip(hop)
        if address is None:
            break
        current = address
        if not is_trusted(address):
            break
    return str(current)


def source_address() -> str:
    """The current request's client address (`client_address`), worked out once."""
    if "source_address" not in g:
        g.source_address = client_address(request.remote_addr or "",
                                          request.headers.getlist("X-Forwarded-For"),
                                          core().settings.trusted_proxies)
    address: str = g.source_address
    return address


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
    """Account for a refused request; a source over its refusal budget is answered 429."""
    if not refusal_recorded(AuditAction.REQUEST_DENIED, f"{request.method} {request.path}",
                            reason, permission=permission):
        raise TooManyRequests(TOO_MANY_REFUSALS, retry_after=limits.refusals.retry_after_s())


TOO_MANY_REFUSALS = "Too many refused requests from your address. Wait a minute and try again."


def refusal_recorded(action: AuditAction, target: str, reason: str, **details: object) -> bool:
    """Account for one refused request. While its source is within SEALROOM_REFUSAL_RATE it
    is recorded as its own audit event (True); beyond that it is counted into the source's
    one event for the period (False), and the caller answers 429. Counts of periods that
    are over are recorded first, so a flood is on record by the next refusal after it."""
    who, ledger = caller(), limits.refusals
    if ledger.has_due():
        record_counted(core(), ledger)
    if ledger.refuse(who.actor, action, target[:200], reason):
        core().record(who.actor, action, target=target[:200], outcome=Outcome.DENIED,
                      reason=reason, request_id=who.request_id, **details)
        return True
    g.refusal_counted = True  # the completeness check in console.app knows it is on record
    return False


def too_many(message: str, retry_after_s: float) -> Any:
    """The 429 answer: JSON for the API, a page otherwise, with Retry-After."""
    if request.path.startswith("/api/"):
        response = api_error(429, "rate_limited", message)
    else:
        response = current_app.make_response(
            (render_template("error.html", status=429, message=message), 429))
    response.headers["Retry-After"] = str(max(1, int(retry_after_s + 0.999)))
    return response


def public(view: F) -> F:
    return declare(view, PUBLIC)


def requires(permission: Permission) -> Callable[[F], F]:
    """For console pages: a logged-in user whose role holds `permission`."""
    return requires_any(permission)


def requires_any(permission: Permission, *more: Permission) -> Callable[[F], F]:
    """For console pages open to several roles for different reasons (a sandbox's page: its
    owner's `SANDBOX_READ`, an auditor's `SANDBOX_INSPECT`): a logged-in user whose role
    holds any one of them. The service still decides which records the caller may read."""
    allowed = (permission, *more)
    named = " or ".join(allowed)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                _deny(permission, "not logged in")
                return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
            if not any(role_has(current_user.role, p) for p in allowed):
                _deny(permission, f"role {current_user.role} lacks {named}")
                return render_template("error.html", status=403,
                                       message="You do not have access to this page."), 403
            return view(*args, **kwargs)

        return declare(wrapper, permission, *more)  # type: ignore[return-value]

    return decorate


def api_error(status: int, code: str, message: str, **extra: Any) -> Any:
    body: dict[str, Any] = {"error": {"code": code, "message": message, **extra}}
    response = jsonify(body)
    response.status_code = status
    return response


def api_requires(permission: Permission) -> Callable[[F], F]:
    """For /api/v1: a bearer token (never a session cookie) whose user holds `permission`."""
    return api_requires_any(permission)


def api_requires_any(permission: Permission, *more: Permission) -> Callable[[F], F]:
    """`api_requires` for a route open to several roles for different reasons (a sandbox:
    its owner's `SANDBOX_READ`, an auditor's `SANDBOX_INSPECT`), as `requires_any` for
    pages: a token whose user holds any one of them. The service decides what they read."""
    allowed = (permission, *more)
    named = " or ".join(allowed)

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
            if not any(role_has(user.role, p) for p in allowed):
                _deny(permission, f"role {user.role} lacks {named}")
                return api_error(403, "forbidden", f"your role may not {named}")
            return view(*args, **kwargs)

        return declare(wrapper, permission, *more)  # type: ignore[return-value]

    return decorate
