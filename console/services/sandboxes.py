"""Sandboxes once launched (`console.services.launch` launches them): watch, stop, show,
and reconcile with the engine.

Docker calls happen outside database transactions; every state change and its audit event
are written together. A stop is recorded (STOPPING, with its reason and its audit event)
before the engine is told, so whoever then sees the end, the stop or the supervisor, records
it as that stop: the database decides, once.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from sqlmodel import Session, col, select

from audit.chain import append, utc_now
from audit.events import Actor, AuditAction, EventDraft, Outcome
from console.core import Caller, Sealroom
from console.models import LIVE_STATUSES, Sandbox, SandboxInput, SandboxStatus
from console.permissions import Permission, role_has
from console.services import dataset_versions, labels, sandbox_log, training_metrics
from console.services import lineage as lineage_service
from console.services import outbox as outbox_service
from console.services.errors import BadRequest, NotFound
from sandbox.backend import BackendState, RunState
from sandbox.backend import SandboxStatus as RunStatus
from sandbox.cluster import rank_output
from sandbox.errors import EngineUnavailable, SandboxError

log = logging.getLogger(__name__)

LOG_VIEW_MAX = 1 << 20


#: Exit codes of a container the engine stopped (SIGTERM, then SIGKILL) when it shut down.
ENGINE_STOP_CODES = (143, 137)


def _engine_started(core: Sealroom) -> datetime | None:
    try:
        return core.backend.engine_started_at()
    except SandboxError:
        return None


def _now() -> datetime:
    return datetime.now(UTC)


def _parse(ts: str | None) -> datetime | None:
    return datetime.fromisoformat(ts) if ts else None


def state_of(record: Sandbox) -> BackendState:
    """The backend's state of a sandbox as stored ({} before it was created)."""
    state = json.loads(record.backend_state or "{}")
    return state if isinstance(state, dict) else {}


# --- watching -----------------------------------------------------------------------------


