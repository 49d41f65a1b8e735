"""Audit log: durable appends against plain inserts, offline verification against sha256sum.

Appends: `Sealroom.record` (one transaction per event: chain head lookup, RFC 8785, hash,
checkpoint every 256 events, fsync'd WAL commit) against inserting the same rows into a plain
table with the same columns and indexes, in the same database, one transaction each, with 1
writer and with 8 writer processes. Ratio = appends/s / inserts/s; the aim is >= 0.5.

Verification: `verify_export` (what `sealroom audit verify` runs) over an export of 100,000
events against `sha256sum` of the same file, warm page cache, interleaved. Ratio =
sha256sum_time / verify_time; the aim is >= 0.5. The live database's verification
(`verify_database`, the console's chain status) is shown for information.
"""

from __future__ import annotations

import multiprocessing
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from audit.chain import append
from audit.events import Actor, AuditAction, EventDraft
from audit.verify import verify_export
from console.core import Sealroom
from console.settings import Settings

NAME = "audit"
AIM = 0.5
APPENDS = 400  # per run, 1 writer
WRITERS = 8
EACH = 60  # per writer and run
ROUNDS = 3
EXPORT_EVENTS = 100_000


def _core(settings: Settings, *, migrate: bool = False) -> Sealroom:
    return Sealroom(settings, migrate=migrate)


_ACTOR = Actor("alice", "engineer", "token", "127.0.0.1")


def _record(core: Sealroom, tag: str, i: int) -> None:
    core.record(_ACTOR, AuditAction.SANDBOX_VIEW, target=f"sandbox:sb-{tag}-{i}",
                request_id=f"{tag}{i:08d}", spec={"cpus": 1.0, "memory_mb": 2048, "i": i})


_COLUMNS = ("id, schema_version, time, actor, actor_role, auth_method, source, action, "
            "target, outcome, reason, request_id, details, prev_hash, hash")


def _make_plain_table(core: Sealroom) -> None:
    """`plain_event`: audit_event's columns and indexes, without the chain or the guards."""
    with core.engine.connect() as conn:
        ddl = [row[0] for row in conn.execute(text(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'audit_event' "
            "AND type IN ('table', 'index') AND sql IS NOT NULL"))]
    with core.engine.begin() as conn:
        for statement in ddl:
            conn.execute(text(statement.replace("audit_event", "plain_event")))


def _plain_rows(core: Sealroom, count: int) -> list[dict[str, Any]]:
    """Copies of real audit rows (same sizes), with new ids and unique hashes."""
    with core.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text(
            f"SELECT {_COLUMNS} FROM audit_event ORDER BY id DESC LIMIT :n"), {"n": count})]
    return rows


def _insert_plain(core: Sealroom, rows: list[dict[str, Any]], tag: str) -> float:
    statement = text(f"INSERT INTO plain_event ({_COLUMNS}) VALUES (NULL, :schema_version, "
                     ":time, :actor, :actor_role, :auth_method, :source, :action, :target, "
                     ":outcome, :reason, :request_id, :details, :prev_hash, :hash)")
    began = time.perf_counter()
    for i, row in enumerate(rows):
        with core.transaction() as session:
            session.connection().execute(statement, {**row, "hash": f"{tag}-{i}-{row['hash']}"})
    return time.perf_counter() - began


def _append(core: Sealroom, count: int, tag: str) -> float:
    began = time.perf_counter()
    for i in range(count):
        _record(core, tag, i)
    return time.perf_counter() - began


def _writer(settings: Settings, kind: str, tag: str, start: Any, done: Any) -> None:
    core = _core(settings)
    if kind == "plain":
        rows = (_plain_rows(core, EACH) * EACH)[:EACH]
        start.wait()
        _insert_plain(core, rows, tag)
    else:
        start.wait()
        _append(core, EACH, tag)
    done.put(tag)
    core.close()


def _parallel(settings: Settings, kind: str, round_: int) -> float:
    context = multiprocessing.get_context("spawn")
    start, done = context.Event(), context.Queue()
    processes = [context.Process(target=_writer,
                                 args=(settings, kind, f"{kind}{round_}w{n}", start, done))
                 for n in range(WRITERS)]
    for process in processes:
        process.start()
    time.sleep(3.0)  # every writer has imported and opened its engine
    began = time.perf_counter()
    start.set()
    for _ in processes:
        done.get(timeout=600)
    seconds = time.perf_counter() - began
    for process in processes:
        process.join(60)
        if process.exitcode != 0:
            raise RuntimeError(f"a {kind} writer failed (exit {process.exitcode})")
    return seconds


def _fill(core: Sealroom, count: int, batch: int = 5000) -> None:
    """Many events quickly: a batch per transaction (still chained and checkpointed)."""
    done = 0
    while done < count:
        with core.transaction() as session:
            for i in range(done, min(count, done + batch)):
                append(session, EventDraft(_ACTOR, AuditAction.SANDBOX_VIEW,
                                           f"sandbox:sb-{i:08x}", request_id=f"r{i:010d}",
                                           details={"spec": {"cpus": 1.0, "memory_mb": 2048},
                                                    "i": i}))
        done = min(count, done + batch)


def _sha256sum(path: Path) -> float:
    began = time.perf_counter()
    subprocess.run(["sha256sum", str(path)], capture_output=True, check=True)
    return time.perf_counter() - began


