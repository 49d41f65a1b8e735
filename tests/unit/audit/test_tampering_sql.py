"""Tampering done with plain SQL on the SQLite file is found by the console's chain status
(`verify_database`) and by `sealroom audit verify` on an export, with the right kind and
the first bad event."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit.chain import HASHED_FIELDS, event_body
from console.cli import main
from console.core import Sealroom
from tests.unit.audit.conftest import append_events, head

N = 25  # checkpoints (every 10) at 10 and 20; events 21..25 are not yet signed


def _export(core: Sealroom, path: Path) -> Path:
    path.write_bytes(b"".join(core.audit_export_lines()))
    return path


def _cli_verify(core: Sealroom, tmp_path: Path, *, with_file: bool = True) -> tuple[int, str]:
    export = _export(core, tmp_path / "export.jsonl")
    pem = tmp_path / "audit.pem"
    pem.write_bytes(core.audit_public_pem())
    args = ["audit", "verify", str(export), "--key", str(pem)]
    if with_file:
        args += ["--checkpoints", str(core.settings.audit_checkpoint_file)]
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def _forge_row(core: Sealroom, event_id: int, prev_hash: str) -> tuple[object, ...]:
    fields = {"id": event_id, "schema_version": 2, "time": "2026-01-01T00:00:00.000000Z",
              "actor": "mallory", "actor_role": "admin", "auth_method": "token",
              "source": "10.0.0.66", "action": "admin:user:create", "target": "user:ghost",
              "outcome": "ok", "reason": "", "request_id": "", "details": "{}",
              "prev_hash": prev_hash}
    fields["hash"] = hashlib.sha256(event_body(fields)).hexdigest()
    return tuple(fields[name] for name in (*HASHED_FIELDS, "hash"))


def _hash_of(core: Sealroom, event_id: int) -> str:
    with core.engine.connect() as conn:
        return str(conn.exec_driver_sql("SELECT hash FROM audit_event WHERE id = ?",
                                        (event_id,)).scalar_one())


def test_an_untouched_database_and_its_export_verify(audit_core: Sealroom,
                                                     tmp_path: Path) -> None:
    append_events(audit_core, N)
    report = audit_core.verify_audit()
    assert report.ok, report.message
    assert report.checkpointed_up_to == 20 and report.verified_up_to == head(audit_core)
    code, output = _cli_verify(audit_core, tmp_path)
    assert code == 0, output
    assert "VERIFIED" in output and "NOT VERIFIED" not in output


COLUMNS = ", ".join(HASHED_FIELDS)


@pytest.mark.parametrize("name, statements, kind, first_bad", [
    ("update a field", ["UPDATE audit_event SET reason='nothing to see' WHERE id=5"],
     "modified", 5),
    ("update the actor and rehash that row alone", None, "modified", 6),
    ("delete a middle row", ["DELETE FROM audit_event WHERE id=7"], "deleted", 7),
    ("renumber a row", ["UPDATE audit_event SET id=1000 WHERE id=9"], "reordered", 9),
    ("swap two rows' contents", [
        "CREATE TEMP TABLE a AS SELECT * FROM audit_event WHERE id=4",
        "CREATE TEMP TABLE b AS SELECT * FROM audit_event WHERE id=8",
        "DELETE FROM audit_event WHERE id IN (4, 8)",
        f"INSERT INTO audit_event (id, {COLUMNS.replace('id, ', '', 1)}, hash) "
        f"SELECT 4, {COLUMNS.replace('id, ', '', 1)}, hash FROM b",
        f"INSERT INTO audit_event (id, {COLUMNS.replace('id, ', '', 1)}, hash) "
        f"SELECT 8, {COLUMNS.replace('id, ', '', 1)}, hash FROM a",
    ], "reordered", 4),
    ("delete the tail after a checkpoint, and its checkpoint rows", [
        "DELETE FROM audit_event WHERE id > 15",
        "DELETE FROM audit_checkpoint WHERE tree_size > 15",
    ], "truncated", 16),
    ("insert a forged row, shifting the later ones", None, "inserted", 6),
    ("replace a checkpoint row", [
        f"UPDATE audit_checkpoint SET head_hash='{'ab' * 32}' WHERE tree_size=10"],
     "bad_checkpoint", None),
])
def test_sql_tampering_is_found(audit_core: Sealroom, raw_sql: Callable[..., None],
                                tmp_path: Path, name: str, statements: list[str] | None,
                                kind: str, first_bad: int | None) -> None:
    append_events(audit_core, N)
    last = head(audit_core)
    if name.startswith("insert a forged row"):
        for event_id in range(last, 5, -1):
            raw_sql(f"UPDATE audit_event SET id={event_id + 1} WHERE id={event_id}")
        raw_sql(f"INSERT INTO audit_event ({COLUMNS}, hash) VALUES "
                f"({', '.join('?' * (len(HASHED_FIELDS) + 1))})",
                params=_forge_row(audit_core, 6, _hash_of(audit_core, 5)))
    elif name.startswith("update the actor and rehash"):
        with audit_core.engine.connect() as conn:
            row = conn.exec_driver_sql(f"SELECT {COLUMNS} FROM audit_event WHERE id=6").one()
        fields = dict(zip(HASHED_FIELDS, row, strict=True))
        fields["actor"] = "bob"
        forged = hashlib.sha256(event_body(fields)).hexdigest()
        raw_sql(f"UPDATE audit_event SET actor='bob', hash='{forged}' WHERE id=6")
    else:
        assert statements is not None
        raw_sql(*statements)

    report = audit_core.verify_audit()
    assert not report.ok
    assert (report.kind, report.first_bad) == (kind, first_bad), report.message
    if kind == "bad_checkpoint":
        assert report.checkpoint == 10
    code, output = _cli_verify(audit_core, tmp_path)
    assert code == 1, output
    assert f"NOT VERIFIED ({kind})" in output
    if first_bad is not None:
        assert f"First bad    event {first_bad}: {kind}" in output


def test_a_truncated_database_is_caught_only_by_the_checkpoint_file(
        audit_core: Sealroom, raw_sql: Callable[..., None], tmp_path: Path) -> None:
    """Why the checkpoint file must live elsewhere: the database's own checkpoints went
    with its tail, and an export without the file verifies."""
    append_events(audit_core, N)
    raw_sql("DELETE FROM audit_event WHERE id > 15",
            "DELETE FROM audit_checkpoint WHERE tree_size > 15")
    code, output = _cli_verify(audit_core, tmp_path, with_file=False)
    assert code == 0, output
    code, output = _cli_verify(audit_core, tmp_path, with_file=True)
    assert code == 1 and "NOT VERIFIED (truncated)" in output
