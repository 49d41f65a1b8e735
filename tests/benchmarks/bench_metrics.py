"""Training curves: what reading, capping, paying for and storing metric points costs,
against reading the same log as text, in the same run on the real engine.

A sandbox prints POINTS metric lines (three values each, as `sealroom.log_metrics` does) and
ends. Then, interleaved: the console's log view reads the whole log page by page (the
baseline: what an engineer scrolling the log costs), and the training-metrics service reads
every point from scratch (its rows are emptied between rounds). Ratio = metrics time / log
time; there is no aim, only the price of keeping numbers instead of text. A flood of the same
size past the policy's cap is timed too: it is skipped, with its lines only counted.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
from sqlmodel import col, delete

from console.core import Caller, Sealroom
from console.models import DisclosureItem, MetricPoint, MetricStream, Sandbox
from console.services import launch as launch_service
from console.services import sandboxes as sandbox_service
from console.services import training_metrics
from tests.benchmarks.bench_home import bench_home
from tests.helpers import change_policy, supervisor_pass

NAME = "metrics"
RUNS = 3
POINTS = 30_000  # lines; three points each
JOB = f"""
import os
lines = [b'SEALROOM-METRIC {{"step":%d,"rank":0,"values":{{"loss":%r,"acc":%r,"lr":0.001}}}}\\n'
         % (s, 1.0 / (s + 1), s / {POINTS}) for s in range({POINTS})]
os.write(1, b"".join(lines))
""".encode()


def _forget(core: Sealroom, sandbox_id: str) -> None:
    with core.transaction() as session:
        for table in (MetricPoint, MetricStream, DisclosureItem):
            session.execute(delete(table).where(col(table.sandbox_id) == sandbox_id))


def _read_metrics(core: Sealroom, caller: Caller, record: Sandbox) -> int:
    body = training_metrics.series(core, caller, record)
    while body["more"]:
        body = training_metrics.series(core, caller, record, since=int(str(body["cursor"])))
    return int(str(body["points"]))


def _read_log(core: Sealroom, caller: Caller, sandbox_id: str) -> int:
    offset = total = 0
    while True:
        chunk, start, size = sandbox_service.logs(core, caller, sandbox_id, offset=offset)
        offset = start + len(chunk)
        total += len(chunk)
        if not chunk or offset >= size:
            return total


def _core(home: Path) -> tuple[Sealroom, Caller]:
    return bench_home(home, {"metrics": {"points_per_minute": 1_000_000,
                                         "max_points": 1_000_000}})


def _finished(core: Sealroom, sandbox_id: str) -> Sandbox:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        supervisor_pass(core)
        with core.read() as session:
            record = session.get(Sandbox, sandbox_id)
        if record is not None and record.status not in ("starting", "running"):
            if record.status != "succeeded":
                raise RuntimeError(f"the job ended {record.status}: {record.reason}")
            return record
        time.sleep(0.5)
    raise RuntimeError("the job did not end within 5 minutes")


def run(runs: int = RUNS) -> dict[str, Any]:
    client = docker.from_env(timeout=120)
    timings: dict[str, list[float]] = {"metrics": [], "log": [], "flood": []}
    with tempfile.TemporaryDirectory(prefix="sealroom-bench-") as tmp:
        core, caller = _core(Path(tmp))
        sandbox_id = ""
        try:
            sandbox_id = launch_service.launch(core, caller, launch_service.LaunchOrder(
                datasets=["demo"], code_name="train.py", code=JOB, timeout_s=600)).id
            record = _finished(core, sandbox_id)
            log_bytes = _read_log(core, caller, sandbox_id)
            for i in range(runs):
                for side in (("log", "metrics") if i % 2 else ("metrics", "log")):
                    _forget(core, sandbox_id)
                    began = time.perf_counter()
                    if side == "log":
                        _read_log(core, caller, sandbox_id)
                    else:
                        kept = _read_metrics(core, caller, record)
                        assert kept == 3 * POINTS, kept
                    timings[side].append(time.perf_counter() - began)
            change_policy(core, {"metrics": {"points_per_minute": 1, "max_points": 1}})
            for _ in range(runs):
                _forget(core, sandbox_id)
                began = time.perf_counter()
                _read_metrics(core, caller, record)
                timings["flood"].append(time.perf_counter() - began)
        finally:
            for container in client.containers.list(all=True, filters={
                    "label": f"sealroom.installation={core.settings.installation_id()}"}):
                container.remove(force=True)
            core.close()
            if sandbox_id:
                core.backend.storage.volumes.remove(sandbox_id)
    metrics_s, log_s = statistics.median(timings["metrics"]), statistics.median(timings["log"])
    flood_s = statistics.median(timings["flood"])
    print(f"{'':<40}{'seconds':>10}{'ratio':>8}")
    print(f"{'the log as text (baseline)':<40}{log_s:>10.3f}{1:>8.2f}")
    print(f"{f'{3 * POINTS:,} points kept and paid for':<40}{metrics_s:>10.3f}"
          f"{metrics_s / log_s:>8.2f}")
    print(f"{'the same lines past the cap, counted':<40}{flood_s:>10.3f}{flood_s / log_s:>8.2f}")
    return {"runs": runs, "points": 3 * POINTS, "log_bytes": log_bytes,
            "log_s": log_s, "metrics_s": metrics_s, "flood_s": flood_s,
            "metrics_vs_log": metrics_s / log_s, "flood_vs_log": flood_s / log_s,
            "points_per_s": 3 * POINTS / metrics_s}
