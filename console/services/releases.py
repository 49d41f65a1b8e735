"""Release requests: the one door out. Request (files frozen by hash), automated checks,
review by approvers other than the requester, sealing (signatures + provenance), download.

States: submitted → checks_failed | in_review → approved | rejected | withdrawn → released.
Only a request still open (submitted, in review) can be withdrawn: `checks_failed` is already
an end. Sealing is atomic and idempotent, so a crash while `approved` is finished on the next
start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from audit.chain import append, utc_now
from audit.events import Actor, AuditAction, EventDraft, Outcome
from audit.models import AuditEvent
from console.core import Caller, Sealroom
from console.models import (
    ReleaseDecision,
    ReleaseFile,
    ReleaseRequest,
    ReleaseStatus,
    Sandbox,
    SandboxStatus,
)
from console.permissions import Permission, role_has
from console.services import lineage as lineage_service
from console.services import model_risk
from console.services import outbox as outbox_service
from console.services.auditing import refusals
from console.services.errors import BadRequest, Conflict, Forbidden, NotFound, ServiceError
from policies.schema import Policy
from sandbox.errors import SandboxError
from sandbox.gate.checks import (
    CandidateFile,
    Check,
    CheckReport,
    CheckResult,
    FileKind,
    file_kind,
    run_checks,
    suffix_of,
)
from sandbox.gate.errors import BlobRefused, GateError
from sandbox.gate.inspect import render_file, visible
from sandbox.gate.rules import CheckRules
from sandbox.gate.store import BlobStore

log = logging.getLogger(__name__)

MAX_JUSTIFICATION = 4000
#: An approval's comment, a rejection's reason, a withdrawal's reason.
MAX_NOTE = 2000
_NAME = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]{0,254}$")


def blob_store(core: Sealroom) -> BlobStore:
    return BlobStore(core.settings.home / "blobs")


def _release_dir(core: Sealroom, release_id: str) -> Path:
    return core.settings.home / "releases" / release_id


def check_rules(policy: Policy) -> CheckRules:
    """A policy's release section, as the gate's check rules."""
    release = policy.release
    return CheckRules(
        weight_types=tuple(release.weight_types),
        metrics_types=tuple(release.metrics_types),
        allow_pickle=release.allow_pickle,
        max_file_bytes=release.max_file_mb << 20,
        max_total_bytes=release.max_total_mb << 20,
        max_metric_values=release.max_metric_values,
        max_key_length=release.max_key_length,
        max_key_depth=release.max_key_depth,
        max_metric_key_bytes=release.max_metric_key_bytes,
        max_metadata_bytes=release.max_metadata_bytes,
        max_name_length=release.max_name_length,
        max_model_strings_bytes=release.max_model_strings_bytes,
        small_count_k=release.small_count_k,
        dominance_rule=release.dominance_rule,
        dominance_n=release.dominance_n,
        dominance_k=release.dominance_k,
        p_percent_rule=release.p_percent_rule,
        p_percent=release.p_percent,
        leak_scan=release.leak_scan,
        leak_min_row_bytes=release.leak_min_row_bytes,
    )


#: The policy rule behind each of the gate's checks (the gate itself knows no policy).
_CHECK_RULES = {
    Check.FILES: "release",
    Check.FILE_TYPE: "release.file_types",
    Check.FILE_FORMAT: "release.file_types",
    Check.FILE_SIZE: "release.max_file_mb",
    Check.TOTAL_SIZE: "release.max_total_mb",
    Check.METRICS: "release.metrics_types",
    Check.PICKLE_SCAN: "release.allow_pickle",
    Check.LEAK_SCAN: "release.leak_scan",
    model_risk.CHECK: "release.model_risk",
}


def rule_for(result: CheckResult) -> str:
    """The policy rule a failed check result comes from, as recorded and shown."""
    if result.limit:
        return f"release.{result.limit}"
    return next((rule for check, rule in _CHECK_RULES.items() if check == result.check),
                "release")


def report_dict(report: CheckReport) -> dict[str, Any]:
    """The check report as stored and shown, each failed result naming its policy rule."""
    body = report.to_dict()
    for item, result in zip(body["results"], report.results, strict=True):
        if not result.passed:
            item["rule"] = rule_for(result)
    return body


# --- request ------------------------------------------------------------------------------


def create(core: Sealroom, caller: Caller, sandbox_id: str, names: list[str],
           justification: str) -> ReleaseRequest:
    with refusals(core, caller, AuditAction.RELEASE_REQUEST, f"sandbox:{sandbox_id[:64]}"):
        return _create(core, caller, sandbox_id, names, justification)


def _labelled(report: CheckReport, labels: dict[str, str]) -> CheckReport:
    """The report as people see it: each file by its label, never a withheld name."""
    return CheckReport(tuple(replace(r, file=labels.get(r.file, r.file)) if r.file else r
                             for r in report.results))


def _sealable_name(name: str, label: str) -> None:
    """Refuse at request time a name sealing would refuse: the one rule for release names is
    `sandbox.gate.sealing.check_release_name`, used here and when the bundle is sealed, so
    an approved request can never fail to seal (and be retried at every start) for its
    names. A name the policy withholds is not repeated in the message."""
    from sandbox.gate.sealing import InvalidReleaseName, check_release_name  # loads signing

    try:
        check_release_name(name)
    except InvalidReleaseName as exc:
        message = exc.user_message if label == name else \
            f"{label} cannot be released: its name is not a plain relative file name"
        raise BadRequest(message) from None


def _create(core: Sealroom, caller: Caller, sandbox_id: str, names: list[str],
            justification: str) -> ReleaseRequest:
    justification = justification.strip()
    if not justification:
        raise BadRequest("say why these files should leave (justification)")
    if len(justification) > MAX_JUSTIFICATION:
        raise BadRequest(f"the justification is longer than {MAX_JUSTIFICATION} characters")
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not names:
        raise BadRequest("choose at least one file from the outbox")
    for name in names:
        if not name.startswith("#"):  # `#17` is a position in the listing, not a name
            _sealable_name(name, name)
    with core.read() as session:
        sandbox = session.get(Sandbox, sandbox_id)
        if sandbox is None or sandbox.owner != caller.name:
            raise NotFound("no such sandbox")
        if not SandboxStatus(sandbox.status).terminal:
            raise Conflict("stop the sandbox (or let it finish) before requesting a release")
        # The leak scan looks for every dataset version the files descend from: the
        # sandbox's own, and those of every input and project workspace it built on.
        mounted = lineage_service.scan_datasets(session, sandbox)
    policy = core.policy  # one version decides the whole request
    rules = check_rules(policy)
    store = blob_store(core)
    chosen = outbox_service.choose(core, sandbox_id, names)
    if len({c.path for c in chosen}) != len(chosen):
        raise BadRequest("the request names the same file more than once")
    labels = {c.path: c.label for c in chosen}
    for file in chosen:
        _sealable_name(file.path, file.label)
    candidates = []
    try:
        for file in chosen:
            with outbox_service.open_file(core, sandbox_id, file.path) as source:
                sha, size = store.put_stream(source, file.label, max_bytes=rules.max_file_bytes)
            if sha != file.sha256:
                raise BadRequest(f"{file.label} changed after the outbox was hashed")
            candidates.append(CandidateFile(name=file.path, path=store.path(sha), size=size,
                                            sha256=sha))
    except BlobRefused as exc:
        raise BadRequest(exc.user_message, rule="release.max_file_mb",
                         policy_version=policy.version) from exc
    except SandboxError as exc:  # the outbox could not be opened
        raise BadRequest(exc.user_message) from exc
    report = _labelled(run_checks(candidates, rules, mounted), labels)
    # Models are attacked only once everything else passed (an attack run takes minutes).
    attacked: list[model_risk.ModelUnderTest] = []
    if report.passed:
        _, outbox_items = outbox_service.manifest_items(core, sandbox_id)
        models = [(c.name, labels[c.name]) for c in candidates
                  if file_kind(c.name, rules) is FileKind.WEIGHTS]
        attacked, unattacked = model_risk.plan(
            policy.release.model_risk, models,
            {i.path for i in outbox_items if i.kind == "file" and i.sha256 is not None})
        report = CheckReport((*report.results, *unattacked))
    release_id = "rel-" + secrets.token_hex(6)
    status = ReleaseStatus.IN_REVIEW if report.passed else ReleaseStatus.CHECKS_FAILED
    if attacked and report.passed:
        status = ReleaseStatus.SUBMITTED  # until the attacks have run
    checks = report_dict(report)
    if attacked:
        checks[model_risk.CHECK] = {"pending": [{"path": m.path, "label": m.label}
                                                for m in attacked]}
    now = utc_now()
    with core.transaction() as session:
        record = ReleaseRequest(
            id=release_id, sandbox_id=sandbox_id, requester=caller.name, status=status,
            justification=justification, approvals_needed=policy.release.approvals_needed,
            policy_version=policy.version, checks=json.dumps(checks),
            created_at=now, updated_at=now)
        session.add(record)
        session.flush()  # the files reference the request row
        for c in candidates:
            session.add(ReleaseFile(release_id=release_id, name=c.name, label=labels[c.name],
                                    size=c.size, sha256=c.sha256))
        target = f"release:{release_id}"
        append(session, EventDraft(
            caller.actor, AuditAction.RELEASE_REQUEST, target, request_id=caller.request_id,
            details={"sandbox": sandbox_id, "justification": justification,
                     "files": [{"name": labels[c.name], "size": c.size, "sha256": c.sha256}
                               for c in candidates]}))
        failed = [r for r in report.results if not r.passed]
        rules_failed = list(dict.fromkeys(rule_for(r) for r in failed))
        append(session, EventDraft(
            Actor.system("release-gate"), AuditAction.RELEASE_CHECKS, target,
            Outcome.OK if report.passed else Outcome.DENIED,
            "; ".join(f"{r.check} {r.file}: {r.reason}".replace("  ", " ") for r in failed)[:2000],
            caller.request_id,
            details={"policy_version": policy.version,
                     **({"rule": rules_failed[0], "rules": rules_failed} if failed else {}),
                     "results": [{"check": r.check, "file": r.file, "passed": r.passed}
                                 for r in report.results],
                     **({"model_risk": "running"} if status == ReleaseStatus.SUBMITTED
                        else {})}))
    if status == ReleaseStatus.SUBMITTED:
        model_risk.start(core, release_id)
    return record


# --- reading ------------------------------------------------------------------------------


def _may_review(caller: Caller) -> bool:
    return role_has(caller.role, Permission.RELEASE_REVIEW)


def _visible(session: Session, caller: Caller, release_id: str) -> ReleaseRequest:
    record = session.get(ReleaseRequest, release_id)
    if record is None or not (record.requester == caller.name or _may_review(caller)):
        raise NotFound("no such release request")
    return record


def _readable(session: Session, caller: Caller, release_id: str) -> ReleaseRequest:
    """`_visible`, and for a role that inspects anyone's requests (an auditor), any request:
    to read, never to act on."""
    record = session.get(ReleaseRequest, release_id)
    if record is not None and role_has(caller.role, Permission.RELEASE_INSPECT):
        return record
    return _visible(session, caller, release_id)


def get(core: Sealroom, caller: Caller, release_id: str) -> ReleaseRequest:
    with core.read() as session:
        return _readable(session, caller, release_id)


def _query(caller: Caller, status: str | None) -> Any:
    query = select(ReleaseRequest).order_by(col(ReleaseRequest.created_at).desc())
    if not _may_review(caller) and not role_has(caller.role, Permission.RELEASE_INSPECT):
        query = query.where(ReleaseRequest.requester == caller.name)
    if status:
        query = query.where(ReleaseRequest.status == status)
    return query


def listing(core: Sealroom, caller: Caller, *, status: str | None = None
            ) -> list[dict[str, Any]]:
    """The release requests the caller may see, newest first, as shown (`to_dict`): the
    requests, their files and their approvals in one read, whatever the number of requests."""
    with core.read() as session:
        return _bodies(session, list(session.exec(_query(caller, status)).all()))


def _waiting_query(caller: Caller, what: Any) -> Any:
    """Requests `caller` may still decide: in review, someone else's, not yet approved by
    them (a rejection ends the review, so it needs no test of its own)."""
    decided = select(ReleaseDecision.release_id).where(
        ReleaseDecision.approver == caller.name, ReleaseDecision.decision == "approve")
    return select(what).where(
        ReleaseRequest.status == ReleaseStatus.IN_REVIEW,
        ReleaseRequest.requester != caller.name,
        col(ReleaseRequest.id).not_in(decided))


def queue(core: Sealroom, caller: Caller) -> list[dict[str, Any]]:
    """The approver's queue, oldest first (the one waiting longest on top), as `to_dict`;
    empty for a caller who may not review."""
    if not _may_review(caller):
        return []
    with core.read() as session:
        records = session.exec(_waiting_query(caller, ReleaseRequest).order_by(
            col(ReleaseRequest.created_at))).all()
        return _bodies(session, list(records))


def waiting_count(core: Sealroom, caller: Caller) -> int:
    """How many requests are waiting on `caller` (the queue's length, counted in SQL)."""
    if not _may_review(caller):
        return 0
    with core.read() as session:
        return int(session.exec(_waiting_query(caller, func.count())).one())


#: Statuses in which a request still holds its files: open, on the way out, or out.
_HOLDING = (ReleaseStatus.SUBMITTED, ReleaseStatus.IN_REVIEW, ReleaseStatus.APPROVED,
            ReleaseStatus.RELEASED)


def requested_files(core: Sealroom, caller: Caller, sandbox_id: str
                    ) -> dict[tuple[str, str], dict[str, str]]:
    """The caller's own sandbox's outbox files already in a request that is open or released,
    keyed by (label, SHA-256) as the outbox lists them, each with the request's id and
    status; the sandbox page offers only the others for a new request."""
    with core.read() as session:
        rows = session.exec(select(ReleaseFile, ReleaseRequest).join(
            ReleaseRequest, col(ReleaseFile.release_id) == col(ReleaseRequest.id)).where(
            ReleaseRequest.sandbox_id == sandbox_id,
            ReleaseRequest.requester == caller.name,
            col(ReleaseRequest.status).in_(_HOLDING)).order_by(
            col(ReleaseRequest.created_at))).all()
    return {(file.label or file.name, file.sha256): {"id": record.id, "status": record.status}
            for file, record in rows}


def of_sandbox(core: Sealroom, caller: Caller, sandbox_id: str) -> list[dict[str, str]]:
    """Every release request made from the sandbox that the caller may read (their own; any,
    for a role that inspects requests), oldest first: id, status and when, for links."""
    query = select(ReleaseRequest).where(ReleaseRequest.sandbox_id == sandbox_id)
    if not role_has(caller.role, Permission.RELEASE_INSPECT):
        query = query.where(ReleaseRequest.requester == caller.name)
    with core.read() as session:
        rows = session.exec(query.order_by(col(ReleaseRequest.created_at))).all()
    return [{"id": r.id, "status": r.status, "created_at": r.created_at} for r in rows]


def _files(session: Session, release_id: str) -> list[ReleaseFile]:
    return list(session.exec(select(ReleaseFile).where(
        ReleaseFile.release_id == release_id).order_by(col(ReleaseFile.name))).all())


def _decisions(session: Session, release_id: str) -> list[ReleaseDecision]:
    return list(session.exec(select(ReleaseDecision).where(
        ReleaseDecision.release_id == release_id).order_by(col(ReleaseDecision.id))).all())


def files_of(core: Sealroom, release_id: str) -> list[ReleaseFile]:
    with core.read() as session:
        return _files(session, release_id)


def decisions_of(core: Sealroom, release_id: str) -> list[ReleaseDecision]:
    with core.read() as session:
        return _decisions(session, release_id)


def _timeline(session: Session, release_id: str) -> list[AuditEvent]:
    return list(session.exec(select(AuditEvent).where(
        AuditEvent.target == f"release:{release_id}").order_by(col(AuditEvent.id))).all())


#: Release ids per IN (...) when loading files and decisions for a list (SQLite caps the
#: number of bound parameters in one statement).
_BATCH = 500


def _bodies(session: Session, records: list[ReleaseRequest]) -> list[dict[str, Any]]:
    """`to_dict` for many requests, with their files and approvals loaded in bulk."""
    ids = [r.id for r in records]
    files: dict[str, list[ReleaseFile]] = {i: [] for i in ids}
    decisions: dict[str, list[ReleaseDecision]] = {i: [] for i in ids}
    for first in range(0, len(ids), _BATCH):
        batch = ids[first:first + _BATCH]
        for file in session.exec(select(ReleaseFile).where(
                col(ReleaseFile.release_id).in_(batch)).order_by(col(ReleaseFile.name))):
            files[file.release_id].append(file)
        for decision in session.exec(select(ReleaseDecision).where(
                col(ReleaseDecision.release_id).in_(batch)).order_by(col(ReleaseDecision.id))):
            decisions[decision.release_id].append(decision)
    return [_body(r, files[r.id], decisions[r.id]) for r in records]


def _body(record: ReleaseRequest, files: list[ReleaseFile],
          decisions: list[ReleaseDecision]) -> dict[str, Any]:
    approvals = [d.approver for d in decisions if d.decision == "approve"]
    return {
        "id": record.id,
        "sandbox": record.sandbox_id,
        "requester": record.requester,
        "status": record.status,
        "justification": record.justification,
        "reason": record.reason,
        # Until the release, a name the policy withholds stays "file 17 (name withheld)".
        "files": [{"name": f.name if record.status == ReleaseStatus.RELEASED
                   else (f.label or f.name), "size": f.size, "sha256": f.sha256}
                  for f in files],
        "checks": json.loads(record.checks),
        "approvals": approvals,
        "approvals_needed": record.approvals_needed,
        # Each approver's decision with what they wrote: an approval's optional comment, a
        # rejection's reason (people's words, typed into the console, never sandbox bytes).
        "decisions": [{"approver": d.approver, "decision": d.decision, "comment": d.reason,
                       "at": d.created_at} for d in decisions],
        "policy_version": record.policy_version,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "released_at": record.released_at,
        "bundle": f"/api/v1/releases/{record.id}/bundle"
        if record.status == ReleaseStatus.RELEASED else None,
        "keyid": record.bundle_keyid or None,
    }


def to_dict(core: Sealroom, record: ReleaseRequest) -> dict[str, Any]:
    """The request as the API and the pages show it (one read for its files and approvals;
    for many requests, `listing`)."""
    with core.read() as session:
        return _bodies(session, [record])[0]


@dataclass(frozen=True)
class ReleaseDetail:
    """What a release's page shows besides the request itself, read in one snapshot."""

    body: dict[str, Any]
    sandbox: Sandbox | None
    decisions: list[ReleaseDecision]
    events: list[AuditEvent]


def detail(core: Sealroom, record: ReleaseRequest) -> ReleaseDetail:
    """The request's page: `to_dict`, its sandbox, every decision and its audit timeline."""
    with core.read() as session:
        return ReleaseDetail(_bodies(session, [record])[0],
                             session.get(Sandbox, record.sandbox_id),
                             _decisions(session, record.id), _timeline(session, record.id))


#: Elements of each tensor a file view reads for its statistics.
VIEW_MAX_ELEMENTS = 1_000_000


def may_view_files(caller: Caller, record: ReleaseRequest) -> bool:
    """Rendered views are sandbox bytes: for approvers, and for the requester (or an
    auditor) only once the files are out anyway (released); never while the request is
    open."""
    if record.requester == caller.name or not _may_review(caller):
        return record.status == ReleaseStatus.RELEASED and (
            record.requester == caller.name
            or role_has(caller.role, Permission.RELEASE_INSPECT))
    return True


def file_view(core: Sealroom, caller: Caller, release_id: str, position: int) -> dict[str, Any]:
    """The rendered view of the release's file at `position` (1-based, in the order the
    files are listed), audited per view with the file's position and hash."""
    target = f"release:{release_id[:64]}"
    with refusals(core, caller, AuditAction.RELEASE_FILE_VIEW, target):
        with core.read() as session:
            record = _readable(session, caller, release_id)
            files = _files(session, release_id)
        if not may_view_files(caller, record):
            raise Forbidden("the files' contents are shown to approvers; the requester "
                            "and auditors see them once the release is released")
        if not 1 <= position <= len(files):
            raise NotFound(f"this release has no file {position}")
    chosen = files[position - 1]
    view = render_file(blob_store(core).path(chosen.sha256), suffix_of(chosen.name),
                       max_elements=VIEW_MAX_ELEMENTS)
    core.record(caller.actor, AuditAction.RELEASE_FILE_VIEW, target=f"release:{release_id}",
                request_id=caller.request_id, position=position, sha256=chosen.sha256,
                view=str(view.kind))
    return {"release": release_id, "position": position, "files": len(files),
            "name": visible(chosen.name), "size": chosen.size, "sha256": chosen.sha256,
            "view": view.to_dict()}


# --- review -------------------------------------------------------------------------------


def _transition(session: Session, record: ReleaseRequest, status: ReleaseStatus,
                reason: str = "") -> None:
    record.status = status
    record.reason = reason or record.reason
    record.updated_at = utc_now()
    session.add(record)


@contextmanager
def _approved_once() -> Iterator[None]:
    """An approver's second approval racing the first: the unique index refuses it."""
    try:
        yield
    except IntegrityError:
        raise Conflict("you have already approved this request") from None


def review_note(text: str, *, required: str = "") -> str:
    """An approver's or requester's words as stored: stripped, at most `MAX_NOTE` characters.
    `required` is the message for an empty note where one is needed (a rejection).

    The views call this before the service, so bad input is a form error (or a 400) recorded
    at the request level (`auth:request:deny` on the request's path), not a refusal in the
    release's timeline, which keeps to what happened to the release; the service calls it
    again before it opens that timeline, for any other caller."""
    note = text.strip()
    if required and not note:
        raise BadRequest(required)
    if len(note) > MAX_NOTE:
        raise BadRequest(f"write at most {MAX_NOTE} characters")
    return note


REJECT_NEEDS_REASON = "say why the request is rejected"


def _must_be_in_review(record: ReleaseRequest) -> None:
    if record.status != ReleaseStatus.IN_REVIEW:
        raise Conflict(f"the request is {record.status.replace('_', ' ')}, not in review")


def approve(core: Sealroom, caller: Caller, release_id: str,
            comment: str = "") -> ReleaseRequest:
    """One approval, with the approver's optional comment (stored with the decision and
    recorded as the event's reason); the last approval needed seals the release."""
    comment = review_note(comment)
    target = f"release:{release_id[:64]}"
    with refusals(core, caller, AuditAction.RELEASE_APPROVE, target), _approved_once(), \
            core.transaction() as session:
        record = _visible(session, caller, release_id)
        if record.requester == caller.name:
            raise Forbidden("you cannot approve your own release request")
        _must_be_in_review(record)
        if session.exec(select(ReleaseDecision).where(
                ReleaseDecision.release_id == release_id,
                ReleaseDecision.approver == caller.name,
                ReleaseDecision.decision == "approve")).first():
            raise Conflict("you have already approved this request")
        session.add(ReleaseDecision(release_id=release_id, approver=caller.name,
                                    decision="approve", reason=comment, created_at=utc_now()))
        session.flush()
        count = len(session.exec(select(ReleaseDecision).where(
            ReleaseDecision.release_id == release_id,
            ReleaseDecision.decision == "approve")).all())
        # The active policy may have raised the number since the request was made.
        policy = core.policy
        if policy.release.approvals_needed > record.approvals_needed:
            record.approvals_needed = policy.release.approvals_needed
            session.add(record)
        complete = count >= record.approvals_needed
        if complete:
            _transition(session, record, ReleaseStatus.APPROVED)
        append(session, EventDraft(
            caller.actor, AuditAction.RELEASE_APPROVE, target, reason=comment,
            request_id=caller.request_id,
            details={"approvals": count, "needed": record.approvals_needed,
                     "rule": "release.approvals_needed",
                     "policy_version": policy.version}))
    if complete:
        return seal(core, release_id)
    return record


def reject(core: Sealroom, caller: Caller, release_id: str, reason: str) -> ReleaseRequest:
    reason = review_note(reason, required=REJECT_NEEDS_REASON)
    target = f"release:{release_id[:64]}"
    with refusals(core, caller, AuditAction.RELEASE_REJECT, target), \
            core.transaction() as session:
        record = _visible(session, caller, release_id)
        if record.requester == caller.name:
            raise Forbidden("you cannot review your own release request; withdraw it")
        _must_be_in_review(record)
        session.add(ReleaseDecision(release_id=release_id, approver=caller.name,
                                    decision="reject", reason=reason,
                                    created_at=utc_now()))
        _transition(session, record, ReleaseStatus.REJECTED, reason)
        append(session, EventDraft(caller.actor, AuditAction.RELEASE_REJECT, target,
                                   reason=reason, request_id=caller.request_id))
    return record


def may_withdraw(record: ReleaseRequest) -> bool:
    """Withdrawing ends a request still waiting on someone; one whose checks failed is
    already ended (nobody can approve it), so there is nothing to withdraw."""
    return ReleaseStatus(record.status).open


def withdraw(core: Sealroom, caller: Caller, release_id: str, reason: str = "") -> ReleaseRequest:
    reason = review_note(reason)
    target = f"release:{release_id[:64]}"
    with refusals(core, caller, AuditAction.RELEASE_WITHDRAW, target), \
            core.transaction() as session:
        record = _visible(session, caller, release_id)
        if record.requester != caller.name:
            raise Forbidden("only the requester can withdraw a release request")
        if not may_withdraw(record):
            raise Conflict(f"the request is {record.status.replace('_', ' ')}; "
                           "it can no longer be withdrawn")
        _transition(session, record, ReleaseStatus.WITHDRAWN,
                    reason or "withdrawn by the requester")
        append(session, EventDraft(caller.actor, AuditAction.RELEASE_WITHDRAW, target,
                                   reason=reason, request_id=caller.request_id))
    return record


# --- sealing ------------------------------------------------------------------------------


def seal(core: Sealroom, release_id: str) -> ReleaseRequest:
    """Sign the approved files and their provenance into a bundle; safe to repeat."""
    from sandbox.gate.provenance import build_provenance
    from sandbox.gate.sealing import seal_bundle

    with core.read() as session:
        record = session.get(ReleaseRequest, release_id)
        if record is None:
            raise NotFound("no such release request")
        if record.status != ReleaseStatus.APPROVED:
            return record
        sandbox = session.get(Sandbox, record.sandbox_id)
        assert sandbox is not None
        ancestors = lineage_service.ancestors(session, sandbox)
    files = files_of(core, release_id)
    approvers = [d.approver for d in decisions_of(core, release_id) if d.decision == "approve"]
    started = utc_now()
    provenance = build_provenance(
        [(f.name, f.sha256) for f in files], release_id=release_id,
        sandbox_spec=json.loads(sandbox.spec), image_digest=sandbox.image_digest,
        datasets=json.loads(sandbox.datasets), code_digest=sandbox.code_digest,
        ancestors=ancestors, project=sandbox.project, project_parent=sandbox.project_parent,
        inputs=[{"sandbox": i["sandbox"], "digest": i["digest"]}
                for i in json.loads(sandbox.inputs)],
        policy_version=record.policy_version, requester=record.requester,
        approvers=approvers, checks=json.loads(record.checks), started_on=started,
        finished_on=utc_now(), builder_id=f"https://sealroom.dev/gate/"
                                          f"{core.settings.installation_id()}")
    key = core.gate_key()
    destination = _release_dir(core, release_id) / "bundle"
    destination.parent.mkdir(parents=True, exist_ok=True)
    store = blob_store(core)
    try:
        sealed = seal_bundle(
            files=[(f.name, store.path(f.sha256), f.sha256) for f in files],
            destination=destination, private_key_pem=key.private_pem,
            passphrase=key.passphrase, provenance=provenance,
            previous_public_keys=[k.pem.encode() for k in core.key_ring.public_keys()
                                  if not k.active])
    except GateError as exc:
        core.record(Actor.system("release-gate"), AuditAction.RELEASE_SEAL,
                    target=f"release:{release_id}", outcome=Outcome.FAILED,
                    reason=exc.user_message, detail=exc.detail)
        raise ServiceError(f"sealing failed: {exc.user_message}") from exc
    with core.transaction() as session:
        record = session.get(ReleaseRequest, release_id)
        assert record is not None
        if record.status == ReleaseStatus.APPROVED:
            record.bundle_path = str(sealed.path)
            record.bundle_keyid = sealed.keyid
            record.released_at = utc_now()
            _transition(session, record, ReleaseStatus.RELEASED)
            append(session, EventDraft(
                Actor.system("release-gate"), AuditAction.RELEASE_SEAL,
                f"release:{release_id}",
                details={"keyid": sealed.keyid, "approvers": approvers,
                         "files": [{"name": n, "sha256": s} for n, s in sealed.files]}))
    return record


def resume_sealing(core: Sealroom) -> None:
    """After a crash: finish every release that was approved but not yet sealed."""
    with core.read() as session:
        pending = session.exec(select(ReleaseRequest.id).where(
            ReleaseRequest.status == ReleaseStatus.APPROVED)).all()
    for release_id in pending:
        try:
            seal(core, release_id)
        except ServiceError:
            log.exception("sealing %s failed; it stays approved and is retried", release_id)
    root = core.settings.home / "releases"
    for partial in root.glob("*/bundle.partial-*") if root.exists() else ():
        shutil.rmtree(partial, ignore_errors=True)


# --- download -----------------------------------------------------------------------------


def bundle_archive(core: Sealroom, caller: Caller, release_id: str) -> Path:
    """The released bundle as a tar file, for the requester and the approvers only."""
    target = f"release:{release_id[:64]}"
    with refusals(core, caller, AuditAction.RELEASE_DOWNLOAD, target):
        with core.read() as session:
            record = _visible(session, caller, release_id)
            approvers = {d.approver for d in session.exec(select(ReleaseDecision).where(
                ReleaseDecision.release_id == release_id,
                ReleaseDecision.decision == "approve")).all()}
        if caller.name != record.requester and caller.name not in approvers:
            raise Forbidden("only the requester and the approvers may download this bundle")
        if record.status != ReleaseStatus.RELEASED:
            raise Conflict(f"the request is {record.status.replace('_', ' ')}; only released "
                           "bundles can be downloaded")
    archive = _release_dir(core, release_id) / f"{release_id}.tar"
    if not archive.exists():
        bundle = Path(record.bundle_path)
        fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=".tar-")
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
            for path in sorted(bundle.rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=f"{release_id}/{path.relative_to(bundle)}")
        os.replace(tmp, archive)
    core.record(caller.actor, AuditAction.RELEASE_DOWNLOAD, target=f"release:{release_id}",
                request_id=caller.request_id, bytes=archive.stat().st_size)
    return archive
