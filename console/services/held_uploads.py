"""The code an engineer uploaded with a launch that was refused, kept for the next try.

A browser cannot refill a file input, so the launch form keeps the bytes here under a random
token (the token and the file's name go in the engineer's signed session). A kept upload is
taken once, by the next launch; anything not taken within `HOLD_S` is deleted by the next
hold. Nothing here is shown to anyone but the engineer who uploaded it, and nothing leaves.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

from console.core import Sealroom

#: A kept upload not taken within this long is deleted (seconds).
HOLD_S = 3600
_TOKEN = re.compile(r"[0-9a-f]{32}")


def _dir(core: Sealroom) -> Path:
    return core.settings.home / "held-uploads"


def _path(core: Sealroom, token: str) -> Path | None:
    return _dir(core) / token if _TOKEN.fullmatch(token) else None


def hold(core: Sealroom, data: bytes) -> str:
    """Keep `data` for one later launch; returns its token. Older kept uploads go."""
    folder = _dir(core)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _forget_stale(folder)
    token = secrets.token_hex(16)
    fd = os.open(folder / token, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return token


def take(core: Sealroom, token: str) -> bytes | None:
    """The kept upload, removed as it is read; None when there is none (taken, or expired)."""
    path = _path(core, token)
    if path is None or not path.is_file() or _stale(path):
        drop(core, token)
        return None
    data = path.read_bytes()
    path.unlink(missing_ok=True)
    return data


def exists(core: Sealroom, token: str) -> bool:
    path = _path(core, token)
    return path is not None and path.is_file() and not _stale(path)


def drop(core: Sealroom, token: str) -> None:
    path = _path(core, token)
    if path is not None:
        path.unlink(missing_ok=True)


def _stale(path: Path) -> bool:
    return time.time() - path.stat().st_mtime > HOLD_S


def _forget_stale(folder: Path) -> None:
    for path in folder.iterdir():
        try:
            if _stale(path):
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            continue
