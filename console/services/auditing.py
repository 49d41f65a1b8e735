"""Auditing a refusal: the one place that turns a `ServiceError` into the audit event that
says who was refused what, by which rule, before the error goes on to the caller.

Used as `with refusals(core, caller, action, target): ...` around an operation's checks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from audit.errors import AuditWriteFailed
from audit.events import AuditAction, Outcome
from console.core import Caller, Sealroom
from console.services.errors import AuditUnavailable, ServiceError

log = logging.getLogger(__name__)

#: What a caller is told when the refusal itself cannot be recorded.
NOT_RECORDED = "the audit log cannot be written; nothing was done"


@contextmanager
def refusals(core: Sealroom, caller: Caller, action: AuditAction, target: str, *,
             policy_version: int | None = None, unrecorded: str = NOT_RECORDED,
             **details: object) -> Iterator[None]:
    """Record any `ServiceError` raised inside as `action` on `target` and re-raise it.

    The outcome is DENIED for a refusal (status below 500) and FAILED otherwise. A refusal
    decided by a policy rule records the rule and the policy version (the error's own, else
    `policy_version`, else the active one), and the error is given that version too. When
    `policy_version` is passed (the version that decided the whole operation) the rule and
    version are recorded for every refusal, even one no rule decided. The error's detail is
    recorded when it says more than its message, and a failure's code (`error`, e.g.
    `engine_unavailable`). `details` are recorded as given.

    If the audit log cannot be written the refusal still stands: the error becomes
    `AuditUnavailable` (`unrecorded` is its message) unless it already is one.
    """
    try:
        yield
    except ServiceError as exc:
        _record(core, caller, action, target, exc, policy_version, unrecorded, details)
        raise


def _record(core: Sealroom, caller: Caller, action: AuditAction, target: str,
            exc: ServiceError, policy_version: int | None, unrecorded: str,
            details: dict[str, object]) -> None:
    recorded = dict(details)
    if exc.rule and exc.policy_version is None:
        exc.policy_version = policy_version if policy_version is not None \
            else core.policy.version
    if exc.rule or policy_version is not None:
        recorded["rule"] = exc.rule
        recorded["policy_version"] = exc.policy_version if exc.policy_version is not None \
            else policy_version
    if exc.detail != exc.message:
        recorded["detail"] = exc.detail
    if exc.status >= 500:  # a failure's class, for counting (platform metrics)
        recorded["error"] = exc.code
    recorded.update(exc.audit_details())
    try:
        core.record(caller.actor, action, target=target,
                    outcome=Outcome.FAILED if exc.status >= 500 else Outcome.DENIED,
                    reason=exc.message, request_id=caller.request_id, **recorded)
    except AuditWriteFailed as audit_exc:
        # Nothing was done; the refusal stands even though it could not be recorded.
        log.error("could not audit a refused %s (%s): %s", action, exc.message, audit_exc)
        if not isinstance(exc, AuditUnavailable):
            raise AuditUnavailable(unrecorded, detail=str(audit_exc)) from exc
