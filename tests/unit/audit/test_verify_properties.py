"""Property tests of offline verification: for random event logs and one random tampering,
verification fails and names the right place and kind; an untouched log always verifies.

Logs are built in memory exactly as the console writes them (`event_body`, `sign_checkpoint`,
`audit.export` line formats), so these run in milliseconds per example.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from audit.chain import (
    GENESIS,
    HASHED_FIELDS,
    canonical_json,
    canonical_json_v1,
    encode_details,
    event_body,
)
from audit.checkpoints import Checkpoint, sign_checkpoint
from audit.export import ExportRange, event_line, header_line
from audit.keys import PublicKeys, keyid_of
from audit.verify import VerificationReport, verify_export
from tests.helpers import UNTIMED_HEALTH_CHECKS

KEY = ec.generate_private_key(ec.SECP256R1())
KEYID = keyid_of(KEY.public_key())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
KEYS = PublicKeys([KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)])

text = st.text(max_size=12)
json_scalar = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | text
details = st.dictionaries(st.text(max_size=6), json_scalar | st.lists(json_scalar, max_size=3),
                          max_size=3)


@st.composite
def event_fields(draw: st.DrawFn) -> dict[str, Any]:
    version = draw(st.sampled_from([1, 2]))
    return {"schema_version": version, "time": draw(text), "actor": draw(text),
            "actor_role": draw(text), "auth_method": draw(text), "source": draw(text),
            "action": draw(st.sampled_from(["sandbox:sandbox:launch", "auth:session:login"])),
            "target": draw(text), "outcome": draw(st.sampled_from(["ok", "denied", "failed"])),
            "reason": draw(text), "request_id": draw(text),
            "details": encode_details(draw(details), version)}


@dataclass
class Log:
    events: list[dict[str, Any]]  # every hashed field and `hash`
    checkpoints: list[Checkpoint]
    in_file: list[bool]  # per checkpoint: shipped in the separate file (else in the export)
    extra: dict[str, Any] = field(default_factory=dict)

    def event_lines(self) -> list[bytes]:
        return [event_line({k: e[k] for k in HASHED_FIELDS}, e["hash"]) for e in self.events]

    def render(self, tmp: Path, event_lines: list[bytes] | None = None,
               checkpoint_lines: list[tuple[bytes, bool]] | None = None
               ) -> tuple[bytes, Path | None]:
        lines = self.event_lines() if event_lines is None else event_lines
        cps = checkpoint_lines if checkpoint_lines is not None else [
            (c.to_line(), f) for c, f in zip(self.checkpoints, self.in_file, strict=True)]
        span = ExportRange(1, len(self.events), GENESIS, True, len(self.events))
        export = header_line(span, [KEYID]) + b"".join(line for line, f in cps if not f) + \
            b"".join(lines)
        file_lines = [line for line, f in cps if f]
        path = None
        if file_lines:
            path = tmp / "checkpoints.jsonl"
            path.write_bytes(b"".join(file_lines))
        return export, path


def chain(fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events, prev = [], GENESIS
    for number, f in enumerate(fields, 1):
        event = {**f, "id": number, "prev_hash": prev}
        event["hash"] = hashlib.sha256(event_body(event)).hexdigest()
        events.append(event)
        prev = event["hash"]
    return events


@st.composite
def logs(draw: st.DrawFn, min_events: int = 1) -> Log:
    events = chain(draw(st.lists(event_fields(), min_size=min_events, max_size=14)))
    sizes = draw(st.sets(st.integers(1, len(events)), max_size=4))
    checkpoints = [sign_checkpoint(KEY, KEYID, n, events[n - 1]["hash"], f"t{n}")
                   for n in sorted(sizes)]
    in_file = [draw(st.booleans()) for _ in checkpoints]
    return Log(events, checkpoints, in_file)


def run(log: Log, tmp: Path, **render: Any) -> VerificationReport:
    export, path = log.render(tmp, **render)
    return verify_export(io.BytesIO(export), KEYS, checkpoint_file=path)


SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[*UNTIMED_HEALTH_CHECKS,
                                          HealthCheck.function_scoped_fixture])


def test_the_fast_flat_encoding_is_rfc8785() -> None:
    """`event_body` relies on json.dumps being RFC 8785 for flat str/int objects with ASCII
    keys (the field names; RFC 8785 sorts keys by UTF-16 code units, Python by code points,
    which differ only beyond the BMP)."""

    @given(st.dictionaries(st.sampled_from(HASHED_FIELDS) | st.text("abcdefghij_"),
                           st.text() | st.integers(-(2**53) + 1, 2**53 - 1)))
    def check(body: dict[str, Any]) -> None:
        try:
            expected = canonical_json(body)
        except Exception:  # lone surrogates: neither encoder accepts them
            with pytest.raises(UnicodeEncodeError):
                canonical_json_v1(body)
            return
        assert canonical_json_v1(body) == expected

    check()


@SETTINGS
@given(log=logs())
def test_an_untouched_log_always_verifies(log: Log, tmp_path: Path) -> None:
    report = run(log, tmp_path)
    assert report.ok, report.message
    assert report.verified_up_to == report.events == len(log.events)
    assert report.checkpointed_up_to == max((c.tree_size for c in log.checkpoints), default=0)
    assert report.head_hash == log.events[-1]["hash"]


def _modify(value: Any, data: st.DataObject) -> Any:
    if isinstance(value, int):
        return data.draw(st.integers(-5, 10_000).filter(lambda v: v != value))
    return data.draw(st.text(max_size=70).filter(lambda v: v != value))


@SETTINGS
@given(log=logs(), data=st.data())
def test_modifying_any_field_is_found_at_that_event(log: Log, data: st.DataObject,
                                                   tmp_path: Path) -> None:
    k = data.draw(st.integers(1, len(log.events)))
    name = data.draw(st.sampled_from([*HASHED_FIELDS, "hash"]))
    event = dict(log.events[k - 1])
    event[name] = data.draw(st.text("0123456789abcdef", min_size=64, max_size=64).filter(
        lambda v: v != event["hash"])) if name == "hash" else _modify(event[name], data)
    lines = log.event_lines()
    body = canonical_json({n: event[n] for n in HASHED_FIELDS})
    lines[k - 1] = b'{"event":' + body + b',"hash":"' + event["hash"].encode() + b'"}\n'
    report = run(log, tmp_path, event_lines=lines)
    assert not report.ok
    assert (report.kind, report.first_bad) == ("modified", k), report.message


@SETTINGS
@given(log=logs(), data=st.data())
def test_deleting_an_event_is_found(log: Log, data: st.DataObject, tmp_path: Path) -> None:
    n = len(log.events)
    k = data.draw(st.integers(1, n))
    lines = log.event_lines()
    del lines[k - 1]
    report = run(log, tmp_path, event_lines=lines)
    # The export's header says it holds n events, so even an unsigned last event is missed.
    assert not report.ok
    if k == n:
        assert (report.kind, report.first_bad) == ("truncated", n), report.message
    else:
        assert (report.kind, report.first_bad) == ("deleted", k), report.message


@SETTINGS
@given(log=logs(), data=st.data(), forged=event_fields())
def test_inserting_a_forged_event_is_found(log: Log, data: st.DataObject,
                                           forged: dict[str, Any], tmp_path: Path) -> None:
    """The forger chains the event properly (they know the algorithm) and gives it the id
    of the event it pushes down."""
    k = data.draw(st.integers(1, len(log.events)))
    prev = log.events[k - 2]["hash"] if k > 1 else GENESIS
    event = {**forged, "id": k, "prev_hash": prev, "target": "forged"}
    event["hash"] = hashlib.sha256(event_body(event)).hexdigest()
    assume(event["hash"] != log.events[k - 1]["hash"])
    lines = log.event_lines()
    lines.insert(k - 1, event_line(event, event["hash"]))
    report = run(log, tmp_path, event_lines=lines)
    assert not report.ok
    assert (report.kind, report.first_bad) == ("inserted", k), report.message


@SETTINGS
@given(log=logs(min_events=2), data=st.data())
def test_swapping_two_events_is_found(log: Log, data: st.DataObject, tmp_path: Path) -> None:
    a = data.draw(st.integers(1, len(log.events) - 1))
    b = data.draw(st.integers(a + 1, len(log.events)))
    lines = log.event_lines()
    lines[a - 1], lines[b - 1] = lines[b - 1], lines[a - 1]
    report = run(log, tmp_path, event_lines=lines)
    assert not report.ok
    assert (report.kind, report.first_bad) == ("reordered", a), report.message


@SETTINGS
@given(log=logs(), data=st.data())
def test_truncating_after_a_checkpoint_is_found(log: Log, data: st.DataObject,
                                                tmp_path: Path) -> None:
    assume(log.checkpoints)
    checkpoint = data.draw(st.sampled_from(log.checkpoints))
    keep = data.draw(st.integers(0, checkpoint.tree_size - 1))
    # The insider also fixes the export's header, which no signature covers.
    export, path = log.render(tmp_path, event_lines=log.event_lines()[:keep])
    header, rest = export.split(b"\n", 1)
    fixed = json.loads(header)
    fixed["header"]["to_id"] = keep
    export = canonical_json(fixed) + b"\n" + rest
    report = verify_export(io.BytesIO(export), KEYS, checkpoint_file=path)
    assert not report.ok
    assert (report.kind, report.first_bad) == ("truncated", keep + 1), report.message
    assert report.verified_up_to == keep


@SETTINGS
@given(log=logs(), data=st.data())
def test_replacing_a_checkpoint_is_found(log: Log, data: st.DataObject, tmp_path: Path) -> None:
    assume(log.checkpoints)
    index = data.draw(st.integers(0, len(log.checkpoints) - 1))
    original = log.checkpoints[index]
    how = data.draw(st.sampled_from(["other_key", "head", "size", "signature", "time"]))
    if how == "other_key":
        forged = sign_checkpoint(OTHER_KEY, KEYID, original.tree_size, "ab" * 32, original.time)
    elif how == "head":
        forged = Checkpoint(original.tree_size, "cd" * 32, original.time, original.keyid,
                            original.signature)
    elif how == "size":
        forged = Checkpoint(original.tree_size + 1, original.head_hash, original.time,
                            original.keyid, original.signature)
    elif how == "time":
        forged = Checkpoint(original.tree_size, original.head_hash, original.time + "x",
                            original.keyid, original.signature)
    else:
        other = log.checkpoints[index - 1] if index else sign_checkpoint(
            KEY, KEYID, original.tree_size, "ef" * 32, original.time)
        assume(other.signature != original.signature)
        forged = Checkpoint(original.tree_size, original.head_hash, original.time,
                            original.keyid, other.signature)
    cps = [(c.to_line(), f) for c, f in zip(log.checkpoints, log.in_file, strict=True)]
    cps[index] = (forged.to_line(), cps[index][1])
    report = run(log, tmp_path, checkpoint_lines=cps)
    assert not report.ok
    assert report.kind == "bad_checkpoint", report.message
    assert report.checkpoint == forged.tree_size


@SETTINGS
@given(log=logs(min_events=2), data=st.data())
def test_a_rewritten_tail_is_caught_by_the_checkpoint(log: Log, data: st.DataObject,
                                                      tmp_path: Path) -> None:
    """An insider recomputes every hash from event k on: only a checkpoint can tell."""
    assume(log.checkpoints)
    last = log.checkpoints[-1].tree_size
    k = data.draw(st.integers(1, last))
    fields = [{n: e[n] for n in HASHED_FIELDS if n not in ("id", "prev_hash")}
              for e in log.events]
    fields[k - 1]["reason"] += " (rewritten)"
    rewritten = Log(chain(fields), log.checkpoints, log.in_file)
    report = run(rewritten, tmp_path, checkpoint_lines=[
        (c.to_line(), f) for c, f in zip(log.checkpoints, log.in_file, strict=True)])
    assert not report.ok
    assert report.kind == "truncated"
    signed_before = max((c.tree_size for c in log.checkpoints if c.tree_size < k), default=0)
    assert report.first_bad == signed_before + 1 <= k
