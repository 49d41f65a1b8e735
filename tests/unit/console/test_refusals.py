"""`refusals`, the one way a service audits a refused operation and re-raises: the outcome
by status, the deciding rule and policy version, the details, and a refusal that cannot be
recorded still standing (as `AuditUnavailable`)."""

from __future__ import annotations

import json

import pytest

from audit.events import AuditAction
from console.core import Sealroom
from console.services.auditing import refusals
from console.services.errors import (
    AuditUnavailable,
    BadRequest,
    EngineDown,
    PolicyDenied,
    ServiceError,
)
from tests.helpers import OPERATOR, recorded

ACTION = AuditAction.RELEASE_REJECT


def _refused(core: Sealroom, error: ServiceError) -> ServiceError:
    with pytest.raises(type(error)) as raised, refusals(core, OPERATOR, ACTION, "release:rr-1"):
        raise error
    return raised.value


def _last(core: Sealroom) -> tuple[str, str, dict[str, object]]:
    event = recorded(core, str(ACTION))[-1]
    return event.outcome, event.reason, dict(json.loads(event.details))


def test_a_refusal_is_denied_and_a_failure_failed(core: Sealroom) -> None:
    assert _refused(core, BadRequest("say why")).message == "say why"
    assert _last(core) == ("denied", "say why", {})
    _refused(core, EngineDown("the engine is away", detail="connection refused"))
    assert _last(core) == ("failed", "the engine is away", {"detail": "connection refused",
                                                            "error": "engine_unavailable"})


def test_the_deciding_rule_and_version_are_recorded_and_given_to_the_error(
        core: Sealroom) -> None:
    error = _refused(core, PolicyDenied("too many", rule="resources.default.max_gpus"))
    version = core.policy.version
    assert error.policy_version == version  # the caller is told which version decided
    assert _last(core)[2] == {"rule": "resources.default.max_gpus", "policy_version": version}
    # the version that decided the whole operation, recorded even for a refusal no rule made
    with pytest.raises(BadRequest), refusals(core, OPERATOR, ACTION, "release:rr-1",
                                             policy_version=41, datasets=["demo"]):
        raise BadRequest("choose a dataset")
    assert _last(core)[2] == {"datasets": ["demo"], "rule": "", "policy_version": 41}


def test_nothing_but_service_errors_is_recorded(core: Sealroom) -> None:
    before = len(recorded(core, str(ACTION)))
    with pytest.raises(KeyError), refusals(core, OPERATOR, ACTION, "release:rr-1"):
        raise KeyError("a bug, not a refusal")
    with refusals(core, OPERATOR, ACTION, "release:rr-1"):
        pass
    assert len(recorded(core, str(ACTION))) == before


def test_a_refusal_that_cannot_be_recorded_still_stands(core: Sealroom) -> None:
    with core.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit_event "
            "BEGIN SELECT RAISE(ABORT, 'audit store unwritable'); END")
    with pytest.raises(AuditUnavailable) as raised, \
            refusals(core, OPERATOR, ACTION, "release:rr-1", unrecorded="nothing was rejected"):
        raise BadRequest("say why")
    assert raised.value.message == "nothing was rejected"
    assert isinstance(raised.value.__cause__, BadRequest)
    already = AuditUnavailable("the audit log cannot be written")
    with pytest.raises(AuditUnavailable) as again, \
            refusals(core, OPERATOR, ACTION, "release:rr-1"):
        raise already
    assert again.value is already
