"""Eight processes appending at once (separate engines, one SQLite file, BEGIN IMMEDIATE)
produce one valid chain holding every event, with valid checkpoints in the database and in
the checkpoint file."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from audit.events import Actor, AuditAction
from console.core import Sealroom
from console.settings import Settings

WRITERS = 8
EACH = 40


def _writer(settings: Settings, writer: int, start: Any) -> None:
    core = Sealroom(settings, migrate=False)
    start.wait()
    for i in range(EACH):
        core.record(Actor(f"writer-{writer}", "engineer", "token", "127.0.0.1"),
                    AuditAction.SANDBOX_VIEW, target=f"sandbox:sb-{writer}-{i}", i=i)
    core.close()


def test_eight_writers_make_one_valid_chain(tmp_path: Path) -> None:
    settings = Settings.from_env(home=tmp_path / "home", testing=True,
                                 audit_checkpoint_every=16)
    core = Sealroom(settings)
    core.audit_key()  # made once, before the writers race to open it
    with core.engine.connect() as conn:  # a new installation records its first policy
        before = conn.exec_driver_sql("SELECT count(*) FROM audit_event").scalar_one()
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = [context.Process(target=_writer, args=(settings, n, start))
               for n in range(WRITERS)]
    for process in writers:
        process.start()
    start.set()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0

    report = core.verify_audit()
    assert report.ok, report.message
    assert report.events == before + WRITERS * EACH
    assert report.checkpoints == (before + WRITERS * EACH) // 16
    assert report.checkpointed_up_to == (before + WRITERS * EACH) // 16 * 16
    with core.engine.connect() as conn:
        targets = {row[0] for row in conn.exec_driver_sql(
            "SELECT target FROM audit_event WHERE id > ?", (before,))}
    assert targets == {f"sandbox:sb-{w}-{i}" for w in range(WRITERS) for i in range(EACH)}
    in_file = core.audit_checkpoints.file.read() if core.audit_checkpoints.file else []
    sizes = [c.tree_size for c in in_file]
    assert sizes == sorted(sizes) and sizes[-1] == report.checkpointed_up_to