def finish(core: Sealroom, sandbox_id: str, status: SandboxStatus, action: AuditAction,
           reason: str, *, exit_code: int | None = None, outcome: Outcome = Outcome.OK,
           caller: Caller | None = None, remove: bool = True,
           details: dict[str, object] | None = None) -> Sandbox | None:
    """Move a sandbox to a terminal state once (compare-and-set), keep its log (`remove`:
    its launcher still exists to read from), free everything of it the engine still holds
    (a lost cluster's other members and keys too), and have its outbox listed and hashed in
    the background. A sandbox someone asked to stop (STOPPING) ends as STOPPED with that
    stop's reason, whatever ended it and whoever saw it first: its stop event, written with
    the request, was its end event."""
    with core.transaction() as session:
        record = session.get(Sandbox, sandbox_id)
    if record is None or SandboxStatus(record.status).terminal:
        return record
    state = state_of(record)
    if remove and state and not sandbox_log.pull(core, sandbox_id, state, final=True).complete:
        return record  # the engine did not answer: finish on a later pass, with the whole log
    with core.transaction() as session:
        record = session.get(Sandbox, sandbox_id)
        if record is None or SandboxStatus(record.status).terminal:
            return record
        stopping = record.status == SandboxStatus.STOPPING
        record.status = SandboxStatus.STOPPED if stopping else status
        record.exit_code = exit_code
        record.reason = record.reason if stopping else reason
        record.finished_at = utc_now()
        session.add(record)
        if not stopping:
            actor = caller.actor if caller else _system()
            append(session, EventDraft(
                actor, action, f"sandbox:{sandbox_id}", outcome, reason,
                caller.request_id if caller else "",
                details={"status": str(status), "exit_code": exit_code, **(details or {})}))
    if state:
        try:
            core.backend.remove(state)  # what is already gone counts as removed
        except SandboxError:
            log.warning("could not remove the containers of %s; retried on the next pass",
                        sandbox_id)
            core.engine_watch.remove_later(sandbox_id, state)
    try:  # its workspace goes, its outbox stays, read-only, for the gate and later sandboxes
        core.storage.release(sandbox_id)
    except SandboxError:
        log.warning("could not let go of the volumes of %s; they go when it is discarded",
                    sandbox_id)
    if record.project:  # a mounted project holds one of the host's few loop devices
        try:
            core.storage.unmount_project(record.project)
        except SandboxError:
            log.warning("could not unmount project %s; it is mounted again when used",
                        record.project)
    outbox_service.schedule_manifest(core, sandbox_id)
    try:  # a retired dataset version this sandbox kept in use can go now
        dataset_versions.remove_unused_files(core)
    except Exception:  # noqa: BLE001 - retried when the next sandbox ends or a version retires
        log.exception("could not remove the files of retired dataset versions")
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
    record = _note_members(core, record, status)
    if record.status == SandboxStatus.STOPPING:
        return _carry_out_stop(core, record, status)
    if status.state == RunState.MISSING:
        return finish(core, record.id, SandboxStatus.LOST, AuditAction.SANDBOX_LOST,
                      "the container vanished from the engine", outcome=Outcome.FAILED,
                      remove=False)
    if status.state == RunState.EXITED:
        # A rank that ended before its launcher ends the cluster; the name is the backend's.
        by = f"{status.ended_by} " if status.ended_by else ""
        ended: dict[str, object] | None = {"ended_by": status.ended_by} if status.ended_by \
            else None
        if status.oom_killed:
            return finish(core, record.id, SandboxStatus.OOM_KILLED, AuditAction.SANDBOX_OOM,
                          f"killed: {by}out of memory (limit {record.memory_mb} MB)",
                          exit_code=status.exit_code, outcome=Outcome.FAILED, details=ended)
        if status.exit_code in ENGINE_STOP_CODES:
            if core.engine_watch.covers(_parse(status.finished_at), _engine_started(core)):
                return finish(core, record.id, SandboxStatus.FAILED, AuditAction.SANDBOX_EXIT,
                              f"ended when the container engine stopped (exit code "
                              f"{status.exit_code}); its log was kept",
                              exit_code=status.exit_code, outcome=Outcome.FAILED,
                              details={"ended_by": "engine"})
            if not core.engine_watch.settled(record.id, _now()):
                return record  # an engine shutting down stops containers, then goes quiet
        ok = status.exit_code == 0 and not status.ended_by
        reason = (f"{status.ended_by} exited with code {status.exit_code}; the cluster was "
                  "stopped" if status.ended_by else f"exited with code {status.exit_code}")
        return finish(core, record.id,
                      SandboxStatus.SUCCEEDED if ok else SandboxStatus.FAILED,
                      AuditAction.SANDBOX_EXIT, reason, exit_code=status.exit_code,
                      outcome=Outcome.OK if ok else Outcome.FAILED, details=ended)
    started = _parse(record.started_at)
    if status.state == RunState.RUNNING and started is not None and \
            (_now() - started).total_seconds() > record.timeout_s:
        try:
            core.backend.stop(state, timeout_s=5)
        except SandboxError:
            return record
        return finish(core, record.id, SandboxStatus.TIMED_OUT, AuditAction.SANDBOX_TIMEOUT,
                      f"stopped: time limit of {record.timeout_s} s reached",
                      outcome=Outcome.FAILED)
    return record


def _note_members(core: Sealroom, record: Sandbox, status: RunStatus) -> Sandbox:
    """Record each member's state when it changed (pages read it; they never poll)."""
    seen = json.dumps([{"name": m.name, "state": str(m.state), "exit_code": m.exit_code}
                       for m in status.members])
    if not status.members or seen == record.members:
        return record
    with core.transaction() as session:
        current = session.get(Sandbox, record.id)
        if current is None or SandboxStatus(current.status).terminal:
            return record
        current.members = seen
        session.add(current)
    return current


