"""Policies as versioned data: validate a document, dry-run it against what is running and
waiting, activate it (audited, with a reason), restore an old version, and compare versions.

The dry run and the activation share one function, `_findings`, so what a dry run lists is
what the activation then marks.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from sqlmodel import Session, col, select

from audit.chain import append, utc_now
from audit.events import Actor, AuditAction, EventDraft, Outcome
from console.core import Caller, Sealroom
from console.models import (
    Dataset,
    Image,
    PolicyVersion,
    Project,
    ReleaseFile,
    ReleaseRequest,
    ReleaseStatus,
    Role,
    Sandbox,
    SandboxStatus,
    User,
)
from console.services import lineage as lineage_service
from console.services import releases as release_service
from console.services.auditing import refusals
from console.services.errors import BadRequest, Conflict, NotFound
from console.services.launch import ParsedLaunch, judge
from console.services.policy_diff import DiffLine, policy_diff
from policies.edit import with_dataset_rule
from policies.errors import InvalidPolicy, PolicyProblem
from policies.evaluator import PolicyDecision, PolicyEvaluator
from policies.schema import CheckedPolicy, Policy, PolicyContext, check_policy
from sandbox.gate.checks import CandidateFile, run_checks

MAX_REASON = 2000


class InvalidPolicyDocument(BadRequest):
    """A document that does not validate, with every problem and its line."""

    code = "invalid_policy"

    def __init__(self, error: InvalidPolicy) -> None:
        super().__init__(error.message)
        self.problems = error.problems
        self.line = error.line

    def audit_details(self) -> dict[str, object]:
        return {"problems": [p.to_dict() for p in self.problems[:20]]}


@dataclass(frozen=True)
class Finding:
    """Something running or waiting that a policy would deny (or, for a release request,
    make wait for more approvals)."""

    kind: str  # "sandbox" or "release"
    id: str
    owner: str
    rule: str
    reason: str
    denied: bool = True

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "id": self.id, "owner": self.owner, "rule": self.rule,
                "reason": self.reason, "denied": self.denied}


@dataclass(frozen=True)
class DryRun:
    version: int  # the number the document would get
    sha256: str
    sandboxes: tuple[Finding, ...]
    releases: tuple[Finding, ...]
    warnings: tuple[PolicyProblem, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {"version": self.version, "sha256": self.sha256,
                "sandboxes": [f.to_dict() for f in self.sandboxes],
                "releases": [f.to_dict() for f in self.releases],
                "warnings": [w.to_dict() for w in self.warnings]}


@dataclass(frozen=True)
class Activation:
    version: PolicyVersion
    result: DryRun


# --- reading ------------------------------------------------------------------------------


def versions(core: Sealroom) -> list[PolicyVersion]:
    with core.read() as session:
        return list(session.exec(select(PolicyVersion)
                                 .order_by(col(PolicyVersion.version).desc())).all())


def get_version(core: Sealroom, number: int) -> PolicyVersion:
    with core.read() as session:
        row = session.get(PolicyVersion, number)
    if row is None:
        raise NotFound(f"there is no policy version {number}")
    return row


def active_version(core: Sealroom) -> PolicyVersion:
    with core.read() as session:
        return _latest(session)


def _latest(session: Session) -> PolicyVersion:
    return session.exec(select(PolicyVersion).order_by(
        col(PolicyVersion.version).desc()).limit(1)).one()


def version_to_dict(row: PolicyVersion, *, text: bool = True) -> dict[str, object]:
    body: dict[str, object] = {
        "version": row.version, "sha256": row.sha256, "author": row.author,
        "reason": row.reason, "activated_at": row.created_at,
        "restored_from": row.restored_from}
    if text:
        body["yaml"] = row.text
    return body


def diff(core: Sealroom, old: int, new: int) -> list[DiffLine]:
    """A unified diff between two versions' documents."""
    a, b = get_version(core, old), get_version(core, new)
    return policy_diff(a.text, b.text, f"version {old}", f"version {new}")


def changes(core: Sealroom, text: str, result: DryRun) -> tuple[PolicyVersion, list[DiffLine]]:
    """The active version, and what `text` (dry-run as `result`) changes in its document."""
    active = active_version(core)
    return active, policy_diff(active.text, text, f"version {active.version} (active)",
                               f"version {result.version} (this dry run)")


