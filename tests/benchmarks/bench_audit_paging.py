"""Auditor paging at a million events: each filtered page the console serves, timed against
the cheapest possible read of one page (50 rows by primary-key range) in the same database
in the same run. OFFSET paging at the same depth is shown for contrast.

The million rows are inserted directly (paging never re-hashes them) after the events the
installation already holds (a new one records its first policy version), in a temporary
installation of the benchmark's own; the query path is the console's own
`audit_log.search`, without the audit event each real page view adds.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from audit.events import Actor, AuditAction
from console.core import Caller, Sealroom
from console.services import audit_log
from console.settings import Settings

NAME = "audit_paging"
EVENTS = 1_000_000
PAGE = 50
REPEATS = 15


def _fill(core: Sealroom) -> tuple[datetime, int]:
    """EVENTS rows after the newest event there is, later in time too (ids and times rise
    together, as in a real log); returns the time they start from and the last id."""
    rng = random.Random(4)
    actions = [a.value for a in AuditAction]
    rows = []
    with core.engine.begin() as connection:
        newest = connection.execute(text(
            "SELECT id, time FROM audit_event ORDER BY id DESC LIMIT 1")).first()
        head = newest.id if newest is not None else 0
        start = datetime.fromisoformat(newest.time) if newest is not None \
            else datetime(2026, 1, 1, tzinfo=UTC)
        for i in range(head + 1, head + EVENTS + 1):
            moment = start + timedelta(seconds=(i - head) * 3)
            rows.append({
                "id": i, "v": 2, "time": moment.isoformat(timespec="microseconds")
                .replace("+00:00", "Z"), "actor": f"user{rng.randrange(200)}",
                "role": "engineer", "action": rng.choice(actions),
                "target": f"sandbox:sb-{rng.randrange(20_000):06x}",
                "outcome": "denied" if rng.random() < 0.02 else "ok",
                "rid": f"{i:016x}", "prev": f"{i - 1:064x}", "hash": f"{i:064x}"})
            if len(rows) == 50_000:
                connection.execute(text(
                    "INSERT INTO audit_event (id, schema_version, time, actor, actor_role, "
                    "auth_method, source, action, target, outcome, reason, request_id, details, "
                    "prev_hash, hash) VALUES (:id, :v, :time, :actor, :role, 'token', '', "
                    ":action, :target, :outcome, '', :rid, '{}', :prev, :hash)"), rows)
                rows = []
    return start, head + EVENTS


def _median_ms(call: Callable[[], object]) -> float:
    call()  # warm
    times = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sealroom-bench-paging-") as tmp:
        home = Path(tmp) / "home"
        core = Sealroom(Settings.from_env(home=home,
                                          audit_checkpoint_dir=home / "audit-checkpoints"))
        began = time.monotonic()
        start, newest = _fill(core)
        middle = newest - EVENTS // 2
        print(f"  {EVENTS:,} events inserted in {time.monotonic() - began:.0f} s", flush=True)
        caller = Caller(Actor("bench", "auditor"))

        def page(**kwargs: Any) -> Callable[[], object]:
            filters = audit_log.EventFilter(**{k: v for k, v in kwargs.items()
                                               if k != "before"})
            return lambda: audit_log.search(core, caller, filters, before=kwargs.get("before"),
                                            audit=False)

        def baseline() -> object:
            with core.engine.connect() as connection:
                return connection.execute(text(
                    "SELECT * FROM audit_event WHERE id > :low ORDER BY id DESC LIMIT 50"),
                    {"low": newest - PAGE}).all()

        def offset_page() -> object:
            with core.engine.connect() as connection:
                return connection.execute(text(
                    "SELECT * FROM audit_event ORDER BY id DESC LIMIT 50 OFFSET 500000")).all()

        day = (start + timedelta(days=10)).date().isoformat()
        cases = {
            "newest page, no filter": page(),
            "page at depth 500,000": page(before=middle),
            "actor = user7": page(actor="user7"),
            "actor = user7, depth 500,000": page(actor="user7", before=middle),
            "action prefix release:": page(action="release:"),
            "target = one sandbox": page(target="sandbox:sb-0000ff"),
            "outcome = denied": page(outcome="denied"),
            "one day, 25 days back": page(since=day, until=day),
            "actor + outcome = denied": page(actor="user7", outcome="denied"),
        }
        base_ms = _median_ms(baseline)
        print(f"  baseline: 50 rows by primary-key range  {base_ms:8.2f} ms")
        results: dict[str, Any] = {"events": EVENTS, "baseline_ms": base_ms, "cases": {}}
        for label, call in cases.items():
            ms = _median_ms(call)
            results["cases"][label] = {"ms": ms, "ratio": ms / base_ms}
            print(f"  {label:<32} {ms:8.2f} ms  {ms / base_ms:6.1f}x baseline")
        ms = _median_ms(offset_page)
        results["offset_depth_500000_ms"] = ms
        print(f"  (for contrast) OFFSET 500,000       {ms:8.2f} ms  {ms / base_ms:6.1f}x baseline")
        core.close()
    return results