def refresh_all(core: Sealroom) -> None:
    """One supervisor pass: see whether the engine answers (recording when it stops and
    comes back), retry the removals that failed, then look at every live sandbox."""
    with core.transaction() as session:
        ids = session.exec(select(Sandbox.id).where(col(Sandbox.status).in_(
            LIVE_STATUSES))).all()
    watch = core.engine_watch
    if not ids and not watch.removals() and watch.down_since is None:
        return
    try:
        core.backend.ping()
    except EngineUnavailable as exc:
        if watch.down(_now()):
            core.record(_system(), AuditAction.ENGINE_DOWN, target="engine",
                        outcome=Outcome.FAILED, reason="the container engine does not answer",
                        detail=exc.detail, running=len(ids))
        return
    outage = watch.up(_now())
    if outage is not None:
        core.record(_system(), AuditAction.ENGINE_UP, target="engine",
                    reason="the container engine answers again",
                    down_s=round((outage[1] - outage[0]).total_seconds(), 1))
    for sandbox_id, state in watch.removals().items():
        try:
            core.backend.remove(state)
        except SandboxError:
            continue
        watch.removed(sandbox_id)
        core.record(_system(), AuditAction.CONTAINER_REMOVE, target=f"sandbox:{sandbox_id}",
                    reason="removed once the engine answered again",
                    members=list(core.backend.members(state)))
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
            LIVE_STATUSES))).all()}
    for sandbox_id in sorted(held.keys() - live.keys()):
        _remove_orphan(core, held[sandbox_id].state, sandbox_id, held[sandbox_id].owner,
                       "held by the engine for no running sandbox (unknown, or ended)")
    for sandbox_id in sorted(held.keys() & live.keys()):
        strays = core.backend.strays(held[sandbox_id].state, state_of(live[sandbox_id]))
        if strays is not None:
            _remove_orphan(core, strays, sandbox_id, held[sandbox_id].owner,
                           "not named in the sandbox's recorded state")
    for sandbox_id in sorted(live.keys() - held.keys()):
        finish(core, sandbox_id, SandboxStatus.LOST, AuditAction.SANDBOX_LOST,
               "the container vanished while the console was down",
               outcome=Outcome.FAILED, remove=False)
    for sandbox_id in sorted(held.keys() & live.keys()):
        status = core.backend.poll(state_of(live[sandbox_id]))
        if status.state == RunState.CREATED:
            finish(core, sandbox_id, SandboxStatus.FAILED, AuditAction.SANDBOX_START,
                   "the console stopped before the sandbox started", outcome=Outcome.FAILED)
        else:
            refresh(core, sandbox_id)
    _settle_volumes(core)


def _settle_volumes(core: Sealroom) -> None:
    """Let go of the host's mounts of every ended sandbox's outbox that no running sandbox
    mounts as an input (read since the last start; mounted again when next read)."""
    with core.transaction() as session:
        running = set(session.exec(select(Sandbox.id).where(col(Sandbox.status).in_(
            LIVE_STATUSES))).all())
        inputs = set(session.exec(select(SandboxInput.source_id).where(
            col(SandboxInput.sandbox_id).in_(running))).all()) if running else set()
    let_go = core.storage.settle(running | inputs)
    if let_go:
        log.info("unmounted the volumes of %d ended sandbox(es)", len(let_go))


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
    """The sandbox as last recorded, for its owner or a role that inspects anyone's (an
    auditor: read only; what it shows of the sandbox's output is charged to the reader).
    Pages read the database only: the supervisor alone polls the engine (`refresh_all`), so
    a page view never waits on Docker."""
    with core.read() as session:
        record = session.get(Sandbox, sandbox_id)
        if record is not None and record.owner != caller.name \
                and role_has(caller.role, Permission.SANDBOX_INSPECT):
            return record
        return _owned(session, caller, sandbox_id)


