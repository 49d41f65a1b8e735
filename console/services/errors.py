"""Errors raised by services; `ServiceError` is the root. Views map `status` to HTTP."""

from __future__ import annotations


class ServiceError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, detail: str | None = None, rule: str = "",
                 policy_version: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or message
        self.rule = rule  # the policy rule that decided, when a policy did
        self.policy_version = policy_version

    def audit_details(self) -> dict[str, object]:
        """What this refusal adds to its audit event besides the message, rule and detail."""
        return {}


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class PolicyDenied(ServiceError):
    status, code = 403, "policy_denied"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class EngineDown(ServiceError):
    status, code = 503, "engine_unavailable"


class AuditUnavailable(ServiceError):
    """The audit log cannot be written, so the operation was not done (fail closed)."""

    status, code = 503, "audit_unavailable"
