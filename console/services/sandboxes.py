"""Sandboxes: launch, watch, stop, and reconcile with the engine.

Docker calls happen outside database transactions; every state change and its audit event
are written together. Failures before the row exists leave no row and no container.
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import Session, col, select

from audit.chain import append, utc_now
from audit.errors import AuditWriteFailed
from audit.events import Actor, AuditAction, EventDraft, Outcome
from console.core import Caller, Sealroom
from console.models import Image, Sandbox, SandboxStatus, User
from console.services import datasets as dataset_service
from console.services import outbox as outbox_service
from console.services import policy as policy_service
from console.services import sandbox_log
from console.services.errors import (
    AuditUnavailable,
    BadRequest,
    Conflict,
    EngineDown,
    NotFound,
    PayloadTooLarge,
    PolicyDenied,
    ServiceError,
)
from console.services.images import current_image
from policies.evaluator import LaunchRequest, PolicyEvaluator
from policies.schema import Policy
from sandbox import spec as sandbox_spec
from sandbox.backend import BackendState, RunState
from sandbox.errors import EngineUnavailable, InvalidSpec, InvalidUpload, SandboxError
from sandbox.files import UploadLimits

log = logging.getLogger(__name__)

EXAMPLES = Path(sandbox_spec.__file__).with_name("examples")
DEFAULT_COMMAND = "python train.py"
LOG_VIEW_MAX = 1 << 20


@dataclass
class LaunchOrder:
    """What an engineer asked for, parsed by a view."""

    datasets: list[str]
    example: str | None = None
    code_name: str = ""
    code: bytes | None = None
    command: str = DEFAULT_COMMAND
    cpus: float = 1.0
    memory_mb: int = 2048
    pids: int = 256
    timeout_s: int = 1800
    gpus: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)


def examples() -> list[str]:
    return sorted(p.name for p in EXAMPLES.iterdir() if (p / "train.py").is_file())


def _now() -> datetime:
    return datetime.now(UTC)


def _parse(ts: str | None) -> datetime | None:
    return datetime.fromisoformat(ts) if ts else None


def state_of(record: Sandbox) -> BackendState:
    """The backend's state of a sandbox as stored ({} before it was created)."""
    state = json.loads(record.backend_state or "{}")
    return state if isinstance(state, dict) else {}


# --- launch -------------------------------------------------------------------------------


def launch(core: Sealroom, caller: Caller, order: LaunchOrder) -> Sandbox:
    """Launch a sandbox; every refusal is audited and leaves nothing behind."""
    policy = core.policy  # one version decides the whole launch, and is recorded
    try:
        return _launch(core, caller, order, policy)
    except ServiceError as exc:
        outcome = Outcome.FAILED if exc.status >= 500 else Outcome.DENIED
        if exc.rule and exc.policy_version is None:
            exc.policy_version = policy.version
        try:
            core.record(caller.actor, AuditAction.SANDBOX_LAUNCH, target="sandbox:",
                        outcome=outcome, reason=exc.message, request_id=caller.request_id,
                        rule=exc.rule, policy_version=policy.version,
                        datasets=order.datasets, detail=exc.detail)
        except AuditWriteFailed as audit_exc:
            # Nothing was launched; the refusal stands even though it could not be recorded.
            log.error("could not audit a refused launch (%s): %s", exc.message, audit_exc)
            if not isinstance(exc, AuditUnavailable):
                raise AuditUnavailable("the audit log cannot be written; nothing was launched",
                                       detail=str(audit_exc)) from exc
        raise


