"""Runs Sealroom's benchmarks in turn (`make bench`, or `python -m tests.benchmarks [NAME...]`).

Each benchmark is a module here with a `NAME` and a `run()` that prints its table and returns
JSON-able numbers, written to `.bench/<NAME>.json`. Benchmarks report ratios against a
baseline measured in the same run; a slow ratio is reported, never a failure. Only an error
(engine down, image missing, a launch refused) makes the exit status non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

# Run in this order. Add a module here (with NAME and run()) to add a benchmark.
BENCHMARKS = (
    "tests.benchmarks.bench_launch",
    "tests.benchmarks.bench_leakscan",
    "tests.benchmarks.bench_sealing",
    "tests.benchmarks.bench_model_risk",
    "tests.benchmarks.bench_audit",
    "tests.benchmarks.bench_audit_paging",
    "tests.benchmarks.bench_cluster",
    "tests.benchmarks.bench_gvisor",
    "tests.benchmarks.bench_ssh",
    "tests.benchmarks.bench_metrics",
    "tests.benchmarks.bench_console_load",
)
RESULTS_DIR = Path(__file__).resolve().parents[2] / ".bench"


def _load(dotted: str) -> ModuleType:
    module = importlib.import_module(dotted)
    if not isinstance(getattr(module, "NAME", None), str) or not callable(
            getattr(module, "run", None)):
        raise TypeError(f"{dotted} is not a benchmark: it needs NAME and run()")
    return module


def main(argv: list[str] | None = None) -> int:
    modules = [_load(dotted) for dotted in BENCHMARKS]
    names = [m.NAME for m in modules]
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks",
                                     description="Run Sealroom's benchmarks.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(names)})")
    args = parser.parse_args(argv)
    # A benchmark's module name (bench_audit_paging) selects it too.
    aliases = {dotted.rsplit(".", 1)[-1]: m.NAME for dotted, m in zip(BENCHMARKS, modules,
                                                                       strict=True)}
    args.names = [aliases.get(name, name) for name in args.names]
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")

    failed: list[str] = []
    for module in modules:
        if args.names and module.NAME not in args.names:
            continue
        print(f"== {module.NAME}", flush=True)
        began = time.monotonic()
        try:
            result = module.run()
        except Exception:  # report it, run the others, and fail the run at the end
            traceback.print_exc()
            print(f"== {module.NAME}: ERROR", flush=True)
            failed.append(module.NAME)
            continue
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"{module.NAME}.json"
        path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"== {module.NAME}: done in {time.monotonic() - began:.0f} s; numbers in "
              f"{path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}",
              flush=True)
    if failed:
        print(f"benchmarks that errored: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
