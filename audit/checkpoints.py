"""Signed checkpoints: (tree size, head hash, time) signed with the audit key, made every N
events inside the appending transaction and every T seconds when new events exist, stored in
the database and, after the commit, appended to a checkpoint file kept on another volume.

A checkpoint is not itself an audit event: recording it as one would move the head it just
signed, and on an idle system every periodic checkpoint would make the event that calls for
the next one. Checkpoints are their own append-only record, with their own line format.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Connection, text
from sqlmodel import Session

from audit.errors import AuditKeyError, BadCheckpoint, ExportMalformed
from audit.files import fsync_dir
from audit.hashing import canonical_json, utc_now
from audit.keys import PublicKeys
from audit.models import AuditCheckpoint

log = logging.getLogger(__name__)

#: Where a session keeps the checkpoints it made, to be shipped to the file after commit.
PENDING_KEY = "sealroom.audit.pending_checkpoints"
FILE_NAME = "checkpoints.jsonl"
_HEX64 = re.compile(r"[0-9a-f]{64}")

KeyLoader = Callable[[], tuple[str, ec.EllipticCurvePrivateKey]]


@dataclass(frozen=True)
class Checkpoint:
    """The chain had `tree_size` events (ids 1..tree_size) and the last one's hash was
    `head_hash`, at `time` (UTC); `signature` is base64 DER ECDSA P-256/SHA-256 by `keyid`
    over the RFC 8785 JSON of those four fields (`payload`)."""

    tree_size: int
    head_hash: str
    time: str
    keyid: str
    signature: str

    def statement(self) -> dict[str, Any]:
        return {"tree_size": self.tree_size, "head_hash": self.head_hash, "time": self.time,
                "keyid": self.keyid}

    def payload(self) -> bytes:
        return canonical_json(self.statement())

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.statement(), "signature": self.signature}

    def to_line(self) -> bytes:
        """One JSON line, the same in an export and in the checkpoint file."""
        return canonical_json(self.to_json()) + b"\n"

    def verify(self, keys: PublicKeys) -> None:
        if not keys.verifies(self.keyid, self.signature, self.payload()):
            known = "" if self.keyid in keys.keyids else " (a key not among those given)"
            raise BadCheckpoint(
                f"the checkpoint at tree size {self.tree_size} is not signed by key "
                f"{self.keyid[:16]}{known}: it was forged or altered",
                checkpoint=self.tree_size)

    @classmethod
    def from_json(cls, value: Any) -> Checkpoint:
        """Parse `{"checkpoint": {...}, "signature": "..."}`; a wrong shape is a bad checkpoint."""
        try:
            statement, signature = value["checkpoint"], value["signature"]
            checkpoint = cls(tree_size=statement["tree_size"], head_hash=statement["head_hash"],
                             time=statement["time"], keyid=statement["keyid"],
                             signature=signature)
            valid = (type(checkpoint.tree_size) is int and checkpoint.tree_size >= 1
                     and isinstance(checkpoint.head_hash, str)
                     and _HEX64.fullmatch(checkpoint.head_hash) is not None
                     and all(isinstance(v, str) for v in (checkpoint.time, checkpoint.keyid,
                                                         checkpoint.signature))
                     and set(statement) == {"tree_size", "head_hash", "time", "keyid"})
        except (KeyError, TypeError) as exc:
            raise BadCheckpoint(f"a checkpoint is not well formed: {exc}") from exc
        if not valid:
            size = statement.get("tree_size") if isinstance(statement, dict) else None
            raise BadCheckpoint("a checkpoint is not well formed",
                                checkpoint=size if isinstance(size, int) else None)
        return checkpoint

    @classmethod
    def from_row(cls, row: Any) -> Checkpoint:
        return cls(tree_size=row.tree_size, head_hash=row.head_hash, time=row.time,
                   keyid=row.keyid, signature=row.signature)


def sign_checkpoint(key: ec.EllipticCurvePrivateKey, keyid: str, tree_size: int,
                    head_hash: str, time: str | None = None) -> Checkpoint:
    unsigned = Checkpoint(tree_size, head_hash, time or utc_now(), keyid, "")
    signature = key.sign(unsigned.payload(), ec.ECDSA(hashes.SHA256()))
    return Checkpoint(tree_size, head_hash, unsigned.time, keyid,
                      base64.b64encode(signature).decode("ascii"))


def parse_checkpoint_line(line: bytes, *, where: str) -> Checkpoint:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise ExportMalformed(f"{where} is not JSON: {exc}") from exc
    return Checkpoint.from_json(value)


def database_checkpoints(conn: Connection | Session, *, above: int = 0,
                         up_to: int | None = None) -> list[Checkpoint]:
    """Checkpoints stored in the database with `above < tree_size <= up_to`, oldest first."""
    sql = ("SELECT tree_size, head_hash, time, keyid, signature FROM audit_checkpoint "
           "WHERE tree_size > :above AND tree_size <= :up_to ORDER BY tree_size")
    params = {"above": above, "up_to": up_to if up_to is not None else 1 << 62}
    rows = conn.execute(text(sql), params).all()
    return [Checkpoint.from_row(row) for row in rows]


class CheckpointFile:
    """`checkpoints.jsonl`: one checkpoint per line, only ever appended, fsynced, tree sizes
    increasing. Meant to live on another volume or be shipped elsewhere, so that truncating
    the database is caught against a checkpoint its writer cannot reach."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[Checkpoint]:
        """Every checkpoint in the file; none if it does not exist yet."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return list(read_checkpoint_lines(data.splitlines(), source=str(self.path)))

    def last_tree_size(self) -> int:
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as stream:
            return _last_tree_size(stream.fileno())
        return 0

    def append(self, checkpoints: Iterable[Checkpoint]) -> int:
        """Append those newer than the file's last line; returns how many were written.

        An older one is skipped, not an error: a later checkpoint signs a head that commits
        to the whole chain before it, so it vouches for everything the older one did.
        """
        wanted = sorted(checkpoints, key=lambda c: c.tree_size)
        if not wanted:
            return 0
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # several console processes share the file
            last = _last_tree_size(fd)
            data = b"".join(c.to_line() for c in wanted if c.tree_size > last)
            if data:
                os.write(fd, data)
                os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)
        return sum(1 for c in wanted if c.tree_size > last)


def read_checkpoint_lines(lines: Iterable[bytes], *, source: str) -> Iterator[Checkpoint]:
    for number, line in enumerate(lines, 1):
        if line.strip():
            yield parse_checkpoint_line(line, where=f"line {number} of {source}")


def _last_tree_size(fd: int) -> int:
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    start = max(0, size - 8192)
    tail = os.pread(fd, size - start, start)
    lines = [line for line in tail.splitlines() if line.strip()]
    if not lines:
        return 0
    try:
        return Checkpoint.from_json(json.loads(lines[-1])).tree_size
    except (ValueError, BadCheckpoint):
        return 0  # an unreadable tail is verification's business; keep appending



class CheckpointWriter:
    """Makes checkpoints: every `every_events` events inside the appending transaction (as
    `audit.chain.append`'s signer), every `every_seconds` on `checkpoint_if_due`, and ships
    them to the checkpoint file after the commit.

    Without a usable key (no passphrase in this process), a checkpoint is skipped, never the
    operation: the event is the record; the checkpoint is made later by a process that can.
    """

    def __init__(self, key_loader: KeyLoader, *, every_events: int, every_seconds: float,
                 file: CheckpointFile | None) -> None:
        self._key_loader = key_loader
        self._key: tuple[str, ec.EllipticCurvePrivateKey] | None = None
        self.every_events = max(1, every_events)
        self.every_seconds = every_seconds
        self.file = file

    # --- in the appending transaction -----------------------------------------------------

    def after_append(self, session: Session, tree_size: int, head_hash: str,
                     last_checkpoint: int) -> None:
        if tree_size - last_checkpoint >= self.every_events:
            self.make(session, tree_size, head_hash)

    def make(self, session: Session, tree_size: int, head_hash: str) -> Checkpoint | None:
        """Sign and store a checkpoint of this head in `session`'s transaction."""
        try:
            keyid, key = self._signing_key()
        except AuditKeyError as exc:
            log.warning("audit checkpoint at %d skipped: %s", tree_size, exc)
            return None
        checkpoint = sign_checkpoint(key, keyid, tree_size, head_hash)
        session.add(AuditCheckpoint(tree_size=checkpoint.tree_size,
                                    head_hash=checkpoint.head_hash, time=checkpoint.time,
                                    keyid=checkpoint.keyid, signature=checkpoint.signature))
        session.flush()
        session.info.setdefault(PENDING_KEY, []).append(checkpoint)
        return checkpoint

    def checkpoint_if_due(self, session: Session, *, force: bool = False) -> Checkpoint | None:
        """A checkpoint of the head if it has events no checkpoint covers and the last
        checkpoint is `every_seconds` old (or `force`)."""
        head = session.connection().execute(text(
            "SELECT id, hash FROM audit_event ORDER BY id DESC LIMIT 1")).first()
        if head is None:
            return None
        last = session.connection().execute(text(
            "SELECT tree_size, time FROM audit_checkpoint ORDER BY tree_size DESC LIMIT 1")
        ).first()
        if last is not None and last.tree_size >= head.id:
            return None
        if not force and last is not None:
            age = (datetime.now(UTC) - datetime.fromisoformat(last.time)).total_seconds()
            if age < self.every_seconds:
                return None
        return self.make(session, head.id, head.hash)

    # --- after the commit ------------------------------------------------------------------

    def ship(self, checkpoints: Iterable[Checkpoint]) -> None:
        """Append committed checkpoints to the file. A failure is logged and left for
        `ship_missing`: the commit has happened and must not be reported as failed."""
        if self.file is None:
            return
        try:
            self.file.append(checkpoints)
        except OSError as exc:
            log.error("could not append to the audit checkpoint file %s: %s", self.file.path,
                      exc)

    def ship_missing(self, conn: Connection | Session) -> None:
        """Copy to the file every database checkpoint newer than its last line."""
        if self.file is None:
            return
        try:
            last = self.file.last_tree_size()
        except OSError as exc:
            log.error("could not read the audit checkpoint file %s: %s", self.file.path, exc)
            return
        missing = database_checkpoints(conn, above=last)
        if missing:
            self.ship(missing)

    def _signing_key(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        if self._key is None:
            self._key = self._key_loader()
        return self._key

    def forget_key(self) -> None:
        """Drop the cached key (after a rotation, the next checkpoint opens the new one)."""
        self._key = None