def _launch(core: Sealroom, caller: Caller, order: LaunchOrder, policy: Policy) -> Sandbox:
    if not order.datasets:
        raise BadRequest("choose a dataset")
    try:
        command = tuple(shlex.split(order.command))
        limits = sandbox_spec.Limits(cpus=order.cpus, memory_mb=order.memory_mb,
                                     pids=order.pids, timeout_s=order.timeout_s)
    except (ValueError, InvalidSpec) as exc:
        raise BadRequest(f"invalid launch request: {exc}") from exc
    if not command:
        raise BadRequest("the command must not be empty")
    if order.example is None and order.code is None:
        raise BadRequest("upload a script or a zip of code, or pick the bundled example")
    if order.example is not None and order.example not in examples():
        raise BadRequest(f"unknown example {order.example!r}")
    if order.gpus < 0:
        raise BadRequest("limits.gpus must not be negative")
    evaluator = PolicyEvaluator(policy)
    uploads = policy.uploads
    if order.code is not None and len(order.code) > uploads.max_code_mb * 1024 * 1024:
        raise PayloadTooLarge(f"the upload is larger than {uploads.max_code_mb} MB",
                              rule="uploads.max_code_mb")

    image = current_image(core)
    if image is None:
        raise EngineDown("no sandbox image is installed; an operator must run "
                         "'sealroom images build'")
    with core.transaction() as session:
        mounts = []
        for name in dict.fromkeys(order.datasets):
            dataset = dataset_service.find_dataset(session, name)
            if dataset is None:
                raise BadRequest(f"unknown dataset {name!r}")
            mounts.append(sandbox_spec.DatasetMount(name, Path(dataset.path), dataset.digest))
        running = len(session.exec(select(Sandbox.id).where(Sandbox.owner == caller.name).where(
            col(Sandbox.status).in_([SandboxStatus.STARTING, SandboxStatus.RUNNING]))).all())
        registered = set(session.exec(select(Image.digest)).all())
    decision = evaluator.may_launch(
        LaunchRequest(caller.name, caller.role, tuple(m.name for m in mounts), order.cpus,
                      order.memory_mb, order.pids, order.timeout_s, running,
                      image_digest=image.digest, gpus=order.gpus), registered)
    if not decision:
        raise PolicyDenied(decision.reason, rule=decision.rule,
                           policy_version=decision.policy_version)
    if order.gpus:
        raise BadRequest("this installation cannot give sandboxes GPUs yet",
                         rule=decision.rule)
    # The hardened single-container backend always runs with network mode "none"; the
    # schema admits no other value, and the decision is recorded with the launch.
    network = evaluator.network_for("single")
    try:
        core.backend.ping()
    except EngineUnavailable as exc:
        raise EngineDown("the container engine is not available; try again later",
                         detail=exc.detail) from exc

    sandbox_id = "sb-" + secrets.token_hex(6)
    storage = core.storage
    state: BackendState = {}
    try:
        storage.create(sandbox_id)
        if order.example is not None:
            code_digest = storage.stage_tree(sandbox_id, EXAMPLES / order.example)
            code_name = f"example:{order.example}"
        else:
            assert order.code is not None
            code_digest = storage.stage_upload(sandbox_id, order.code_name, order.code,
                                               UploadLimits(uploads.max_code_mb << 20,
                                                            uploads.max_unpacked_mb << 20,
                                                            uploads.max_files))
            code_name = order.code_name
        storage.seal_staging(sandbox_id)
        spec = sandbox_spec.SandboxSpec(
            sandbox_id=sandbox_id, owner=caller.name, image=image.digest, command=command,
            datasets=tuple(mounts), limits=limits,
            env=(("SEALROOM_SANDBOX", sandbox_id),
                 ("SEALROOM_DATA", mounts[0].target),
                 ("SEALROOM_OUTBOX", sandbox_spec.OUTBOX),
                 *sorted(order.extra_env.items())))
        state = core.backend.create(spec)
        with core.transaction() as session:
            owner = session.exec(select(User).where(User.name == caller.name)).one()
            assert owner.id is not None
            record = Sandbox(
                id=sandbox_id, owner_id=owner.id, owner=caller.name,
                status=SandboxStatus.STARTING, image=image.tag, image_digest=image.digest,
                command=shlex.join(command),
                datasets=json.dumps([{"name": m.name, "digest": m.digest} for m in mounts]),
                code_digest=code_digest, code_name=code_name, spec=json.dumps(spec.to_dict()),
                cpus=limits.cpus, memory_mb=limits.memory_mb, pids=limits.pids,
                timeout_s=limits.timeout_s, backend_state=json.dumps(state),
                created_at=utc_now())
            session.add(record)
            append(session, EventDraft(
                caller.actor, AuditAction.CODE_UPLOAD, f"sandbox:{sandbox_id}",
                request_id=caller.request_id,
                details={"code": code_name, "digest": code_digest}))
            append(session, EventDraft(
                caller.actor, AuditAction.SANDBOX_LAUNCH, f"sandbox:{sandbox_id}",
                request_id=caller.request_id,
                details={"spec": spec.to_dict(), "image_digest": image.digest,
                         "code_digest": code_digest, "rule": decision.rule,
                         "policy_version": decision.policy_version,
                         "network": network.reason}))
    except InvalidUpload as exc:
        _discard(core, sandbox_id, state)
        raise BadRequest(exc.user_message) from exc
    except InvalidSpec as exc:
        _discard(core, sandbox_id, state)
        raise BadRequest(exc.user_message) from exc
    except EngineUnavailable as exc:
        _discard(core, sandbox_id, state)
        raise EngineDown("the container engine is not available; try again later",
                         detail=exc.detail) from exc
    except SandboxError as exc:
        _discard(core, sandbox_id, state)
        raise EngineDown(f"the sandbox could not be created: {exc.user_message}",
                         detail=exc.detail) from exc
    except AuditWriteFailed as exc:
        # Fail closed: the container was created but never started; it goes with the row.
        _discard(core, sandbox_id, state)
        raise AuditUnavailable("the audit log cannot be written; the sandbox was not launched",
                               detail=str(exc)) from exc
    except BaseException:
        _discard(core, sandbox_id, state)
        raise

    try:
        core.backend.start(state)
    except SandboxError as exc:
        _finish(core, sandbox_id, SandboxStatus.FAILED, AuditAction.SANDBOX_START,
                f"the sandbox could not start: {exc.user_message}", outcome=Outcome.FAILED)
        raise EngineDown(f"the sandbox could not start: {exc.user_message}",
                         detail=exc.detail) from exc
    with core.transaction() as session:
        record = session.get(Sandbox, sandbox_id)
        assert record is not None
        if record.status == SandboxStatus.STARTING:
            record.status = SandboxStatus.RUNNING
            record.started_at = utc_now()
            session.add(record)
            append(session, EventDraft(caller.actor, AuditAction.SANDBOX_START,
                                       f"sandbox:{sandbox_id}", request_id=caller.request_id))
    return record


