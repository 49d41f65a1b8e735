"""The Flask app factory: wires settings, the database, the backend, auth and blueprints."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, flash, g, jsonify, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface, SessionMixin
from flask_login import current_user, logout_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, TooManyRequests

from audit.errors import AuditWriteFailed
from audit.events import Actor, AuditAction
from console.core import Sealroom
from console.extensions import csrf, limits, login_manager
from console.guards import (
    TOO_MANY_REFUSALS,
    SessionUser,
    api_error,
    caller,
    core,
    refusal_recorded,
    too_many,
)
from console.params import RowNumberConverter
from console.permissions import PUBLIC, declare, declared_permission
from console.services import sandboxes as sandbox_service
from console.services.audit_log import record_unaudited_request
from console.services.flood import RefusalLedger, record_counted
from console.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, sealroom: Sealroom | None = None,
               supervise: bool = False) -> Flask:
    settings = settings or (sealroom.settings if sealroom else Settings.from_env())
    sealroom = sealroom or Sealroom(settings)
    app = Flask(__name__)
    app.url_map.converters["int"] = RowNumberConverter
    app.config.update(
        SECRET_KEY=settings.secret_key(),
        MAX_CONTENT_LENGTH=settings.max_request_mb * 1024 * 1024,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.https,
        SESSION_COOKIE_NAME="sealroom_session",
        REMEMBER_COOKIE_DURATION=timedelta(0),
        WTF_CSRF_TIME_LIMIT=None,
        TESTING=settings.testing,
    )
    app.extensions["sealroom"] = sealroom
    app.session_interface = PolicySessionInterface()

    _install_request_hooks(app)  # first: the request id exists before CSRF may refuse
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.session_protection = "strong"
    limits.init_app(app)  # login and refusal limits (console.services.flood)

    @login_manager.user_loader  # type: ignore[untyped-decorator]  # flask-login is untyped
    def _load(user_id: str) -> SessionUser | None:
        return SessionUser.load(sealroom, user_id)

    from console.api import api
    from console.metrics import metrics
    from console.web import may
    from console.web.audit import audit_pages
    from console.web.auth import auth
    from console.web.datasets import dataset_pages
    from console.web.disclosure import disclosure_pages
    from console.web.engineer import engineer
    from console.web.home import home
    from console.web.lineage import lineage_pages
    from console.web.oversight import oversight_pages
    from console.web.policy import policy_pages
    from console.web.projects import project_pages
    from console.web.releases import releases

    app.register_blueprint(auth)
    app.register_blueprint(home)
    app.register_blueprint(engineer)
    app.register_blueprint(releases)
    app.register_blueprint(audit_pages)
    app.register_blueprint(policy_pages)
    app.register_blueprint(disclosure_pages)
    app.register_blueprint(project_pages)
    app.register_blueprint(dataset_pages)
    app.register_blueprint(lineage_pages)
    app.register_blueprint(oversight_pages)  # every running sandbox, for officers
    app.jinja_env.globals["may"] = may  # templates show links only where they lead
    app.register_blueprint(api)
    app.register_blueprint(metrics)
    _install_session_timeouts(app)
    csrf.exempt(api)  # token auth only: the API never reads the session cookie
    csrf.exempt(metrics)
    declare(app.view_functions["static"], PUBLIC)
    from console.web.account import account_pages
    from console.web.admin import admin_pages

    app.register_blueprint(account_pages)  # one's own password and API tokens
    app.register_blueprint(admin_pages)  # users, everyone's tokens, datasets from the host

    _install_error_handlers(app)
    if supervise:
        _start_supervisor(sealroom, limits.of(app).refusals)
    return app


def _install_request_hooks(app: Flask) -> None:
    @app.before_request
    def _request_id() -> None:
        # Always ours: a caller-chosen id could point the audit check below at an old event.
        g.request_id = secrets.token_hex(8)

    @app.after_request
    def _audited(response: Any) -> Any:
        """Completeness: every call to a non-public endpoint leaves at least one audit event.
        Services record what they did in detail; whatever a view did not record (a listing,
        a refused or malformed request) gets a generic event here. If even that cannot be
        written, the response is withheld: reads fail closed like writes."""
        view = app.view_functions.get(request.endpoint or "")
        if view is None or declared_permission(view) == PUBLIC or g.get("refusal_counted"):
            return response  # (a refusal counted in a flood is on record in its count)
        try:
            record_unaudited_request(core(), caller(), request.method, request.path,
                                     response.status_code, declared_permission(view) or "")
        except AuditWriteFailed as exc:
            return app.make_response(app.handle_user_exception(exc))
        return response

    @app.after_request
    def _headers(response: Any) -> Any:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'")
        response.headers.setdefault("Cache-Control", "no-store")
        return response


class PolicySessionInterface(SecureCookieSessionInterface):
    """Session cookies live as long as the active policy's absolute timeout."""

    def get_expiration_time(self, app: Flask, session: SessionMixin) -> datetime | None:
        if not session.permanent:
            return None
        lifetime = core().policy.sessions.absolute_timeout_s
        return datetime.now().astimezone() + timedelta(seconds=lifetime)

    def should_set_cookie(self, app: Flask, session: SessionMixin) -> bool:
        # A page's own polling never writes the cookie back: written from the copy it was
        # sent with, it would bring back what another tab has changed since, such as a
        # message already shown there ("Sandbox ... stopped" on the wrong sandbox's page).
        # Emptying the session (its end) still removes the cookie.
        if request.endpoint in BACKGROUND_ENDPOINTS:
            return False
        return super().should_set_cookie(app, session)


