"""Files that cross into a sandbox on the host side: unpacking uploaded code safely and
hashing directory trees. The outbox is read by `sandbox.outbox`."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sandbox.errors import InvalidUpload

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(root: Path) -> tuple[str, int, int]:
    """sha256 over every regular file's relative path and content hash, in sorted order.

    Returns (digest, total bytes, file count). Symlinks and special files are refused.
    """
    entries: list[tuple[str, str]] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            if not stat.S_ISREG(mode):
                raise InvalidUpload(f"{path.relative_to(root)} is not a regular file")
            entries.append((path.relative_to(root).as_posix(), file_sha256(path)))
            total += path.stat().st_size
    digest = hashlib.sha256()
    for rel, file_hash in sorted(entries):
        digest.update(f"{file_hash}  {rel}\n".encode())
    return "sha256:" + digest.hexdigest(), total, len(entries)


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_unpacked_bytes: int
    max_files: int


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith("\\") or "\\" in name:
        raise InvalidUpload(f"archive member {name!r} escapes the workspace")
    return path


def unpack_code(filename: str, data: bytes, workspace: Path, limits: UploadLimits) -> str:
    """Write an uploaded `.py` script or `.zip` of code into `workspace`; return its digest.

    Refuses path traversal, links, archives over the size or file-count caps (zip bombs),
    and any other file type.
    """
    if len(data) > limits.max_bytes:
        raise InvalidUpload(f"upload is {len(data)} bytes, at most {limits.max_bytes} allowed")
    code_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    lower = filename.lower()
    if lower.endswith(".py"):
        base = PurePosixPath(filename.replace("\\", "/")).name
        if not base or base.startswith("."):
            raise InvalidUpload("invalid script name")
        (workspace / base).write_bytes(data)
        return code_digest
    if not lower.endswith(".zip"):
        raise InvalidUpload("upload a Python script (.py) or a zip of code (.zip)")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise InvalidUpload(f"not a valid zip archive: {exc}") from exc
    if len(members) > limits.max_files:
        raise InvalidUpload(f"archive has {len(members)} entries, at most {limits.max_files}")
    if sum(m.file_size for m in members) > limits.max_unpacked_bytes:
        raise InvalidUpload(f"archive unpacks to more than {limits.max_unpacked_bytes} bytes")
    written = 0
    for member in members:
        rel = _safe_member(member.filename)
        if stat.S_ISLNK(member.external_attr >> 16):
            raise InvalidUpload(f"archive member {member.filename!r} is a link")
        target = workspace.joinpath(*rel.parts)
        if member.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as src, target.open("wb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > limits.max_unpacked_bytes:  # the header may lie
                    raise InvalidUpload("archive unpacks to more than allowed")
                dst.write(chunk)
    return code_digest


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Hand a workspace or outbox to the sandbox user (the console runs as root)."""
    if os.geteuid() != 0:
        return
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chown(dirpath, uid, gid)
        for name in filenames:
            os.lchown(Path(dirpath, name), uid, gid)