def record_view(core: Sealroom, caller: Caller, target: str) -> None:
    core.record(caller.actor, AuditAction.POLICY_VIEW, target=target,
                request_id=caller.request_id)


# --- validation ---------------------------------------------------------------------------


def _context(session: Session) -> PolicyContext:
    datasets = frozenset(session.exec(select(Dataset.name)).all())
    users = session.exec(select(User.name, User.role).where(col(User.active))).all()
    return PolicyContext(datasets=datasets, roles=frozenset(r.value for r in Role),
                         users=frozenset(name for name, _ in users),
                         approvers=sum(1 for _, role in users if role == Role.APPROVER))


def _check(session: Session, text: str) -> CheckedPolicy:
    try:
        return check_policy(text, _context(session))
    except InvalidPolicy as exc:
        raise InvalidPolicyDocument(exc) from None


def check(core: Sealroom, text: str) -> CheckedPolicy:
    """Validate without recording anything (the editor's validation as you type)."""
    with core.read() as session:
        return _check(session, text)


def validate(core: Sealroom, caller: Caller, text: str) -> CheckedPolicy:
    with refusals(core, caller, AuditAction.POLICY_VALIDATE, "policy"):
        checked = check(core, text)
    core.record(caller.actor, AuditAction.POLICY_VALIDATE, target="policy",
                request_id=caller.request_id, sha256=checked.sha256,
                warnings=len(checked.warnings))
    return checked


# --- what a policy would deny -------------------------------------------------------------


def _registered_images(session: Session) -> set[str]:
    return set(session.exec(select(Image.digest)).all())


def _sandbox_findings(session: Session, policy: Policy) -> list[tuple[Sandbox, PolicyDecision]]:
    """Each running sandbox, relaunched under `policy` as its launch was decided (the same
    `ParsedLaunch.request` and `judge`): its owner's sandboxes started before it count
    against the owner's concurrency limit."""
    evaluator = PolicyEvaluator(policy)
    registered = _registered_images(session)
    rows = session.exec(select(Sandbox, User.role).join(User, col(User.id) == Sandbox.owner_id)
                        .where(col(Sandbox.status).in_([SandboxStatus.STARTING,
                                                        SandboxStatus.RUNNING]))
                        .order_by(col(Sandbox.created_at), col(Sandbox.id))).all()
    earlier: Counter[str] = Counter()
    found = []
    for sandbox, role in rows:
        project = session.get(Project, sandbox.project) if sandbox.project else None
        parsed = ParsedLaunch.of_sandbox(sandbox, project.owner if project else "")
        decision = judge(evaluator, parsed, sandbox.owner, role,
                         running=earlier[sandbox.owner], image_digest=sandbox.image_digest,
                         registered=registered)
        earlier[sandbox.owner] += 1
        if not decision:
            found.append((sandbox, decision))
    return found


def _release_findings(core: Sealroom, session: Session, policy: Policy,
                      ) -> list[tuple[ReleaseRequest, Finding, dict[str, object] | None]]:
    """Open release requests under `policy`: the gate's checks run again when the release
    rules differ from the active ones, and requests needing more approvals are listed."""
    active = core.policy
    rerun = policy.release != active.release
    rules = release_service.check_rules(policy)
    store = release_service.blob_store(core)
    found: list[tuple[ReleaseRequest, Finding, dict[str, object] | None]] = []
    records = session.exec(select(ReleaseRequest).where(col(ReleaseRequest.status).in_(
        [ReleaseStatus.SUBMITTED, ReleaseStatus.IN_REVIEW]))
        .order_by(col(ReleaseRequest.created_at), col(ReleaseRequest.id))).all()
    for record in records:
        if rerun:
            files = session.exec(select(ReleaseFile).where(
                ReleaseFile.release_id == record.id).order_by(col(ReleaseFile.name))).all()
            sandbox = session.get(Sandbox, record.sandbox_id)
            mounted = lineage_service.scan_datasets(session, sandbox) if sandbox else {}
            report = run_checks([CandidateFile(f.name, store.path(f.sha256), f.size, f.sha256)
                                 for f in files], rules, mounted)
            if not report.passed:
                failed = report.failed
                reason = "; ".join(f"{r.file or 'request'}: {r.reason}" for r in failed)
                finding = Finding("release", record.id, record.requester,
                                  release_service.rule_for(failed[0]), reason[:500])
                found.append((record, finding, release_service.report_dict(report)))
                continue
        needed = policy.release.approvals_needed
        if needed > record.approvals_needed:
            found.append((record, Finding(
                "release", record.id, record.requester, "release.approvals_needed",
                f"needs {needed} approvals instead of {record.approvals_needed}",
                denied=False), None))
    return found