def _discard(core: Sealroom, sandbox_id: str, state: BackendState) -> None:
    if state:
        try:
            core.backend.remove(state)
        except SandboxError:
            log.warning("could not remove the containers of %s; the reconciler will",
                        sandbox_id)
    core.storage.discard(sandbox_id)


# --- watching -----------------------------------------------------------------------------


def _finish(core: Sealroom, sandbox_id: str, status: SandboxStatus, action: AuditAction,
            reason: str, *, exit_code: int | None = None, outcome: Outcome = Outcome.OK,
            caller: Caller | None = None, remove: bool = True,
            details: dict[str, object] | None = None) -> Sandbox | None:
    """Move a sandbox to a terminal state once (compare-and-set), keep its log, free it,
    and have its outbox listed and hashed in the background."""
    with core.transaction() as session:
        record = session.get(Sandbox, sandbox_id)
    if record is None or SandboxStatus(record.status).terminal:
        return record
    state = state_of(record)
    if remove and state:
        sandbox_log.pull(core, sandbox_id, state, final=True)  # before it is removed
    with core.transaction() as session:
        record = session.get(Sandbox, sandbox_id)
        if record is None or SandboxStatus(record.status).terminal:
            return record
        record.status = status
        record.exit_code = exit_code
        record.reason = reason
        record.finished_at = utc_now()
        session.add(record)
        actor = caller.actor if caller else _system()
        append(session, EventDraft(
            actor, action, f"sandbox:{sandbox_id}", outcome, reason,
            caller.request_id if caller else "",
            details={"status": str(status), "exit_code": exit_code, **(details or {})}))
    if remove and state:
        try:
            core.backend.remove(state)
        except SandboxError:
            log.warning("could not remove container of %s; the reconciler will", sandbox_id)
    outbox_service.schedule_manifest(core, sandbox_id)
    return record


def _system() -> Actor:
    return Actor.system("supervisor")


def refresh(core: Sealroom, sandbox_id: str) -> Sandbox | None:
    """Look at the engine and record what happened: exit, OOM kill, time limit, or lost."""
    with core.transaction() as session:
        record = session.get(Sandbox, sandbox_id)
    state = state_of(record) if record is not None else {}
    if record is None or SandboxStatus(record.status).terminal or not state:
        return record
    try:
        status = core.backend.poll(state)
    except SandboxError:
        return record  # engine unreachable: keep the last known state
    if status.state == RunState.MISSING:
        return _finish(core, record.id, SandboxStatus.LOST, AuditAction.SANDBOX_LOST,
                       "the container vanished from the engine", outcome=Outcome.FAILED,
                       remove=False)
    if status.state == RunState.EXITED:
        if status.oom_killed:
            return _finish(core, record.id, SandboxStatus.OOM_KILLED, AuditAction.SANDBOX_OOM,
                           f"killed: out of memory (limit {record.memory_mb} MB)",
                           exit_code=status.exit_code, outcome=Outcome.FAILED)
        ok = status.exit_code == 0
        return _finish(core, record.id,
                       SandboxStatus.SUCCEEDED if ok else SandboxStatus.FAILED,
                       AuditAction.SANDBOX_EXIT, f"exited with code {status.exit_code}",
                       exit_code=status.exit_code, outcome=Outcome.OK if ok else Outcome.FAILED)
    started = _parse(record.started_at)
    if status.state == RunState.RUNNING and started is not None and \
            (_now() - started).total_seconds() > record.timeout_s:
        try:
            core.backend.stop(state, timeout_s=5)
        except SandboxError:
            return record
        return _finish(core, record.id, SandboxStatus.TIMED_OUT, AuditAction.SANDBOX_TIMEOUT,
                       f"stopped: time limit of {record.timeout_s} s reached",
                       outcome=Outcome.FAILED)
    return record