def _verify(path: Path, core: Sealroom) -> float:
    keys = core.audit_verifier_keys()
    began = time.perf_counter()
    report = verify_export(path, keys)
    seconds = time.perf_counter() - began
    if not report.ok or report.events < EXPORT_EVENTS:
        raise RuntimeError(f"the benchmark export does not verify: {report.message}")
    return seconds


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sealroom-bench-audit-") as tmp:
        # Its own checkpoint file too, whatever SEALROOM_AUDIT_CHECKPOINT_DIR says.
        settings = Settings.from_env(home=Path(tmp) / "home",
                                     audit_checkpoint_dir=Path(tmp) / "home" / "audit-checkpoints")
        core = _core(settings, migrate=True)
        core.audit_key()
        _append(core, 50, "warm")
        _make_plain_table(core)

        appended, inserted = [], []
        for r in range(ROUNDS):
            rows = (_plain_rows(core, APPENDS) * APPENDS)[:APPENDS]
            if r % 2:
                inserted.append(_insert_plain(core, rows, f"p{r}"))
                appended.append(_append(core, APPENDS, f"a{r}"))
            else:
                appended.append(_append(core, APPENDS, f"a{r}"))
                inserted.append(_insert_plain(core, rows, f"p{r}"))
        par_appended, par_inserted = [], []
        for r in range(ROUNDS):
            order = ("append", "plain") if r % 2 == 0 else ("plain", "append")
            for kind in order:
                (par_appended if kind == "append" else par_inserted).append(
                    _parallel(settings, kind, r))

        began = time.perf_counter()
        _fill(core, EXPORT_EVENTS)
        fill_s = time.perf_counter() - began
        export = Path(tmp) / "export.jsonl"
        export.write_bytes(b"".join(core.audit_export_lines()))
        size = export.stat().st_size
        _sha256sum(export)  # warm the page cache for both sides
        sums, verifies = [], []
        for r in range(ROUNDS):
            if r % 2:
                verifies.append(_verify(export, core))
                sums.append(_sha256sum(export))
            else:
                sums.append(_sha256sum(export))
                verifies.append(_verify(export, core))
        began = time.perf_counter()
        live = core.verify_audit()
        live_s = time.perf_counter() - began
        events = live.events
        core.close()

    append_rate = APPENDS / statistics.median(appended)
    insert_rate = APPENDS / statistics.median(inserted)
    par_append_rate = WRITERS * EACH / statistics.median(par_appended)
    par_insert_rate = WRITERS * EACH / statistics.median(par_inserted)
    ratio_1 = append_rate / insert_rate
    ratio_8 = par_append_rate / par_insert_rate
    verify_mb = size / statistics.median(verifies) / 1e6
    sum_mb = size / statistics.median(sums) / 1e6
    ratio_verify = statistics.median(sums) / statistics.median(verifies)

    def verdict(ratio: float) -> str:
        return "PASS" if ratio >= AIM else "BELOW AIM"

    print(f"durable appends (fsync'd WAL commit per event), median of {ROUNDS} interleaved runs")
    print(f"{'':<38}{'events/s':>10}{'ratio':>8}")
    print(f"{'1 writer:  plain inserts (baseline)':<38}{insert_rate:>10.0f}")
    print(f"{'1 writer:  chained appends':<38}{append_rate:>10.0f}{ratio_1:>8.2f}"
          f"   aim >= {AIM}: {verdict(ratio_1)}")
    print(f"{'8 writers: plain inserts (baseline)':<38}{par_insert_rate:>10.0f}")
    print(f"{'8 writers: chained appends':<38}{par_append_rate:>10.0f}{ratio_8:>8.2f}"
          f"   aim >= {AIM}: {verdict(ratio_8)}")
    print(f"offline verification of a {EXPORT_EVENTS}-event export ({size / 1e6:.1f} MB), "
          "warm page cache")
    print(f"{'':<38}{'MB/s':>10}{'ratio':>8}")
    print(f"{'sha256sum (baseline)':<38}{sum_mb:>10.0f}")
    print(f"{'sealroom audit verify (verify_export)':<38}{verify_mb:>10.0f}{ratio_verify:>8.2f}"
          f"   aim >= {AIM}: {verdict(ratio_verify)}")
    print(f"{'live chain status (verify_database)':<38}{events / live_s:>10.0f} events/s "
          f"({events} events, {live_s:.1f} s)")
    print(f"(filling {EXPORT_EVENTS} events in batches of 5000 took {fill_s:.1f} s)")
    return {
        "benchmark": NAME,
        "appends_1_s": appended, "inserts_1_s": inserted, "events_1": APPENDS,
        "appends_8_s": par_appended, "inserts_8_s": par_inserted, "events_8": WRITERS * EACH,
        "append_rate_1": append_rate, "insert_rate_1": insert_rate, "ratio_1_writer": ratio_1,
        "append_rate_8": par_append_rate, "insert_rate_8": par_insert_rate,
        "ratio_8_writers": ratio_8,
        "export_bytes": size, "export_events": EXPORT_EVENTS,
        "sha256sum_s": sums, "verify_s": verifies, "ratio_verify": ratio_verify,
        "verify_database_events_per_s": events / live_s,
        "aim": AIM,
    }
