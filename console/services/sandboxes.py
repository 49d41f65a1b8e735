"""Sandboxes once launched (`console.services.launch` launches them): watch, stop, show,
and reconcile with the engine.

Docker calls happen outside database transactions; every state change and its audit event
are written together.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from sqlmodel import Session, col, select

from audit.chain import append, utc_now
from audit.events import Actor, AuditAction, EventDraft, Outcome
from console.core import Caller, Sealroom
from console.models import Sandbox, SandboxStatus
from console.services import outbox as outbox_service
from console.services import sandbox_log
from console.services.errors import EngineDown, NotFound
from sandbox.backend import RunState
from sandbox.errors import EngineUnavailable, SandboxError

log = logging.getLogger(__name__)

LOG_VIEW_MAX = 1 << 20


def _now() -> datetime:
    return datetime.now(UTC)


def _parse(ts: str | None) -> datetime | None:
    return datetime.fromisoformat(ts) if ts else None


# --- watching -----------------------------------------------------------------------------


def finish(core: Sealroom, sandbox_id: str, status: SandboxStatus, action: AuditAction,
           reason: str, *, exit_code: int | None = None, outcome: Outcome = Outcome.OK,
           caller: Caller | None = None, remove: bool = True,
           details: dict[str, object] | None = None) -> Sandbox | None:
    """Move a sandbox to a terminal state once (compare-and-set), keep its log, free it,
    and have its outbox listed and hashed in the background."""
    with core.transaction() as session:
        record = session.get(Sandbox, sandbox_id)
    if record is None or SandboxStatus(record.status).terminal:
        return record
    if remove and record.handle:
        sandbox_log.pull(core, sandbox_id, record.handle, final=True)  # before it is removed
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
    if remove and record.handle:
        try:
            core.backend.remove(record.handle)
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
    if record is None or SandboxStatus(record.status).terminal or not record.handle:
        return record
    try:
        status = core.backend.poll(record.handle)
    except SandboxError:
        return record  # engine unreachable: keep the last known state
    if status.state == RunState.MISSING:
        return finish(core, record.id, SandboxStatus.LOST, AuditAction.SANDBOX_LOST,
                      "the container vanished from the engine", outcome=Outcome.FAILED,
                      remove=False)
    if status.state == RunState.EXITED:
        if status.oom_killed:
            return finish(core, record.id, SandboxStatus.OOM_KILLED, AuditAction.SANDBOX_OOM,
                          f"killed: out of memory (limit {record.memory_mb} MB)",
                          exit_code=status.exit_code, outcome=Outcome.FAILED)
        ok = status.exit_code == 0
        return finish(core, record.id,
                      SandboxStatus.SUCCEEDED if ok else SandboxStatus.FAILED,
                      AuditAction.SANDBOX_EXIT, f"exited with code {status.exit_code}",
                      exit_code=status.exit_code, outcome=Outcome.OK if ok else Outcome.FAILED)
    started = _parse(record.started_at)
    if status.state == RunState.RUNNING and started is not None and \
            (_now() - started).total_seconds() > record.timeout_s:
        try:
            core.backend.stop(record.handle, timeout_s=5)
        except SandboxError:
            return record
        return finish(core, record.id, SandboxStatus.TIMED_OUT, AuditAction.SANDBOX_TIMEOUT,
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
    """On console start: remove our containers the database does not know, mark the
    sandboxes whose container vanished as lost, and settle the rest. All audited."""
    owned = core.backend.list_owned()
    with core.transaction() as session:
        live = {r.id: r for r in session.exec(select(Sandbox).where(col(Sandbox.status).in_(
            [SandboxStatus.STARTING, SandboxStatus.RUNNING]))).all()}
    handles = {o.handle for o in owned}
    for item in owned:
        record = live.get(item.sandbox_id)
        if record is not None and record.handle == item.handle:
            continue
        core.backend.remove(item.handle)
        core.record(_system(), AuditAction.ORPHAN_REMOVE,
                    target=f"sandbox:{item.sandbox_id}",
                    reason="container unknown to the database, or its sandbox has ended",
                    container=item.handle[:12], owner=item.owner)
    for record in live.values():
        if record.handle not in handles:
            finish(core, record.id, SandboxStatus.LOST, AuditAction.SANDBOX_LOST,
                   "the container vanished while the console was down",
                   outcome=Outcome.FAILED, remove=False)
            continue
        status = core.backend.poll(record.handle)
        if status.state == RunState.CREATED:
            finish(core, record.id, SandboxStatus.FAILED, AuditAction.SANDBOX_START,
                   "the console stopped before the sandbox started", outcome=Outcome.FAILED)
        else:
            refresh(core, record.id)


# --- reading and stopping -----------------------------------------------------------------


def _owned(session: Session, caller: Caller, sandbox_id: str) -> Sandbox:
    record = session.get(Sandbox, sandbox_id)
    if record is None or record.owner != caller.name:
        raise NotFound("no such sandbox")  # the same answer whether it exists or not
    return record


def get(core: Sealroom, caller: Caller, sandbox_id: str) -> Sandbox:
    with core.transaction() as session:
        _owned(session, caller, sandbox_id)
    record = refresh(core, sandbox_id)
    assert record is not None
    return record


def list_for(core: Sealroom, caller: Caller) -> list[Sandbox]:
    with core.transaction() as session:
        ids = session.exec(select(Sandbox.id).where(Sandbox.owner == caller.name)).all()
    for sandbox_id in ids:
        refresh(core, sandbox_id)
    with core.transaction() as session:
        return list(session.exec(select(Sandbox).where(Sandbox.owner == caller.name)
                                 .order_by(col(Sandbox.created_at).desc())).all())


def stop(core: Sealroom, caller: Caller, sandbox_id: str) -> Sandbox:
    record = get(core, caller, sandbox_id)
    if SandboxStatus(record.status).terminal:
        return record  # stopping twice is fine
    try:
        core.backend.stop(record.handle, timeout_s=5)
    except EngineUnavailable as exc:
        raise EngineDown("the container engine is not available; try again later",
                         detail=exc.detail) from exc
    status = core.backend.poll(record.handle)
    finished = finish(core, sandbox_id, SandboxStatus.STOPPED, AuditAction.SANDBOX_STOP,
                      f"stopped by {caller.name}", exit_code=status.exit_code, caller=caller)
    assert finished is not None
    return finished


def logs(core: Sealroom, caller: Caller, sandbox_id: str, *, offset: int = 0,
         limit: int = LOG_VIEW_MAX) -> tuple[bytes, int, int]:
    """Log bytes from `offset` (negative: from the end), at most `limit`, as far as the
    disclosure budget allows; returns (bytes, their start, the log's length so far). Every
    showing is audited; nothing new left to show within the budget is a 403, audited."""
    record = get(core, caller, sandbox_id)
    running = not SandboxStatus(record.status).terminal and bool(record.handle)
    return sandbox_log.view(core, caller, sandbox_id, record.handle, running=running,
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

