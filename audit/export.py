"""The export format (JSON Lines) that auditors download and `sealroom audit verify` checks.

  line 1      {"header":{"complete":...,"exported_at":...,"format":"sealroom-audit-export",
               "from_id":F,"keyids":[...],"prev_hash":P,"to_id":T,"version":1}}
  then        {"checkpoint":{"head_hash":...,"keyid":...,"time":...,"tree_size":N},
               "signature":"<base64 DER>"}          every checkpoint with F-1 <= N <= T
  then        {"event":BODY,"hash":"<sha256 hex of BODY>"}   events F..T in id order

BODY is byte for byte what the event's hash covers (RFC 8785 JSON of every column but
`hash`), so a verifier hashes the bytes between `{"event":` and `,"hash":"` as they are.
An export is always one contiguous id range, never a filtered selection: a filter by time
picks the range of ids between the first and last matching event, and P is the hash of event
F-1 (64 zeros from the first event), so a range still verifies as a chain.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import Engine, text

from audit.checkpoints import database_checkpoints
from audit.hashing import GENESIS, HASHED_FIELDS, canonical_json, event_body, utc_now

EXPORT_FORMAT = "sealroom-audit-export"
EXPORT_VERSION = 1
MEDIA_TYPE = "application/x-ndjson"
_PAGE = 2000
_COLUMNS = ", ".join(HASHED_FIELDS) + ", hash"
_PAGE_SQL = text(f"SELECT {_COLUMNS} FROM audit_event "  # noqa: S608 (constant columns)
                 "WHERE id >= :first AND id <= :last ORDER BY id LIMIT :page")


def event_prefix() -> bytes:
    return b'{"event":{'


def event_line(fields: dict[str, Any], stated_hash: str) -> bytes:
    """One event line: the hashed bytes as they are, and the hash the row states."""
    try:
        body = event_body(fields)
    except (ValueError, TypeError):
        # A row no writer made (tampered with by hand): export what is there, and let
        # verification say so.
        body = json.dumps({k: fields[k] for k in HASHED_FIELDS}, sort_keys=True,
                          separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return b'{"event":' + body + b',"hash":"' + str(stated_hash).encode() + b'"}\n'


@dataclass(frozen=True)
class ExportRange:
    """Which events an export holds, and the hash the first of them links to."""

    from_id: int
    to_id: int
    prev_hash: str
    complete: bool
    head: int

    @property
    def events(self) -> int:
        return max(0, self.to_id - self.from_id + 1)


def resolve_range(engine: Engine, *, from_id: int | None = None, to_id: int | None = None,
                  since: str | None = None, until: str | None = None) -> ExportRange:
    """Turn the filters into one id range. `since`/`until` are UTC ISO times (inclusive)."""
    with engine.connect() as conn:
        head = conn.execute(text("SELECT coalesce(max(id), 0) FROM audit_event")).scalar_one()
        first, last = from_id or 1, head if to_id is None else min(to_id, head)
        if since is not None:
            found = conn.execute(text("SELECT min(id) FROM audit_event WHERE time >= :t"),
                                 {"t": since}).scalar_one()
            first = max(first, found if found is not None else head + 1)
        if until is not None:
            found = conn.execute(text("SELECT max(id) FROM audit_event WHERE time <= :t"),
                                 {"t": until}).scalar_one()
            last = min(last, found if found is not None else 0)
        prev = GENESIS
        if first > 1:
            row = conn.execute(text("SELECT hash FROM audit_event WHERE id = :id"),
                               {"id": first - 1}).first()
            prev = row[0] if row is not None else GENESIS
    if last < first:
        last = first - 1
    return ExportRange(from_id=first, to_id=last, prev_hash=prev,
                       complete=first == 1 and last == head, head=head)


def header_line(span: ExportRange, keyids: Iterable[str], *, exported_at: str | None = None
                ) -> bytes:
    header = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION,
              "exported_at": exported_at or utc_now(), "from_id": span.from_id,
              "to_id": span.to_id, "prev_hash": span.prev_hash, "complete": span.complete,
              "keyids": sorted(keyids)}
    return canonical_json({"header": header}) + b"\n"


def iter_export(engine: Engine, *, keyids: Iterable[str] = (), from_id: int | None = None,
                to_id: int | None = None, since: str | None = None,
                until: str | None = None) -> Iterator[bytes]:
    """The export's lines, streamed: header, checkpoints, then events in pages (each page a
    short read, so a slow download never holds the database)."""
    span = resolve_range(engine, from_id=from_id, to_id=to_id, since=since, until=until)
    yield header_line(span, keyids)
    with engine.connect() as conn:
        checkpoints = database_checkpoints(conn, above=span.from_id - 2, up_to=span.to_id)
    for checkpoint in checkpoints:
        yield checkpoint.to_line()
    first = span.from_id
    while first <= span.to_id:
        with engine.connect() as conn:
            rows = conn.execute(_PAGE_SQL, {"first": first, "last": span.to_id,
                                            "page": _PAGE}).all()
        if not rows:
            return
        for row in rows:
            yield event_line(dict(zip(HASHED_FIELDS, row[:-1], strict=True)), row[-1])
        first = rows[-1][0] + 1


@dataclass(frozen=True)
class ExportSummary:
    lines: int
    events: int
    checkpoints: int
    bytes: int


def write_export(engine: Engine, out: IO[bytes], **filters: Any) -> ExportSummary:
    """Write `iter_export(engine, **filters)` to `out`."""
    lines = events = checkpoints = size = 0
    for line in iter_export(engine, **filters):
        out.write(line)
        lines += 1
        size += len(line)
        if line.startswith(b'{"event":'):
            events += 1
        elif line.startswith(b'{"checkpoint":'):
            checkpoints += 1
    return ExportSummary(lines, events, checkpoints, size)