#: Views a page calls on its own (polling): they do not count as the user being active.
BACKGROUND_ENDPOINTS = frozenset({"engineer.live", "engineer.metrics"})


def _install_session_timeouts(app: Flask) -> None:
    """End console sessions the active policy says are over (sessions.*), audited."""

    @app.before_request
    def _session_timeouts() -> Any:
        if request.endpoint in (None, "static") or request.path.startswith("/api/") \
                or not current_user.is_authenticated:
            return None
        now = time.time()
        login_at = float(session.get("login_at", now))
        seen_at = float(session.get("seen_at", login_at))
        decision = core().evaluator.session(login_at, seen_at, now)
        if not decision:
            core().record(caller().actor, AuditAction.LOGOUT, target=f"user:{current_user.name}",
                          reason=f"session ended by policy: {decision.reason}",
                          request_id=g.request_id, rule=decision.rule,
                          policy_version=decision.policy_version)
            logout_user()
            session.clear()
            message = f"Your session has ended: {decision.reason}. Log in again."
            if request.accept_mimetypes.best == "application/json" \
                    or request.endpoint in BACKGROUND_ENDPOINTS:
                return api_error(401, "session_expired", message, rule=decision.rule)
            flash(message, "info")
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        session.setdefault("login_at", login_at)
        if request.endpoint not in BACKGROUND_ENDPOINTS:
            session["seen_at"] = now
        return None


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Any:
        limit = app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)
        message = f"the request is larger than {limit} MB"
        if not refusal_recorded(AuditAction.CODE_UPLOAD, request.path, message):
            return too_many(TOO_MANY_REFUSALS, limits.refusals.retry_after_s())
        if _wants_json():
            return api_error(413, "payload_too_large", message)
        return render_template("error.html", status=413, message=message), 413

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> Any:
        if not refusal_recorded(AuditAction.REQUEST_DENIED, request.path,
                                f"CSRF: {exc.description}"):
            return too_many(TOO_MANY_REFUSALS, limits.refusals.retry_after_s())
        return render_template("error.html", status=400,
                               message="The form expired or was not sent from this console. "
                                       "Reload the page and try again."), 400

    @app.errorhandler(TooManyRequests)
    def _rate_limited(exc: TooManyRequests) -> Any:
        # Raised only once the refusal is accounted for (console.guards.refusal_recorded).
        retry_after = exc.retry_after if isinstance(exc.retry_after, int) else 60
        return too_many(exc.description or TOO_MANY_REFUSALS, retry_after)

    @app.errorhandler(AuditWriteFailed)
    def _audit_down(exc: AuditWriteFailed) -> Any:
        # Fail closed: the operation's transaction rolled back with its audit event.
        log.error("audit write failed, operation refused: %s", exc)
        message = "the audit log cannot be written; nothing was done"
        if _wants_json():
            return api_error(503, "audit_unavailable", message)
        return render_template("error.html", status=503, message=message), 503

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        status = exc.code or 500
        if _wants_json():
            return api_error(status, (exc.name or "error").lower().replace(" ", "_"),
                             exc.description or "")
        return render_template("error.html", status=status, message=exc.description), status

    @app.route("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    declare(app.view_functions["healthz"], PUBLIC)


def _start_supervisor(sealroom: Sealroom, refusals: RefusalLedger) -> threading.Thread:
    """Watch running sandboxes: exits, OOM kills, time limits, lost containers. This is the
    only place the console polls the engine (pages read the database); it ends when the
    installation is closed. Each pass also records refusals counted in a period that is
    over, so a flood that stops is on record without waiting for another request."""
    stop = sealroom.closing

    def loop() -> None:
        while not stop.wait(sealroom.settings.supervise_interval_s):
            try:
                sandbox_service.refresh_all(sealroom)
            except Exception:  # keep watching; the error is logged, not lost
                log.exception("supervisor pass failed")
            try:
                record_counted(sealroom, refusals)
            except Exception:  # counts stay in the ledger; the next pass tries again
                log.exception("recording counted refusals failed")
            try:
                sealroom.checkpoint_if_due()
            except Exception:  # the next pass tries again; events are kept meanwhile
                log.exception("audit checkpoint failed")

    thread = threading.Thread(target=loop, name="sealroom-supervisor", daemon=True)
    thread.start()
    if sealroom.settings.audit_verify_interval_s > 0:
        threading.Thread(target=_watch_chain, args=(sealroom, stop), name="sealroom-chain",
                         daemon=True).start()
    return thread


def _watch_chain(sealroom: Sealroom, stop: threading.Event) -> None:
    """Verify the whole chain now and then, in its own thread: a long walk over millions of
    events must not hold up sandbox supervision. Each result is an audit event, which is
    what the auditor's pages show at a glance."""
    from console.core import Caller
    from console.services import audit_log

    watcher = Caller(Actor.system("chain-watch"))
    while True:
        try:
            status = audit_log.verify_chain(sealroom, watcher)
            if not status["ok"]:
                log.error("audit chain broken at event %s: %s", status["first_bad_event"],
                          status["problem"])
        except Exception:  # try again at the next interval
            log.exception("audit chain verification failed")
        if stop.wait(sealroom.settings.audit_verify_interval_s):
            return