def refresh_all(core: Sealroom) -> None:
    with core.transaction() as session:
        ids = session.exec(select(Sandbox.id).where(col(Sandbox.status).in_(
            [SandboxStatus.STARTING, SandboxStatus.RUNNING]))).all()
    for sandbox_id in ids:
        refresh(core, sandbox_id)


def reconcile(core: Sealroom) -> None:
    """On console start, compare what the engine holds with what the database knows, by
    sandbox: remove what belongs to no live sandbox (and any object a live sandbox's record
    does not name), mark the live sandboxes the engine lost as lost, and settle the rest.
    All audited; a cluster's members are one sandbox, never orphans of each other."""
    held = {o.sandbox_id: o for o in core.backend.list_owned()}
    with core.transaction() as session:
        live = {r.id: r for r in session.exec(select(Sandbox).where(col(Sandbox.status).in_(
            [SandboxStatus.STARTING, SandboxStatus.RUNNING]))).all()}
    for sandbox_id in sorted(held.keys() - live.keys()):
        _remove_orphan(core, held[sandbox_id].state, sandbox_id, held[sandbox_id].owner,
                       "held by the engine for no running sandbox (unknown, or ended)")
    for sandbox_id in sorted(held.keys() & live.keys()):
        strays = core.backend.strays(held[sandbox_id].state, state_of(live[sandbox_id]))
        if strays is not None:
            _remove_orphan(core, strays, sandbox_id, held[sandbox_id].owner,
                           "not named in the sandbox's recorded state")
    for sandbox_id in sorted(live.keys() - held.keys()):
        _finish(core, sandbox_id, SandboxStatus.LOST, AuditAction.SANDBOX_LOST,
                "the container vanished while the console was down",
                outcome=Outcome.FAILED, remove=False)
    for sandbox_id in sorted(held.keys() & live.keys()):
        status = core.backend.poll(state_of(live[sandbox_id]))
        if status.state == RunState.CREATED:
            _finish(core, sandbox_id, SandboxStatus.FAILED, AuditAction.SANDBOX_START,
                    "the console stopped before the sandbox started", outcome=Outcome.FAILED)
        else:
            refresh(core, sandbox_id)


def _remove_orphan(core: Sealroom, state: BackendState, sandbox_id: str, owner: str,
                   reason: str) -> None:
    core.backend.remove(state)
    core.record(_system(), AuditAction.ORPHAN_REMOVE, target=f"sandbox:{sandbox_id}",
                reason=reason, members=list(core.backend.members(state)), owner=owner)


# --- reading and stopping -----------------------------------------------------------------


def _owned(session: Session, caller: Caller, sandbox_id: str) -> Sandbox:
    record = session.get(Sandbox, sandbox_id)
    if record is None or record.owner != caller.name:
        raise NotFound("no such sandbox")  # the same answer whether it exists or not
    return record


def get(core: Sealroom, caller: Caller, sandbox_id: str) -> Sandbox:
    """The sandbox as last recorded. Pages read the database only: the supervisor alone
    polls the engine (`refresh_all`), so a page view never waits on Docker."""
    with core.read() as session:
        return _owned(session, caller, sandbox_id)


def list_for(core: Sealroom, caller: Caller) -> list[Sandbox]:
    """The caller's sandboxes, newest first, as last recorded (one read, no engine call)."""
    with core.read() as session:
        return list(session.exec(select(Sandbox).where(Sandbox.owner == caller.name)
                                 .order_by(col(Sandbox.created_at).desc())).all())


