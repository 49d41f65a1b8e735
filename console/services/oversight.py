"""Every live sandbox of every user as the security officer oversees it (owner, datasets,
kind, image, runtime, age, time left, and whether the active policy forbids it and why), and
the officer's stop of any of them, recorded as every stop is (`sandboxes.request_stop`).

Everything listed is the console's own record: ids, user names, dataset names and versions,
image names, statuses, counts and times. Nothing here is a byte a sandbox wrote.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlmodel import col, select

from audit.events import AuditAction
from console.core import Caller, Sealroom
from console.models import LIVE_STATUSES, Sandbox, SandboxStatus
from console.permissions import Permission, role_has
from console.services import policy as policy_service
from console.services import sandbox_usage
from console.services import sandboxes as sandbox_service
from console.services.auditing import refusals
from console.services.errors import BadRequest, Forbidden, NotFound

#: The longest reason an officer may give for stopping a sandbox the policy allows.
MAX_REASON = 500
NEEDS_REASON = "the active policy allows this sandbox: say why you stop it"


@dataclass(frozen=True)
class LiveSandbox:
    """One live sandbox as the oversight page and API show it."""

    record: Sandbox
    usage: dict[str, object]  # `sandbox_usage.figures`: elapsed, remaining, limits
    age_s: float
    runtime: str
    forbidden_rule: str = ""  # the active policy's rule that forbids it ("": allowed)
    forbidden_reason: str = ""  # the policy's words for why
    policy_version: int = 0

    @property
    def datasets(self) -> list[dict[str, object]]:
        return [{"name": d["name"], "version": d.get("version", 1)}
                for d in json.loads(self.record.datasets)]

    @property
    def members(self) -> list[dict[str, object]]:
        return [{"name": m["name"], "state": m["state"]}
                for m in json.loads(self.record.members or "[]")]

    def to_dict(self) -> dict[str, object]:
        record = self.record
        return {
            "id": record.id, "owner": record.owner, "status": record.status,
            "kind": record.kind, "ranks": record.ranks, "members": self.members,
            "datasets": self.datasets, "image": record.image, "runtime": self.runtime,
            "project": record.project or None,
            "created_at": record.created_at, "started_at": record.started_at,
            "age_s": round(self.age_s, 1),
            "time_limit_s": record.timeout_s, "remaining_s": self.usage["remaining_s"],
            "elapsed_s": self.usage["elapsed_s"],
            "forbidden": {"rule": self.forbidden_rule, "reason": self.forbidden_reason,
                          "policy_version": self.policy_version}
            if self.forbidden_rule else None,
        }


def _may_oversee(caller: Caller) -> bool:
    return role_has(caller.role, Permission.SANDBOX_OVERSEE) \
        or role_has(caller.role, Permission.SANDBOX_INSPECT)


def running(core: Sealroom, caller: Caller, *, now: datetime | None = None
            ) -> list[LiveSandbox]:
    """Every starting, running or stopping sandbox of every user, oldest first, each with
    what the active policy says of it, read in one snapshot (no engine call); the listing
    is audited (`sandbox:sandbox:list`) with how many it showed. For officers (who may stop
    them) and auditors (who read them)."""
    if not _may_oversee(caller):
        raise Forbidden("your role may not list everyone's sandboxes")
    now = now or datetime.now(UTC)
    policy = core.policy
    with core.read() as session:
        rows = list(session.exec(select(Sandbox).where(col(Sandbox.status).in_(LIVE_STATUSES))
                                 .order_by(col(Sandbox.created_at), col(Sandbox.id))).all())
        forbids = policy_service.forbidding_decisions(session, policy)
    found = []
    for record in rows:
        spec = json.loads(record.spec or "{}")
        live = LiveSandbox(
            record, sandbox_usage.figures(core, record, now=now, ask_engine=False),
            max((now - datetime.fromisoformat(record.created_at)).total_seconds(), 0.0),
            str(spec.get("runtime", "runc")) if isinstance(spec, dict) else "runc")
        decision = forbids.get(record.id)  # (a denial is falsy: compare with None)
        if decision is not None:
            live = dataclasses.replace(live, forbidden_rule=decision.rule,
                                       forbidden_reason=decision.reason,
                                       policy_version=decision.policy_version)
        found.append(live)
    core.record(caller.actor, AuditAction.SANDBOX_LIST, target="sandboxes:live",
                request_id=caller.request_id, shown=len(found),
                forbidden=sum(1 for s in found if s.forbidden_rule))
    return found


def stop(core: Sealroom, caller: Caller, sandbox_id: str, reason: str = "") -> Sandbox:
    """A security officer stops anyone's live sandbox: one the active policy forbids, in the
    policy's words (the officer's `reason` added if given); one it allows, only with the
    officer's `reason`. Recorded as the owner's stop is (STOPPING, with the reason, and its
    end event, before the engine is told: `sandboxes.request_stop`), then carried out
    (`sandboxes.carry_out_stop`). Stopping twice is fine; a stop already asked for is seen
    through."""
    target = f"sandbox:{sandbox_id[:64]}"
    with refusals(core, caller, AuditAction.SANDBOX_STOP, target):
        if not role_has(caller.role, Permission.SANDBOX_OVERSEE):
            raise Forbidden("your role may not stop other people's sandboxes")
        reason = " ".join(reason.split())
        if len(reason) > MAX_REASON:
            raise BadRequest(f"the reason is at most {MAX_REASON} characters")
        # The engine's word first (outside any transaction), as for the owner's stop.
        record = sandbox_service.refresh(core, sandbox_id)
        if record is None:
            raise NotFound("no such sandbox")
        if SandboxStatus(record.status).terminal:
            return record  # stopping twice is fine
        if record.status == SandboxStatus.STOPPING:  # asked for already: see it through
            return sandbox_service.carry_out_stop(core, record)
        decision = policy_service.forbidding_decision(core, sandbox_id)
        details: dict[str, object] = {"owner": record.owner}
        if decision is not None:
            said = (f"stopped by {caller.name}: policy version {decision.policy_version} "
                    f"forbids it ({decision.rule}: {decision.reason})")
            details.update(rule=decision.rule, policy_version=decision.policy_version)
        elif not reason:
            raise BadRequest(NEEDS_REASON)
        else:
            said = f"stopped by {caller.name} (security officer)"
            details.update(policy_version=core.policy.version, allowed=True)
        if reason:
            said += f": {reason}" if decision is None else f"; {reason}"
            details["officer_reason"] = reason
        record = sandbox_service.request_stop(core, caller, sandbox_id, said, details=details)
    return sandbox_service.carry_out_stop(core, record)