def list_for(core: Sealroom, caller: Caller) -> list[Sandbox]:
    """The caller's sandboxes, newest first, as last recorded (one read, no engine call)."""
    with core.read() as session:
        return list(session.exec(select(Sandbox).where(Sandbox.owner == caller.name)
                                 .order_by(col(Sandbox.created_at).desc())).all())


def stop(core: Sealroom, caller: Caller, sandbox_id: str) -> Sandbox:
    """The owner stops the sandbox: `stopped` once the engine has stopped it, `stopping`
    while the engine does not answer (the supervisor finishes the stop when it does), or
    the end it had already reached, as recorded then. Stopping twice is fine."""
    with core.read() as session:
        _owned(session, caller, sandbox_id)  # only the owner may stop it (404 for anyone else)
    # Stopping needs the engine's word, asked outside any transaction: a sandbox that has
    # already exited is recorded as the exit it was, not as stopped.
    record = refresh(core, sandbox_id)
    assert record is not None
    if SandboxStatus(record.status).terminal:
        return record
    return carry_out_stop(core, request_stop(core, caller, record.id,
                                             f"stopped by {caller.name}"))


def request_stop(core: Sealroom, caller: Caller, sandbox_id: str, reason: str, *,
                 details: dict[str, object] | None = None) -> Sandbox:
    """Record that `caller` stops the sandbox, before the engine is told: STOPPING with the
    `reason` it will end with, and its end event (`sandbox:sandbox:stop`), in one
    transaction, once (compare-and-set). A sandbox already stopping or ended is left as it
    is, with no second event. Callers have checked that the sandbox exists and who may stop
    it."""
    with core.transaction() as session:
        record = session.get(Sandbox, sandbox_id)
        if record is None:
            raise NotFound("no such sandbox")
        if record.status not in (SandboxStatus.STARTING, SandboxStatus.RUNNING):
            return record
        record.status = SandboxStatus.STOPPING
        record.reason = reason
        session.add(record)
        append(session, EventDraft(
            caller.actor, AuditAction.SANDBOX_STOP, f"sandbox:{sandbox_id}", Outcome.OK,
            reason, caller.request_id, details={"status": str(SandboxStatus.STOPPED),
                                                **(details or {})}))
    return record


def carry_out_stop(core: Sealroom, record: Sandbox) -> Sandbox:
    """Have the engine stop a sandbox `request_stop` recorded, and record its end. If the
    engine does not answer, the sandbox stays STOPPING: the supervisor stops it when it
    answers again (and the console's start does, after a crash)."""
    if record.status != SandboxStatus.STOPPING:
        return record
    state = state_of(record)
    try:
        if state:
            core.backend.stop(state, timeout_s=5)
        status = core.backend.poll(state) if state else None
    except SandboxError as exc:
        log.warning("could not stop %s yet (%s); the supervisor retries", record.id,
                    exc.detail)
        return record
    return _finish_stop(core, record, status)


def _carry_out_stop(core: Sealroom, record: Sandbox, status: RunStatus) -> Sandbox:
    """The supervisor's part of a stop: a STOPPING sandbox still running is stopped (the
    console that asked may have crashed, or the engine was down then)."""
    if status.state in (RunState.RUNNING, RunState.CREATED):
        return carry_out_stop(core, record)
    return _finish_stop(core, record, status)


def _finish_stop(core: Sealroom, record: Sandbox, status: RunStatus | None) -> Sandbox:
    gone = status is None or status.state == RunState.MISSING
    finished = finish(core, record.id, SandboxStatus.STOPPED, AuditAction.SANDBOX_STOP,
                      record.reason, exit_code=None if status is None else status.exit_code,
                      remove=not gone)
    return finished or record


def stop_message(record: Sandbox) -> str:
    """What a person who just asked for a stop is told: the status recorded, in words."""
    status = SandboxStatus(record.status)
    said = record.reason if record.reason.startswith("stopped") else f"stopped: {record.reason}"
    if status == SandboxStatus.STOPPED:
        return f"Sandbox {record.id} {said}."
    if status == SandboxStatus.STOPPING:
        return (f"Sandbox {record.id} is stopping ({said}): the container engine has not "
                "confirmed it yet; it is recorded as stopped once it has.")
    return (f"Sandbox {record.id} had already ended: {status.replace('_', ' ')}, "
            f"{record.reason or 'no reason recorded'}.")


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


