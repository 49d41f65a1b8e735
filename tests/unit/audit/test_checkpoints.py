"""Checkpoints: every N events in the appending transaction, every T seconds, shipped to the
file only after the commit; the audit key, its rotation; v1 events; range exports."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from audit.chain import GENESIS, HASHED_FIELDS, append, canonical_json_v1, event_body
from audit.checkpoints import CheckpointFile
from audit.events import Actor, AuditAction, EventDraft
from audit.export import write_export
from audit.keys import PublicKeys
from audit.verify import verify_export
from console.core import Sealroom
from tests.unit.audit.conftest import EVERY, append_events, head


def _sizes(core: Sealroom) -> list[int]:
    return [c.tree_size for c in core.audit_checkpoint_list()]


def _file_sizes(core: Sealroom) -> list[int]:
    return [c.tree_size for c in CheckpointFile(core.settings.audit_checkpoint_file).read()]


def test_a_checkpoint_every_n_events_in_the_database_and_the_file(audit_core: Sealroom) -> None:
    # a new installation starts with events of its own (policy version 1)
    append_events(audit_core, 2 * EVERY + 3 - head(audit_core))
    assert _sizes(audit_core) == [EVERY, 2 * EVERY]
    assert _file_sizes(audit_core) == [EVERY, 2 * EVERY]
    line = audit_core.settings.audit_checkpoint_file.read_bytes().splitlines()[0]
    assert set(json.loads(line)) == {"checkpoint", "signature"}


def test_a_rolled_back_transaction_leaves_no_checkpoint(audit_core: Sealroom) -> None:
    append_events(audit_core, EVERY - 1 - head(audit_core))  # the head is now EVERY - 1
    with pytest.raises(RuntimeError), audit_core.transaction() as session:
        append(session, EventDraft(Actor.system(), AuditAction.SANDBOX_LOST, "sandbox:x"))
        assert session.info.get("sealroom.audit.pending_checkpoints")  # made, not shipped
        raise RuntimeError("the operation failed after its audit write")
    assert _sizes(audit_core) == [] and _file_sizes(audit_core) == []
    assert head(audit_core) == EVERY - 1
    append_events(audit_core, 1)
    assert _sizes(audit_core) == _file_sizes(audit_core) == [EVERY]


def test_a_checkpoint_every_t_seconds_when_there_are_new_events(audit_core: Sealroom) -> None:
    audit_core.audit_checkpoints.every_seconds = 0
    append_events(audit_core, 3)
    made = audit_core.checkpoint_if_due()
    assert made is not None and made.tree_size == head(audit_core)
    assert audit_core.checkpoint_if_due() is None  # nothing new to sign
    audit_core.audit_checkpoints.every_seconds = 3600
    append_events(audit_core, 1)
    assert audit_core.checkpoint_if_due() is None  # the last one is too recent
    assert audit_core.checkpoint_if_due(force=True) is not None


def test_an_unwritable_checkpoint_file_never_fails_the_operation(
        audit_core: Sealroom, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    good = audit_core.audit_checkpoints.file
    audit_core.audit_checkpoints.file = CheckpointFile(blocked / "checkpoints.jsonl")
    append_events(audit_core, EVERY)
    assert _sizes(audit_core) == [EVERY]
    audit_core.audit_checkpoints.file = good
    audit_core.checkpoint_if_due()  # copies what the file lacks
    assert _file_sizes(audit_core) == [EVERY]


def test_the_audit_key_rotates_and_old_checkpoints_still_verify(audit_core: Sealroom) -> None:
    append_events(audit_core, EVERY)
    old = audit_core.audit_key()
    assert audit_core.audit_public_pem() == old.public_pem
    new = audit_core.rotate_audit_key()
    append_events(audit_core, EVERY)
    keys = audit_core.audit_public_keys()
    assert [k.keyid for k in keys] == [new.keyid, old.keyid]
    assert keys[0].active and not keys[1].active and keys[1].retired_at is not None
    assert {c.keyid for c in audit_core.audit_checkpoint_list()} == {old.keyid, new.keyid}
    assert audit_core.verify_audit().ok
    assert not (audit_core.settings.home / "keys" / "audit" / f"{old.keyid}.key.pem").exists()

    only_new = io.BytesIO(b"".join(audit_core.audit_export_lines()))
    report = verify_export(only_new, PublicKeys([new.public_pem]))
    assert (report.ok, report.kind, report.checkpoint) == (False, "bad_checkpoint", EVERY)


def test_version_1_events_still_verify(audit_core: Sealroom,
                                       raw_sql: Callable[..., None]) -> None:
    """A database written before schema v2 keeps verifying, and new events chain onto it."""
    append_events(audit_core, 1)
    last = head(audit_core)
    with audit_core.engine.connect() as conn:
        prev = conn.exec_driver_sql(f"SELECT hash FROM audit_event WHERE id={last}").scalar_one()
    fields = {"id": last + 1, "schema_version": 1, "time": "2025-01-01T00:00:00.000000Z",
              "actor": "old", "actor_role": "admin", "auth_method": "cli", "source": "",
              "action": "admin:user:create", "target": "user:x", "outcome": "ok",
              "reason": "", "request_id": "",
              "details": canonical_json_v1({"ratio": 1.0, "big": 1e20}).decode(),
              "prev_hash": prev}
    fields["hash"] = hashlib.sha256(event_body(fields)).hexdigest()
    columns = [*HASHED_FIELDS, "hash"]
    raw_sql(f"INSERT INTO audit_event ({', '.join(columns)}) VALUES "
            f"({', '.join('?' * len(columns))})", params=tuple(fields[c] for c in columns))
    append_events(audit_core, 2)
    assert audit_core.verify_audit().ok
    export = io.BytesIO(b"".join(audit_core.audit_export_lines()))
    assert verify_export(export, audit_core.audit_verifier_keys()).ok


def test_a_range_export_verifies_as_a_chain(audit_core: Sealroom) -> None:
    append_events(audit_core, 2 * EVERY + 5)
    out = io.BytesIO()
    summary = write_export(audit_core.engine, out, from_id=6, to_id=2 * EVERY + 2)
    assert summary.events == 2 * EVERY - 3 and summary.checkpoints == 2
    header = json.loads(out.getvalue().splitlines()[0])["header"]
    assert header["complete"] is False and header["prev_hash"] != GENESIS
    out.seek(0)
    report = verify_export(out, audit_core.audit_verifier_keys(),
                           checkpoint_file=audit_core.settings.audit_checkpoint_file)
    assert report.ok, report.message
    assert (report.from_id, report.verified_up_to, report.complete) == (6, 2 * EVERY + 2, False)


def test_a_time_filter_picks_a_contiguous_range(audit_core: Sealroom) -> None:
    append_events(audit_core, 5)
    with audit_core.engine.connect() as conn:
        t3 = conn.exec_driver_sql("SELECT time FROM audit_event WHERE id=3").scalar_one()
    lines = list(audit_core.audit_export_lines(since=t3))
    assert json.loads(lines[0])["header"]["from_id"] == 3
    assert verify_export(io.BytesIO(b"".join(lines)), audit_core.audit_verifier_keys()).ok


def test_an_export_without_a_final_newline_verifies(audit_core: Sealroom) -> None:
    append_events(audit_core, 3)
    export = b"".join(audit_core.audit_export_lines()).rstrip(b"\n")
    report = verify_export(io.BytesIO(export), audit_core.audit_verifier_keys())
    assert report.ok and report.verified_up_to == head(audit_core)
