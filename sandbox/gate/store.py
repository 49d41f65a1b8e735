"""Content-addressed storage for files under review: what is reviewed is what is released.

Files are copied out of the outbox once, named by their SHA-256, made read-only, and never
change afterwards; a changed outbox file is a different blob and needs a new request.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from sandbox.gate.errors import BlobRefused

_CHUNK = 1 << 20


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, source: Path, *, max_bytes: int | None = None) -> tuple[str, int]:
        """Copy a regular file (never following a link) in; return (sha256, size)."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(source, flags)
        except OSError as exc:
            raise BlobRefused(f"{source.name} cannot be read as a regular file") from exc
        with os.fdopen(fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise BlobRefused(f"{source.name} is not a regular file")
            return self.put_stream(src, source.name, max_bytes=max_bytes)

    def put_stream(self, src: BinaryIO, label: str, *,
                   max_bytes: int | None = None) -> tuple[str, int]:
        """Copy an open file in (the caller opened it safely); `label` names it in errors."""
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(dir=self.root / "tmp", delete=False) as tmp:
            try:
                while chunk := src.read(_CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise BlobRefused(f"{label} is larger than {max_bytes} bytes")
                    digest.update(chunk)
                    tmp.write(chunk)
                tmp.flush()
                os.fsync(tmp.fileno())
            except BaseException:
                os.unlink(tmp.name)
                raise
        sha = digest.hexdigest()
        final = self.path(sha)
        if final.exists():
            os.unlink(tmp.name)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp.name, 0o444)
            os.replace(tmp.name, final)
        return sha, size
