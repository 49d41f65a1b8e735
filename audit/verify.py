"""Verification of the record, offline (an export file) or live (the database), as a flat list
of named steps, each failing with its own error:

  format                 the export and checkpoint files are in the expected format
  checkpoint_signatures  every checkpoint is signed by one of the given audit keys
  chain                  ids run 1, 2, 3...; every event's hash holds; every event links to
                         the previous one's hash (a break is named: modified, inserted,
                         deleted, reordered)
  checkpoint_heads       at every checkpoint's tree size the chain's hash is the signed head
  coverage               the log is not shorter than any checkpoint says (else: truncated)

One streaming pass, hashlib only: the export's event lines carry the exact bytes that were
hashed, so offline verification never re-encodes JSON.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, text

from audit.checkpoints import (
    Checkpoint,
    CheckpointFile,
    database_checkpoints,
    parse_checkpoint_line,
)
from audit.errors import (
    BadCheckpoint,
    EventDeleted,
    EventInserted,
    EventModified,
    EventsReordered,
    ExportMalformed,
    LogTruncated,
    VerificationFailed,
)
from audit.export import EXPORT_FORMAT, EXPORT_VERSION, event_prefix
from audit.hashing import GENESIS, HASHED_FIELDS, event_body
from audit.keys import PublicKeys

STEPS = ("format", "checkpoint_signatures", "chain", "checkpoint_heads", "coverage")

#: (stated id, stated prev_hash, stated hash, whether the hash holds over the event's bytes)
Record = tuple[int, str, str, bool]

_PAGE = 5000


@dataclass
class VerificationReport:
    """What verification established and, if it failed, where and how.

    `verified_up_to` is the last event id up to which the chain holds; `checkpointed_up_to`
    the largest tree size a valid checkpoint vouches for and the chain matched. Events after
    it hold together but no signature covers them yet.
    """

    ok: bool
    events: int
    verified_up_to: int
    head_hash: str
    checkpoints: int
    checkpointed_up_to: int
    first_bad: int | None = None
    kind: str | None = None
    step: str | None = None
    message: str = ""
    checkpoint: int | None = None  # tree size of the checkpoint involved
    from_id: int = 1
    to_id: int | None = None
    complete: bool = True
    keyids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def unsigned_events(self) -> int:
        return max(0, self.verified_up_to - max(self.checkpointed_up_to, self.from_id - 1))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unsigned_events": self.unsigned_events}


class _Walk:
    """The state of one pass over the chain, for the report when it stops."""

    def __init__(self, start_id: int, start_prev: str) -> None:
        self.start_id = start_id
        self.next_id = start_id
        self.head = start_prev
        self.events = 0
        self.signed_up_to = 0
        self.checkpoints = 0


def verify_records(records: Iterable[Record], checkpoints: Iterable[Checkpoint], *,
                   keys: PublicKeys | None = None, start_id: int = 1,
                   start_prev: str = GENESIS, to_id: int | None = None,
                   complete: bool = True) -> VerificationReport:
    """Run the steps over a stream of records and the checkpoints that apply to them.

    `complete` says the stream runs to the log's head (a full export, the database): every
    checkpoint then applies. For a range, only checkpoints inside it do.
    """
    return _verify(lambda heads, walk: _walk_chain(iter(records), heads, walk), checkpoints,
                   keys=keys, start_id=start_id, start_prev=start_prev, to_id=to_id,
                   complete=complete)


def _verify(walker: Callable[[dict[int, str], _Walk], None], checkpoints: Iterable[Checkpoint],
            *, keys: PublicKeys | None, start_id: int, start_prev: str, to_id: int | None,
            complete: bool) -> VerificationReport:
    walk = _Walk(start_id, start_prev)
    notes: list[str] = []
    report_keys = keys.keyids if keys is not None else []
    try:
        heads = _checked_heads(checkpoints, keys, start_id=start_id, to_id=to_id,
                               complete=complete, notes=notes)
        walk.checkpoints = len(heads)
        if start_id - 1 in heads:
            walk.signed_up_to = start_id - 1
            if heads[start_id - 1] != start_prev:
                raise LogTruncated(
                    f"the export starts after event {start_id - 1}, but that event's hash is "
                    f"not the one the checkpoint at {start_id - 1} signed",
                    event_id=start_id, checkpoint=start_id - 1)
        walker(heads, walk)
        _check_coverage(heads, walk, to_id=to_id, complete=complete)
    except VerificationFailed as failure:
        first_bad = failure.event_id
        return VerificationReport(
            ok=False, events=walk.events,
            verified_up_to=min(walk.next_id, first_bad if first_bad is not None
                               else walk.next_id) - 1,
            head_hash=walk.head, checkpoints=walk.checkpoints,
            checkpointed_up_to=min(walk.signed_up_to, (first_bad or 1 << 62) - 1),
            first_bad=first_bad, kind=str(failure.kind), step=failure.step,
            message=failure.message, checkpoint=failure.checkpoint, from_id=start_id,
            to_id=to_id, complete=complete, keyids=report_keys, notes=notes)
    return VerificationReport(
        ok=True, events=walk.events, verified_up_to=walk.next_id - 1, head_hash=walk.head,
        checkpoints=walk.checkpoints, checkpointed_up_to=walk.signed_up_to,
        message=_success_message(walk), from_id=start_id, to_id=to_id, complete=complete,
        keyids=report_keys, notes=notes)


def _success_message(walk: _Walk) -> str:
    last = walk.next_id - 1
    if walk.events == 0:
        return "the log is empty"
    unsigned = last - max(walk.signed_up_to, walk.start_id - 1)
    signed = (f"; checkpoints vouch for events up to {walk.signed_up_to}"
              if walk.signed_up_to else "; no checkpoint covers them")
    tail = f" ({unsigned} later events are not yet signed)" if unsigned and \
        walk.signed_up_to else ""
    return f"events {walk.start_id}..{last} hold together{signed}{tail}"


# --- step: checkpoint_signatures ----------------------------------------------------------


def _checked_heads(checkpoints: Iterable[Checkpoint], keys: PublicKeys | None, *,
                   start_id: int, to_id: int | None, complete: bool,
                   notes: list[str]) -> dict[int, str]:
    heads: dict[int, str] = {}
    seen: set[Checkpoint] = set()
    ignored = 0
    for checkpoint in checkpoints:
        if checkpoint in seen:
            continue
        seen.add(checkpoint)
        if keys is None:
            raise ValueError("checkpoints need the audit public keys to be verified")
        checkpoint.verify(keys)
        if checkpoint.tree_size < start_id - 1 or (
                not complete and to_id is not None and checkpoint.tree_size > to_id):
            ignored += 1
            continue
        known = heads.setdefault(checkpoint.tree_size, checkpoint.head_hash)
        if known != checkpoint.head_hash:
            raise BadCheckpoint(
                f"two validly signed checkpoints at tree size {checkpoint.tree_size} sign "
                "different heads: the audit key was used to sign a rewritten history",
                checkpoint=checkpoint.tree_size)
    if ignored:
        notes.append(f"{ignored} checkpoints outside the exported range were checked but "
                     "do not apply to it")
    return heads


# --- steps: chain and checkpoint_heads, in one pass ---------------------------------------


def _walk_chain(records: Iterator[Record], heads: dict[int, str], walk: _Walk) -> None:
    expected, prev, count = walk.next_id, walk.head, 0
    last_prev: str | None = None
    signed = walk.signed_up_to
    try:
        for stated_id, stated_prev, stated_hash, holds in records:
            if holds and stated_id == expected and stated_prev == prev:
                if expected in heads:
                    if heads[expected] != stated_hash:
                        raise _head_mismatch(expected, heads[expected], records,
                                             signed=signed, start_id=walk.start_id)
                    signed = expected
                last_prev, prev = prev, stated_hash
                expected += 1
                count += 1
                continue
            raise _classify((stated_id, stated_prev, stated_hash, holds), records,
                            expected=expected, prev=prev, last_prev=last_prev, signed=signed,
                            start_id=walk.start_id)
    finally:
        walk.next_id, walk.head, walk.events, walk.signed_up_to = expected, prev, count, signed


def _head_mismatch(size: int, signed_head: str, rest: Iterator[Record], *, signed: int,
                   start_id: int) -> VerificationFailed:
    """The chain holds but differs from what a checkpoint signed at `size`."""
    try:
        for later_id, _, later_hash, _ in rest:
            if later_hash == signed_head:
                return EventInserted(
                    f"event {size} is not the one the checkpoint at {size} signed; that one "
                    f"comes later (as {later_id}): an event was inserted at {size}",
                    event_id=size)
    except ExportMalformed:
        pass
    return LogTruncated(
        f"the checkpoint at tree size {size} signed a different head than the log has: "
        f"history after event {signed} was rewritten, or truncated and appended to again",
        event_id=signed + 1 if signed >= start_id else start_id, checkpoint=size)


def _classify(record: Record, rest: Iterator[Record], *, expected: int, prev: str,
              last_prev: str | None, signed: int, start_id: int) -> VerificationFailed:
    """Name the first break. `record` is where the walk stopped; the rest of the stream is
    read (not verified) to tell a moved event from a deleted or an inserted one."""
    stated_id, stated_prev, stated_hash, holds = record
    later_id_in_gap = False  # an id in [expected, stated_id) turns up later: moved, not lost
    links_to: dict[str, int] = {}  # later events whose prev_hash is one we ask about
    has_hash: dict[str, int] = {}  # later events whose own hash is one we ask about
    gap_end = stated_id if holds and stated_id > expected else expected
    try:
        for later_id, later_prev, later_hash, _ in rest:
            if expected <= later_id < gap_end:
                later_id_in_gap = True
            if later_prev in (stated_hash, prev):
                links_to.setdefault(later_prev, later_id)
            if later_hash == stated_prev:
                has_hash.setdefault(later_hash, later_id)
    except ExportMalformed:
        pass  # the break found is still the first one
    previous_blamable = expected - 1 >= start_id and expected - 1 > signed
    here = f"event {expected}"

    if last_prev is not None and stated_prev == last_prev:
        if stated_hash == prev:
            return EventInserted(f"{here} is a copy of event {expected - 1}, inserted after it",
                                 event_id=expected)
        if prev in links_to or not previous_blamable:
            return EventInserted(f"an event was inserted at {here}: it claims the same "
                                 f"predecessor as event {expected - 1}", event_id=expected)
        return EventInserted(f"event {expected - 1} was inserted: the next event links past "
                             "it to its predecessor", event_id=expected - 1)
    if not holds:
        owner = links_to.get(stated_hash)
        if owner is not None and owner - 1 != expected:
            return EventsReordered(f"{here} holds the content of event {owner - 1}: events "
                                   "were moved", event_id=expected)
        if stated_prev != prev and stated_prev in has_hash:
            return EventsReordered(f"{here} holds an event that belongs after event "
                                   f"{has_hash[stated_prev]}: events were moved",
                                   event_id=expected)
        if prev in links_to:
            return EventInserted(f"an event was inserted at {here}: the event after it links "
                                 f"to event {expected - 1}", event_id=expected)
        changed = "" if stated_id == expected else f" (its id now reads {stated_id})"
        return EventModified(f"{here} was modified: its hash does not match its content"
                             f"{changed}", event_id=expected)
    if stated_id > expected:
        if stated_prev == prev:
            return EventModified(f"{here} was renumbered to {stated_id}", event_id=expected)
        if later_id_in_gap or stated_prev in has_hash:
            return EventsReordered(f"{here} is out of place: event {stated_id} comes where "
                                   f"{expected} should", event_id=expected)
        missing = f"events {expected}..{stated_id - 1} are" if stated_id - expected > 1 \
            else f"{here} is"
        return EventDeleted(f"{missing} missing", event_id=expected)
    if stated_id < expected:
        return EventInserted(f"an event was inserted at {here}: event {stated_id} appears "
                             "again out of place", event_id=expected)
    # The event holds and has the right id but links elsewhere: its predecessor was replaced.
    blame = expected - 1 if previous_blamable else expected
    if stated_prev in has_hash:
        return EventsReordered(f"event {blame} is out of place: event {expected} names "
                               f"another predecessor", event_id=blame)
    return EventModified(f"event {blame} was replaced: event {expected} does not link to it",
                         event_id=blame)


# --- step: coverage -----------------------------------------------------------------------


def _check_coverage(heads: dict[int, str], walk: _Walk, *, to_id: int | None,
                    complete: bool) -> None:
    last = walk.next_id - 1
    beyond = [size for size in heads if size > last]
    if beyond:
        size = max(beyond)
        raise LogTruncated(f"the log ends at event {last} but a signed checkpoint says it had "
                           f"{size} events: events after {last} were removed",
                           event_id=last + 1, checkpoint=size)
    if complete and to_id is not None and last < to_id:
        raise LogTruncated(f"the export says it holds events up to {to_id} but ends at "
                           f"{last}", event_id=last + 1)


# --- offline: an export file --------------------------------------------------------------


@dataclass(frozen=True)
class ExportHeader:
    exported_at: str
    from_id: int
    to_id: int
    prev_hash: str
    complete: bool
    keyids: list[str]

    @classmethod
    def parse(cls, line: bytes) -> ExportHeader:
        try:
            header = json.loads(line)["header"]
            if header["format"] != EXPORT_FORMAT or header["version"] != EXPORT_VERSION:
                raise ExportMalformed(f"not a Sealroom audit export (format "
                                      f"{header.get('format')!r} v{header.get('version')!r})")
            parsed = cls(exported_at=str(header["exported_at"]), from_id=header["from_id"],
                         to_id=header["to_id"], prev_hash=header["prev_hash"],
                         complete=header["complete"], keyids=list(header["keyids"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportMalformed(f"the first line is not an audit export header: {exc}") \
                from exc
        if not (type(parsed.from_id) is int and type(parsed.to_id) is int
                and isinstance(parsed.prev_hash, str) and isinstance(parsed.complete, bool)
                and parsed.from_id >= 1):
            raise ExportMalformed("the export header's range is not well formed")
        return parsed


def verify_export(export: IO[bytes] | Path, keys: PublicKeys, *,
                  checkpoint_file: Path | None = None) -> VerificationReport:
    """Verify an export (see `audit.export`) with the given public keys, and the checkpoints
    of a separate checkpoint file if one is given: both sets count."""
    if isinstance(export, Path):
        with export.open("rb") as stream:
            return verify_export(stream, keys, checkpoint_file=checkpoint_file)
    try:
        header = ExportHeader.parse(export.readline())
        checkpoints: list[Checkpoint] = []
        if checkpoint_file is not None:
            checkpoints += CheckpointFile(checkpoint_file).read()
            if not checkpoints:
                raise ExportMalformed(f"{checkpoint_file} holds no checkpoints")
        line = export.readline()
        number = 2
        prefix = b'{"checkpoint":'
        while line.startswith(prefix):
            checkpoints.append(parse_checkpoint_line(line, where=f"line {number}"))
            line, number = export.readline(), number + 1
    except VerificationFailed as failure:
        return _failed_before_walk(failure, keys)
    events = itertools.chain([line] if line else [], export)
    return _verify(lambda heads, walk: _walk_export(events, number, heads, walk), checkpoints,
                   keys=keys, start_id=header.from_id, start_prev=header.prev_hash,
                   to_id=header.to_id, complete=header.complete)


def _failed_before_walk(failure: VerificationFailed, keys: PublicKeys) -> VerificationReport:
    return VerificationReport(ok=False, events=0, verified_up_to=0, head_hash="",
                              checkpoints=0, checkpointed_up_to=0, first_bad=failure.event_id,
                              kind=str(failure.kind), step=failure.step,
                              message=failure.message, checkpoint=failure.checkpoint,
                              keyids=keys.keyids)


_EVENT_START = event_prefix()
_HASH_KEY = b',"hash":"'
_PREV_KEY = b',"prev_hash":"'
_ID_KEY = b',"id":'


def _walk_export(lines: Iterator[bytes], first_line: int, heads: dict[int, str],
                 walk: _Walk) -> None:
    """`_walk_chain` over event lines, with a fast path for a line that holds.

    Event lines are `{"event":BODY,"hash":"HEX"}`: BODY is the exact canonical bytes the hash
    covers, a flat object of strings and integers in sorted key order, so `,"id":` and
    `,"prev_hash":"` occur in it only as its own keys (a quote inside a string is escaped).
    A line that holds is accepted with byte comparisons and one SHA-256; any other line goes
    through the same record logic as the database's events.
    """
    sha256, unhex = hashlib.sha256, binascii.a2b_hex
    expected, count, signed = walk.next_id, 0, walk.signed_up_to
    # `prev` is the previous hash in hex and its closing quote, as the next line must quote it
    prev = walk.head.encode("ascii", "replace") + b'"'
    last_prev: bytes | None = None
    number = first_line - 1
    try:
        for line in lines:
            number += 1
            body = line[9:-76]
            i = body.find(_PREV_KEY)
            j = body.rfind(_ID_KEY, 0, i)  # `id` sorts just before `outcome`, `prev_hash`
            try:
                fast = (i > 0 and j > 0 and body[i + 14:i + 79] == prev
                        and line[-76:-67] == _HASH_KEY and line[-3:] == b'"}\n'
                        and line.startswith(_EVENT_START)
                        and body.startswith(b"%d," % expected, j + 6)
                        and sha256(body).digest() == unhex(line[-67:-3]))
            except binascii.Error:
                fast = False
            if fast:
                stated = line[-67:-2]
            else:
                record = _parse_event_line(line, number)
                if record is None:
                    continue
                stated_id, stated_prev, stated_hash, holds = record
                if not (holds and stated_id == expected and stated_prev + '"' == prev.decode()):
                    raise _classify(
                        record, _export_records(lines, number + 1), expected=expected,
                        prev=prev[:-1].decode(), signed=signed, start_id=walk.start_id,
                        last_prev=last_prev[:-1].decode() if last_prev is not None else None)
                stated = stated_hash.encode() + b'"'
            if expected in heads:
                if heads[expected] != stated[:-1].decode():
                    raise _head_mismatch(expected, heads[expected],
                                         _export_records(lines, number + 1), signed=signed,
                                         start_id=walk.start_id)
                signed = expected
            last_prev, prev = prev, stated
            expected += 1
            count += 1
    finally:
        walk.next_id, walk.head = expected, prev[:-1].decode("ascii", "replace")
        walk.events, walk.signed_up_to = count, signed


def _parse_event_line(line: bytes, number: int) -> Record | None:
    if line[-1:] != b"\n":
        line += b"\n"
    if not line.strip():
        return None
    if not line.startswith(_EVENT_START) or line[-76:-67] != _HASH_KEY or \
            line[-3:] != b'"}\n':
        raise ExportMalformed(f"line {number} is not an event line (checkpoints must come "
                              "before the events)")
    body = line[9:-76]
    stated = line[-67:-3].decode("ascii", "replace")
    holds = hashlib.sha256(body).hexdigest() == stated
    i = body.find(_PREV_KEY)
    j = body.find(b',"id":')
    k = body.find(b",", j + 6)
    try:
        stated_id = int(body[j + 6:k]) if j >= 0 and k > j else -1
    except ValueError:
        stated_id, holds = -1, False
    prev = body[i + 14:i + 78].decode("ascii", "replace") if i >= 0 else ""
    return stated_id, prev, stated, holds


def _export_records(lines: Iterable[bytes], first_line: int) -> Iterator[Record]:
    for number, line in enumerate(lines, first_line):
        record = _parse_event_line(line, number)
        if record is not None:
            yield record


# --- live: the database -------------------------------------------------------------------

_COLUMNS = ", ".join(HASHED_FIELDS) + ", hash"


_PAGE_SQL = text(f"SELECT {_COLUMNS} FROM audit_event WHERE id > :last "  # noqa: S608
                 "ORDER BY id LIMIT :page")


def database_records(source: Engine | Connection, *, above: int = 0) -> Iterator[Record]:
    """Every event in id order, in pages. From an engine each page is its own short
    transaction: the console's transactions take the write lock, so a long read in one
    would stall every writer."""
    last = above
    while True:
        if isinstance(source, Engine):
            with source.connect() as conn:
                rows = conn.execute(_PAGE_SQL, {"last": last, "page": _PAGE}).all()
        else:
            rows = source.execute(_PAGE_SQL, {"last": last, "page": _PAGE}).all()
        if not rows:
            return
        for row in rows:
            fields = dict(zip(HASHED_FIELDS, row[:-1], strict=True))
            yield fields["id"], fields["prev_hash"], row[-1], _holds(fields, row[-1])
        last = rows[-1][0]


def _holds(fields: dict[str, Any], stated: str) -> bool:
    try:
        return hashlib.sha256(event_body(fields)).hexdigest() == stated
    except (ValueError, TypeError):
        return False


def verify_connection(conn: Connection, *, checkpoints: Iterable[Checkpoint] = (),
                      keys: PublicKeys | None = None) -> VerificationReport:
    return verify_records(database_records(conn), checkpoints, keys=keys)


def verify_database(engine: Engine, keys: PublicKeys, *,
                    checkpoint_file: Path | None = None) -> VerificationReport:
    """The console's chain status: the database's events against its own checkpoints and
    those in the checkpoint file (read first, so a checkpoint written meanwhile never
    looks like a truncation)."""
    notes: list[str] = []
    try:
        from_file = CheckpointFile(checkpoint_file).read() if checkpoint_file else []
    except VerificationFailed as failure:
        return _failed_before_walk(failure, keys)
    with engine.connect() as conn:
        stored = database_checkpoints(conn)
    if checkpoint_file is not None:
        file_last = max((c.tree_size for c in from_file), default=0)
        db_last = max((c.tree_size for c in stored), default=0)
        if db_last > file_last:
            notes.append(f"the checkpoint file {checkpoint_file} is behind the database "
                         f"(up to {file_last}, database {db_last})")
        elif file_last > db_last:
            notes.append(f"the checkpoint file has checkpoints up to {file_last} that the "
                         f"database lacks (up to {db_last})")
    report = verify_records(database_records(engine), [*from_file, *stored], keys=keys)
    report.notes += notes
    return report
