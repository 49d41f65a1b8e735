"""Merge what Sealroom needs into the Docker engine's daemon.json, keeping everything else.

Run by ensure-host.sh: `python3 daemon_json.py [--check] DAEMON_JSON [RUNSC_PATH]`. It
registers gVisor as the runtime `runsc` (ptrace platform, gVisor's own network stack off, so
Docker's `--network=none` works) and turns on live-restore (sandboxes survive an engine
restart). Stdlib only: it runs before the project's venv exists. Prints `changed` or
`unchanged`; writes only when something changed (never with `--check`), atomically, keeping
the file's mode. A file that is not a JSON object is left alone with exit status 2: an
operator's configuration is never guessed at.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

RUNSC_PATH = "/usr/bin/runsc"
RUNSC_ARGS = ["--platform=ptrace", "--network=none"]


def merged(current: dict[str, Any], runsc_path: str = RUNSC_PATH) -> dict[str, Any]:
    """`current` with the runsc runtime and live-restore set; every other key as it was."""
    result = dict(current)
    runtimes = result.get("runtimes")
    runtimes = dict(runtimes) if isinstance(runtimes, dict) else {}
    runtimes["runsc"] = {"path": runsc_path, "runtimeArgs": list(RUNSC_ARGS)}
    result["runtimes"] = runtimes
    result["live-restore"] = True
    return result


def main(argv: list[str]) -> int:
    check = "--check" in argv[1:]
    argv = [a for a in argv if a != "--check"]
    if len(argv) not in (2, 3):
        print("usage: daemon_json.py [--check] DAEMON_JSON [RUNSC_PATH]", file=sys.stderr)
        return 64
    path = Path(argv[1])
    runsc_path = argv[2] if len(argv) == 3 else RUNSC_PATH
    try:
        text = path.read_text() if path.exists() else ""
        current = json.loads(text) if text.strip() else {}
    except (OSError, ValueError) as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(current, dict):
        print(f"{path} is not a JSON object; not touching it", file=sys.stderr)
        return 2
    wanted = merged(current, runsc_path)
    if wanted == current:
        print("unchanged")
        return 0
    if check:
        print("changed")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    handle, temporary = tempfile.mkstemp(prefix=".daemon.json.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(wanted, indent=2, sort_keys=True) + "\n")
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    print("changed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
