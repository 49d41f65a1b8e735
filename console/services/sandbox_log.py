"""The console's own copy of each sandbox's log, and what of it a person may see.

The copy grows from the engine by the backend's cursor, so positions never move: the engine
rotating its log cannot make an old position show new bytes. It keeps the newest
`KEEP_BYTES` in a segment file named by its first position. Bytes are shown in blocks through
the disclosure ledger; a block shown once is free to show again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO

from audit.chain import append
from audit.events import AuditAction, EventDraft, Outcome
from console.core import Caller, Sealroom
from console.models import SandboxLog
from console.services import disclosure
from console.services.errors import PolicyDenied
from console.services.sandbox_locks import SandboxLocks
from sandbox.backend import LAUNCHER, BackendState
from sandbox.errors import SandboxError

log = logging.getLogger(__name__)

#: Granularity of the ledger for logs: any byte of a block shown charges the whole block.
BLOCK = 256
#: The copy keeps at least the newest KEEP_BYTES (older positions read as gone).
KEEP_BYTES = 32 << 20
#: Bytes taken from the engine per call.
PULL_BYTES = 8 << 20

#: Reading one sandbox's log copy is done by one thread at a time.
_lock = SandboxLocks()


def _dir(core: Sealroom, sandbox_id: str) -> Path:
    return core.settings.sandboxes_dir / sandbox_id


def _segment(core: Sealroom, sandbox_id: str, base: int) -> Path:
    return _dir(core, sandbox_id) / f"log-{base}.txt"


def _row(core: Sealroom, sandbox_id: str) -> SandboxLog:
    """The copy's state; a log saved by an older console (`log.txt`) becomes segment 0."""
    with core.transaction() as session:
        row = session.get(SandboxLog, sandbox_id)
        if row is not None:
            return row
        legacy = _dir(core, sandbox_id) / "log.txt"
        size = 0
        if legacy.is_file() and not legacy.is_symlink():
            size = legacy.stat().st_size
            os.replace(legacy, _segment(core, sandbox_id, 0))
        row = SandboxLog(sandbox_id=sandbox_id, size=size, complete=size > 0)
        session.add(row)
        return row


def pull(core: Sealroom, sandbox_id: str, state: BackendState, *,
         final: bool = False) -> SandboxLog:
    """Copy what the sandbox's launcher wrote since the last pull (`final`: all of it, then
    mark the copy complete, unless the engine did not answer); `state` is the backend's
    state of the sandbox. Engine calls
    happen outside any transaction; a crash between writing the file and recording it is
    undone by the next pull, which cuts the file back first."""
    with _lock(sandbox_id):
        row = _row(core, sandbox_id)
        if row.complete or not state:
            return row
        cursor, base, size = row.cursor, row.base, row.size
        chunks: list[bytes] = []
        unread = False
        while True:
            try:
                chunk = core.backend.logs_since(state, LAUNCHER, cursor,
                                                max_bytes=PULL_BYTES)
            except SandboxError as exc:
                log.warning("could not read the log of %s: %s", sandbox_id, exc.detail)
                unread = True
                break
            if chunk.data:
                chunks.append(chunk.data)
            cursor = chunk.cursor
            if not final or not chunk.data or sum(map(len, chunks)) >= 2 * KEEP_BYTES:
                break
        if chunks or final:
            base, size = _write(core, sandbox_id, base, size, b"".join(chunks))
        with core.transaction() as session:
            stored = session.get(SandboxLog, sandbox_id)
            assert stored is not None
            stored.cursor, stored.base, stored.size = cursor, base, size
            # Never complete on a read that failed: the engine may be restarting, and the
            # rest of the log is fetched once it answers again.
            stored.complete = final and not unread
            session.add(stored)
        if base != row.base:
            _forget_old_segments(core, sandbox_id, base)
        return stored


def _write(core: Sealroom, sandbox_id: str, base: int, size: int,
           data: bytes) -> tuple[int, int]:
    path = _segment(core, sandbox_id, base)
    with _private(path, os.O_APPEND) as handle:
        handle.truncate(size - base)  # drop what an interrupted pull wrote but never recorded
        handle.write(data)
    size += len(data)
    if size - base <= KEEP_BYTES:
        return base, size
    # Start a new segment with the newest half; positions carry on from where they were.
    new_base = size - KEEP_BYTES // 2
    with open(path, "rb") as old:
        old.seek(new_base - base)
        kept = old.read()
    fresh = _segment(core, sandbox_id, new_base)
    with _private(fresh, os.O_TRUNC) as handle:
        handle.write(kept)
    return new_base, size


def _private(path: Path, flags: int) -> BinaryIO:
    """A log segment opened for writing, made readable by the console alone (0600)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | flags, 0o600), "wb")


def _forget_old_segments(core: Sealroom, sandbox_id: str, base: int) -> None:
    for path in _dir(core, sandbox_id).glob("log-*.txt"):
        if path.name != f"log-{base}.txt":
            path.unlink(missing_ok=True)


def read(core: Sealroom, row: SandboxLog, start: int, end: int) -> bytes:
    path = _segment(core, row.sandbox_id, row.base)
    if end <= start or not path.is_file():
        return b""
    with open(path, "rb") as handle:
        handle.seek(start - row.base)
        return handle.read(end - start)


def current(core: Sealroom, sandbox_id: str, state: BackendState, *,
            running: bool) -> SandboxLog:
    """The copy brought up to date: grown from the engine while the sandbox runs, taken to
    the end once it has ended (unless that was done already)."""
    row = pull(core, sandbox_id, state) if running else _row(core, sandbox_id)
    if not running and not row.complete and state:
        row = pull(core, sandbox_id, state, final=True)
    return row


def view(core: Sealroom, caller: Caller, sandbox_id: str, state: BackendState, *,
         running: bool, offset: int, limit: int) -> tuple[bytes, int, int]:
    """Bytes of the log from `offset` (negative: from the end) that the disclosure budget
    lets this caller see; returns (bytes, where they start, the log's length so far)."""
    row = current(core, sandbox_id, state, running=running)
    total = row.size
    start = max(row.base, total + offset if offset < 0 else offset)
    end = min(total, start + max(limit, 0))
    target = f"sandbox:{sandbox_id}"
    first = start // BLOCK
    blocks = [(f"{b:012d}", BLOCK) for b in range(first, (end + BLOCK - 1) // BLOCK)]
    denied: PolicyDenied | None = None
    with core.transaction() as session:
        spending = disclosure.spend(session, core.evaluator, sandbox_id=sandbox_id,
                                    user=caller.name, channel=disclosure.Channel.LOG,
                                    items=blocks)
        decision = spending.decision
        shown_end = min(end, (first + len(spending.shown)) * BLOCK)
        if end > start and shown_end <= start:
            denied = PolicyDenied(decision.reason, rule=decision.rule,
                                  policy_version=decision.policy_version)
            append(session, EventDraft(caller.actor, AuditAction.LOGS_VIEW, target,
                                       Outcome.DENIED, decision.reason, caller.request_id,
                                       details={"offset": start, "rule": decision.rule,
                                                "policy_version": decision.policy_version}))
        elif shown_end > start:
            append(session, EventDraft(caller.actor, AuditAction.LOGS_VIEW, target,
                                       request_id=caller.request_id, details={
                                           "offset": start, "bytes": shown_end - start,
                                           "spent": spending.spent,
                                           "sandbox_spent": spending.sandbox_total,
                                           "user_spent_today": spending.user_day_total,
                                           "rule": decision.rule,
                                           "policy_version": decision.policy_version}))
    if denied is not None:
        raise denied
    return read(core, row, start, shown_end), start, total