def _findings(core: Sealroom, session: Session, checked: CheckedPolicy,
              version: int) -> tuple[Policy, DryRun, list[tuple[ReleaseRequest, Finding,
                                                             dict[str, object] | None]]]:
    policy = checked.policy.model_copy(update={"version": version})
    sandboxes = tuple(Finding("sandbox", s.id, s.owner, d.rule, d.reason)
                      for s, d in _sandbox_findings(session, policy))
    releases = _release_findings(core, session, policy)
    return policy, DryRun(version, checked.sha256, sandboxes,
                          tuple(f for _, f, _ in releases), checked.warnings), releases


def dry_run(core: Sealroom, caller: Caller, text: str, *,
            restoring: int | None = None) -> DryRun:
    """What `text` would deny if activated now; audited (with the version it would restore,
    when it is an earlier version's text)."""
    target = f"policy:{restoring}" if restoring else "policy"
    with refusals(core, caller, AuditAction.POLICY_DRY_RUN, target), \
            core.read() as session:
        checked = _check(session, text)
        _, result, _ = _findings(core, session, checked, _latest(session).version + 1)
    details = _summary(result) | ({"restores": restoring} if restoring else {})
    with core.transaction() as session:
        append(session, EventDraft(caller.actor, AuditAction.POLICY_DRY_RUN, target,
                                   request_id=caller.request_id, details=details))
    return result


def restore_dry_run(core: Sealroom, caller: Caller, number: int) -> tuple[PolicyVersion, DryRun]:
    """The dry run of restoring version `number`: refused (and audited) for a version that
    does not exist or whose document is the active one already, as its restore would be."""
    with refusals(core, caller, AuditAction.POLICY_DRY_RUN, f"policy:{number}"):
        old = get_version(core, number)
        active = active_version(core)
        if old.sha256 == active.sha256:
            raise Conflict(f"version {number}'s document is the active policy already "
                           f"(version {active.version}); there is nothing to restore")
    return old, dry_run(core, caller, old.text, restoring=number)


def _summary(result: DryRun) -> dict[str, object]:
    return {"version": result.version, "sha256": result.sha256,
            "denied_sandboxes": [{"id": f.id, "rule": f.rule} for f in result.sandboxes],
            "denied_releases": [{"id": f.id, "rule": f.rule} for f in result.releases
                                if f.denied],
            "more_approvals": [f.id for f in result.releases if not f.denied],
            "warnings": len(result.warnings)}


# --- activation ---------------------------------------------------------------------------


def activate(core: Sealroom, caller: Caller, text: str, reason: str, *,
             base_version: int | None = None, restored_from: int | None = None) -> Activation:
    """Make `text` the active policy as a new version; audited with its reason. Release
    requests it denies fail their checks; running sandboxes it denies are recorded and
    listed for the officer, who may stop them."""
    action = AuditAction.POLICY_RESTORE if restored_from else AuditAction.POLICY_ACTIVATE
    with refusals(core, caller, action, "policy"):
        return _activate(core, caller, text, reason, base_version, restored_from, action)


def _activate(core: Sealroom, caller: Caller, text: str, reason: str,
              base_version: int | None, restored_from: int | None,
              action: AuditAction) -> Activation:
    reason = reason.strip()
    if not reason:
        raise BadRequest("say why this policy is activated (reason)")
    if len(reason) > MAX_REASON:
        raise BadRequest(f"the reason is longer than {MAX_REASON} characters")
    with core.transaction() as session:
        latest = _latest(session)
        if base_version is not None and base_version != latest.version:
            raise Conflict(f"version {latest.version} was activated after version "
                           f"{base_version}, which this edit started from; reload the "
                           "active policy and apply the change again")
        checked = _check(session, text)
        if checked.sha256 == latest.sha256:
            raise Conflict(f"this document is already the active policy "
                           f"(version {latest.version})")
        number = latest.version + 1
        policy, result, releases = _findings(core, session, checked, number)
        row = PolicyVersion(version=number, text=text, sha256=checked.sha256,
                            author=caller.name, reason=reason, created_at=utc_now(),
                            restored_from=restored_from)
        session.add(row)
        append(session, EventDraft(
            caller.actor, action, f"policy:{number}", reason=reason,
            request_id=caller.request_id,
            details={"previous": latest.version, "restored_from": restored_from,
                     **_summary(result)}))
        _apply(session, caller, policy, result, releases)
    return Activation(row, result)