def rank_logs(core: Sealroom, caller: Caller, sandbox_id: str, rank: int, *,
              offset: int = 0, limit: int = LOG_VIEW_MAX) -> tuple[bytes, int, int, int]:
    """One rank's lines of a cluster's log: the launcher's output (mpirun tags each line with
    its rank) from `offset`, as `logs` shows and charges it, with the other ranks' lines and
    the tags left out. Returns (bytes, start, end of what was read, the log's length)."""
    record = get(core, caller, sandbox_id)
    if not 0 <= rank < record.ranks:
        raise BadRequest(f"rank must be between 0 and {record.ranks - 1} for this sandbox")
    chunk, start, total = logs(core, caller, sandbox_id, offset=offset, limit=limit)
    if record.ranks == 1:
        return chunk, start, start + len(chunk), total
    if not SandboxStatus(record.status).terminal and not chunk.endswith(b"\n") \
            and b"\n" in chunk:
        # A line still being written: stop before it, so the next read starts at a tag (a
        # block shown once is free to show again).
        chunk = chunk[:chunk.rindex(b"\n") + 1]
    return rank_output(chunk, rank), start, start + len(chunk), total


def metrics(core: Sealroom, caller: Caller, sandbox_id: str, *,
            since: int = 0) -> dict[str, object]:
    """The sandbox's training curves as its owner may see them (see
    `console.services.training_metrics`): new points past `since`, paid for and audited."""
    if since < 0:
        raise BadRequest("since must be 0 or more")
    return training_metrics.series(core, caller, get(core, caller, sandbox_id), since=since)


def outbox(core: Sealroom, caller: Caller, sandbox_id: str) -> dict[str, object]:
    """The outbox as the owner may see it (see `console.services.outbox`)."""
    record = get(core, caller, sandbox_id)
    return outbox_service.listing(core, caller, record)


def lineage(core: Sealroom, caller: Caller, sandbox_id: str) -> dict[str, object]:
    """What a sandbox builds on and what builds on it: for its owner, and for the roles that
    follow lineage across users (officers, auditors, admins); audited."""

    with core.read() as session:
        record = session.get(Sandbox, sandbox_id)
        if record is None or (record.owner != caller.name
                              and not role_has(caller.role, Permission.LINEAGE_READ)):
            raise NotFound("no such sandbox")
        body = lineage_service.sandbox_lineage(session, record)
    core.record(caller.actor, AuditAction.LINEAGE_VIEW, target=f"sandbox:{sandbox_id}",
                request_id=caller.request_id)
    return body


def to_dict(record: Sandbox) -> dict[str, object]:
    started, finished = _parse(record.started_at), _parse(record.finished_at)
    duration = None
    if started:
        duration = round(((finished or _now()) - started).total_seconds(), 1)
    return {
        "id": record.id,
        "name": record.name or None,
        "tags": labels.tags_of(record),
        "owner": record.owner,
        "status": record.status,
        "exit_code": record.exit_code,
        "reason": record.reason,
        "image": record.image,
        "image_digest": record.image_digest,
        "command": record.command,
        "datasets": json.loads(record.datasets),
        "inputs": [{"sandbox": i["sandbox"], "digest": i["digest"]}
                   for i in json.loads(record.inputs)],
        "project": record.project or None,
        "code": {"name": record.code_name, "digest": record.code_digest},
        "limits": {"cpus": record.cpus, "memory_mb": record.memory_mb, "pids": record.pids,
                   "timeout_s": record.timeout_s},
        "kind": record.kind,
        "ranks": record.ranks,
        "members": json.loads(record.members or "[]"),
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "duration_s": duration,
    }