def stop(core: Sealroom, caller: Caller, sandbox_id: str) -> Sandbox:
    get(core, caller, sandbox_id)  # only the owner may stop it (404 for anyone else)
    # Stopping needs the engine's word, asked outside any transaction: a sandbox that has
    # already exited is recorded as the exit it was, not as stopped.
    record = refresh(core, sandbox_id)
    assert record is not None
    if SandboxStatus(record.status).terminal:
        return record  # stopping twice is fine
    state = state_of(record)
    try:
        core.backend.stop(state, timeout_s=5)
    except EngineUnavailable as exc:
        raise EngineDown("the container engine is not available; try again later",
                         detail=exc.detail) from exc
    status = core.backend.poll(state)
    finished = _finish(core, sandbox_id, SandboxStatus.STOPPED, AuditAction.SANDBOX_STOP,
                       f"stopped by {caller.name}", exit_code=status.exit_code, caller=caller)
    assert finished is not None
    return finished


def stop_forbidden(core: Sealroom, caller: Caller, sandbox_id: str) -> Sandbox:
    """A security officer stops someone's running sandbox that the active policy forbids."""
    target = f"sandbox:{sandbox_id[:64]}"
    try:
        # The engine's word first (outside any transaction), as for the owner's stop.
        record = refresh(core, sandbox_id)
        if record is None:
            raise NotFound("no such sandbox")
        if SandboxStatus(record.status).terminal:
            return record  # stopping twice is fine
        decision = policy_service.forbidding_decision(core, sandbox_id)
        if decision is None:
            raise Conflict("the active policy allows this sandbox; only its owner may stop it")
        try:
            core.backend.stop(state_of(record), timeout_s=5)
        except EngineUnavailable as exc:
            raise EngineDown("the container engine is not available; try again later",
                             detail=exc.detail) from exc
    except ServiceError as exc:
        core.record(caller.actor, AuditAction.SANDBOX_STOP, target=target,
                    outcome=Outcome.FAILED if exc.status >= 500 else Outcome.DENIED,
                    reason=exc.message, request_id=caller.request_id)
        raise
    status = core.backend.poll(state_of(record))
    finished = _finish(core, sandbox_id, SandboxStatus.STOPPED, AuditAction.SANDBOX_STOP,
                       f"stopped by {caller.name}: policy version {decision.policy_version} "
                       f"forbids it ({decision.rule}: {decision.reason})",
                       exit_code=status.exit_code, caller=caller,
                       details={"rule": decision.rule,
                                "policy_version": decision.policy_version,
                                "owner": record.owner})
    assert finished is not None
    return finished


def logs(core: Sealroom, caller: Caller, sandbox_id: str, *, offset: int = 0,
         limit: int = LOG_VIEW_MAX) -> tuple[bytes, int, int]:
    """Log bytes from `offset` (negative: from the end), at most `limit`, as far as the
    disclosure budget allows; returns (bytes, their start, the log's length so far). Every
    showing is audited; nothing new left to show within the budget is a 403, audited.
    While the record says running, the copy grows from the engine (outside any transaction);
    the supervisor records the end and takes the last of the log."""
    record = get(core, caller, sandbox_id)
    state = state_of(record)
    running = not SandboxStatus(record.status).terminal and bool(state)
    return sandbox_log.view(core, caller, sandbox_id, state, running=running,
                            offset=offset, limit=limit)


def outbox(core: Sealroom, caller: Caller, sandbox_id: str) -> dict[str, object]:
    """The outbox as the owner may see it (see `console.services.outbox`)."""
    record = get(core, caller, sandbox_id)
    return outbox_service.listing(core, caller, record)


def to_dict(record: Sandbox) -> dict[str, object]:
    started, finished = _parse(record.started_at), _parse(record.finished_at)
    duration = None
    if started:
        duration = round(((finished or _now()) - started).total_seconds(), 1)
    return {
        "id": record.id,
        "owner": record.owner,
        "status": record.status,
        "exit_code": record.exit_code,
        "reason": record.reason,
        "image": record.image,
        "image_digest": record.image_digest,
        "command": record.command,
        "datasets": json.loads(record.datasets),
        "code": {"name": record.code_name, "digest": record.code_digest},
        "limits": {"cpus": record.cpus, "memory_mb": record.memory_mb, "pids": record.pids,
                   "timeout_s": record.timeout_s},
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "duration_s": duration,
    }



def audit_refused_launch(core: Sealroom, caller: Caller, reason: str) -> None:
    """Record a launch refused before it could be parsed into an order."""
    core.record(caller.actor, AuditAction.SANDBOX_LAUNCH, target="sandbox:",
                outcome=Outcome.DENIED, reason=reason, request_id=caller.request_id)
