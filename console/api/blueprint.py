"""The /api/v1 blueprint and what every API route shares: how a refused request is answered.

Route modules (`console.api`, `console.api.audit`, `console.api.policy`) register on `api`
by importing it from here; `console.api` imports the route modules, never the reverse.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from audit.events import AuditAction, Outcome
from console.guards import api_error, caller, core
from console.services.errors import ServiceError

api = Blueprint("api", __name__, url_prefix="/api/v1")


class BadApiRequest(ServiceError):
    """A request refused while parsing, before any service saw it."""

    status, code = 400, "bad_request"
    audited = False


@api.errorhandler(ServiceError)
def _service_error(exc: ServiceError) -> Any:
    if isinstance(exc, BadApiRequest) and not exc.audited:
        # refused while parsing, before any service saw it
        core().record(caller().actor, AuditAction.REQUEST_DENIED,
                      target=f"{request.method} {request.path}"[:200], outcome=Outcome.DENIED,
                      reason=exc.message, request_id=caller().request_id)
    extra = {"rule": exc.rule, "policy_version": exc.policy_version} if exc.rule else {}
    return api_error(exc.status, exc.code, exc.message, **extra)