def _apply(session: Session, caller: Caller, policy: Policy, result: DryRun,
           releases: list[tuple[ReleaseRequest, Finding, dict[str, object] | None]]) -> None:
    """What an activation does to what it found, in the activation's transaction."""
    for finding in result.sandboxes:
        append(session, EventDraft(
            Actor.system("policy"), AuditAction.POLICY_DECIDE, f"sandbox:{finding.id}",
            Outcome.DENIED, finding.reason, caller.request_id,
            details={"rule": finding.rule, "policy_version": policy.version,
                     "owner": finding.owner, "effect": "listed for the security officer"}))
    for record, finding, report in releases:
        target = f"release:{record.id}"
        if finding.denied:
            record.status = ReleaseStatus.CHECKS_FAILED
            record.reason = f"policy version {policy.version} denies it ({finding.rule}): " \
                            f"{finding.reason}"[:2000]
            if report is not None:
                record.checks = json.dumps(report)
            effect = "checks failed"
        else:
            record.approvals_needed = policy.release.approvals_needed
            effect = f"needs {record.approvals_needed} approvals"
        record.updated_at = utc_now()
        session.add(record)
        append(session, EventDraft(
            Actor.system("policy"), AuditAction.POLICY_DECIDE, target,
            Outcome.DENIED if finding.denied else Outcome.OK, finding.reason,
            caller.request_id,
            details={"rule": finding.rule, "policy_version": policy.version,
                     "effect": effect}))


def restore(core: Sealroom, caller: Caller, number: int, reason: str, *,
            base_version: int | None = None) -> Activation:
    """Activate an earlier version's document again, as a new version (refused when
    `base_version`, the active version its dry run was shown against, is no longer active)."""
    with refusals(core, caller, AuditAction.POLICY_RESTORE, f"policy:{number}"):
        old = get_version(core, number)
    return activate(core, caller, old.text, reason, base_version=base_version,
                    restored_from=number)


# --- dataset rules, on registration -------------------------------------------------------


def grant_dataset(core: Sealroom, session: Session, caller: Caller, dataset: str,
                  allow: list[str]) -> PolicyVersion:
    """Activate a version adding `dataset`'s access list, inside the caller's transaction
    (the dataset row is already added to `session`)."""
    latest = _latest(session)
    try:
        text = with_dataset_rule(latest.text, dataset, allow)
    except InvalidPolicy as exc:
        raise InvalidPolicyDocument(exc) from None
    checked = _check(session, text)
    reason = f"dataset {dataset} registered"
    row = PolicyVersion(version=latest.version + 1, text=text, sha256=checked.sha256,
                        author=caller.name, reason=reason, created_at=utc_now())
    session.add(row)
    append(session, EventDraft(
        caller.actor, AuditAction.POLICY_ACTIVATE, f"policy:{row.version}", reason=reason,
        request_id=caller.request_id,
        details={"previous": latest.version, "version": row.version, "sha256": row.sha256,
                 "dataset": dataset, "allow": allow}))
    return row


# --- running sandboxes the active policy forbids ------------------------------------------


def forbidden_sandboxes(core: Sealroom) -> list[Finding]:
    policy = core.policy
    with core.read() as session:
        return [Finding("sandbox", s.id, s.owner, d.rule, d.reason)
                for s, d in _sandbox_findings(session, policy)]


def forbidding_decisions(session: Session, policy: Policy) -> dict[str, PolicyDecision]:
    """Each running (or starting) sandbox `policy` forbids, by id, with the decision saying
    why: what its launch would be told under `policy` (`_sandbox_findings`)."""
    return {sandbox.id: decision for sandbox, decision in _sandbox_findings(session, policy)}


def forbidding_decision(core: Sealroom, sandbox_id: str) -> PolicyDecision | None:
    """Why the active policy forbids this running sandbox, or None if it does not."""
    policy = core.policy
    with core.read() as session:
        return forbidding_decisions(session, policy).get(sandbox_id)
