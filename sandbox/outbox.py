"""Reading a sandbox's outbox from the host without trusting it: the listing (positions,
kinds, sizes, whether a name may be shown), the capped manifest of hashes, and opening one
file for the release gate. Every step goes through directory descriptors and O_NOFOLLOW."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Literal

from sandbox.errors import SandboxError

__all__ = [
    "OutboxError",
    "OutboxItem",
    "OutboxListing",
    "OutboxManifest",
    "OutboxRules",
    "hash_outbox",
    "list_outbox",
    "open_outbox_file",
]

_CHUNK = 1 << 20
#: The walk stops after meeting this many times `max_entries` entries, so an outbox of ten
#: million files costs the console a bounded amount of work.
_SCAN_FACTOR = 10

# Opening a directory: never through a link (ELOOP), never anything else (ENOTDIR), and
# O_NONBLOCK so that even a FIFO swapped in cannot make open() wait for a writer.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

ItemKind = Literal["file", "ignored"]
ManifestState = Literal["ready", "over_cap", "changed"]
OverCap = Literal["max_entries", "max_hash_files", "max_hash_bytes"]


class OutboxError(SandboxError):
    """The outbox, or a file asked for in it, cannot be read safely.

    Neither message carries a name from the outbox: the sandbox chose those names."""

    status = 409


@dataclass(frozen=True)
class OutboxRules:
    """What the console accepts from an outbox; the policy supplies the values."""

    name_pattern: str = r"[A-Za-z0-9._-]{1,64}"  # each path COMPONENT must fullmatch it
    max_depth: int = 3  # directory levels below the outbox root
    max_entries: int = 200  # entries listed; beyond: listing.truncated = True
    max_hash_bytes: int = 8 << 30
    max_hash_files: int = 1000

    def __post_init__(self) -> None:
        if self.max_depth < 0 or self.max_entries < 1:
            raise ValueError("max_depth must be >= 0 and max_entries >= 1")
        if self.max_hash_bytes < 0 or self.max_hash_files < 0:
            raise ValueError("hash caps must be >= 0")
        _compiled(self.name_pattern)  # a bad pattern fails here, not during a listing

    @property
    def max_entries_seen(self) -> int:
        return self.max_entries * _SCAN_FACTOR

    def name_ok(self, parts: tuple[str, ...]) -> bool:
        pattern = _compiled(self.name_pattern)
        return len(parts) - 1 <= self.max_depth and all(
            pattern.fullmatch(part) is not None for part in parts)


@functools.lru_cache(maxsize=16)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@dataclass(frozen=True)
class OutboxItem:
    """One entry met in the outbox. `path` is the sandbox's own text: for the console's
    internal use only, never shown unless `name_ok` and the disclosure budget allow it."""

    position: int  # 1-based, in the listing's stable (sorted) order
    path: str  # real relative path ("a/b.txt")
    kind: ItemKind  # "file" | "ignored" (links, FIFOs, sockets, devices, dirs too deep)
    size: int  # st_size for regular files, else 0
    name_ok: bool  # every component matches name_pattern and depth <= max_depth
    sha256: str | None = None  # set only by hash_outbox


@dataclass(frozen=True)
class OutboxListing:
    items: tuple[OutboxItem, ...]
    truncated: bool  # more entries existed than max_entries (or the walk was cut short)
    entries_seen: int  # entries the walk met, directories included; at most max_entries_seen

    @property
    def files(self) -> tuple[OutboxItem, ...]:
        return tuple(item for item in self.items if item.kind == "file")


@dataclass(frozen=True)
class OutboxManifest:
    """The listing with a sha256 for every regular file, or the reason there are none.

    `ready`: every listed file is hashed. `over_cap`: the outbox exceeds `cap`; nothing was
    read. `changed`: the outbox changed while it was hashed (a file went away, was replaced
    or changed size); hash again once nothing runs in the sandbox."""

    listing: OutboxListing
    state: ManifestState
    cap: OverCap | None = None
    bytes_hashed: int = 0
    files_hashed: int = 0


def list_outbox(outbox: Path, rules: OutboxRules) -> OutboxListing:
    """List the outbox without following a link or opening anything but directories.

    A missing outbox lists as empty; an outbox root that is not a real directory raises
    OutboxError."""
    try:
        root = _open_root(outbox)
    except FileNotFoundError:
        return OutboxListing(items=(), truncated=False, entries_seen=0)
    try:
        walk = _Walk(rules, os.fstat(root).st_dev)
        walk.directory(root, ())
    finally:
        os.close(root)
    items = tuple(
        OutboxItem(position=n, path="/".join(parts), kind=kind, size=size,
                   name_ok=rules.name_ok(parts))
        for n, (parts, kind, size) in enumerate(walk.found, start=1))
    return OutboxListing(items=items, truncated=walk.truncated, entries_seen=walk.seen)


def hash_outbox(outbox: Path, rules: OutboxRules) -> OutboxManifest:
    """List the outbox, then hash its regular files within the caps of `rules`.

    Sizes are charged against `max_hash_bytes` before any byte is read, so an outbox over a
    cap (a sparse 10 TB file, say) is reported at once and nothing is read. Safe to run in
    a background thread: it holds no lock and opens nothing that can block. Raises
    OutboxError if the outbox root is not a real directory or a read fails."""
    listing = list_outbox(outbox, rules)
    files = listing.files
    if listing.truncated:
        return OutboxManifest(listing, "over_cap", cap="max_entries")
    if len(files) > rules.max_hash_files:
        return OutboxManifest(listing, "over_cap", cap="max_hash_files")
    if sum(item.size for item in files) > rules.max_hash_bytes:
        return OutboxManifest(listing, "over_cap", cap="max_hash_bytes")
    if not files:
        return OutboxManifest(listing, "ready")
    hashed: dict[int, str] = {}
    spent = 0
    try:
        root = _open_root(outbox)
    except FileNotFoundError:
        return OutboxManifest(listing, "changed")
    try:
        for item in files:
            digest = _hash_item(root, item, rules.max_hash_bytes - spent)
            if digest is None:
                return OutboxManifest(listing, "changed", bytes_hashed=spent,
                                      files_hashed=len(hashed))
            spent += item.size
            hashed[item.position] = digest
    finally:
        os.close(root)
    items = tuple(replace(item, sha256=hashed.get(item.position)) for item in listing.items)
    return OutboxManifest(replace(listing, items=items), "ready", bytes_hashed=spent,
                          files_hashed=len(hashed))


def open_outbox_file(outbox: Path, path: str) -> BinaryIO:
    """Open one regular file of the outbox for reading, each component relative to its
    parent's descriptor and never through a link; anything else raises OutboxError.

    Read at most `os.fstat(handle.fileno()).st_size` bytes: the size the gate checked."""
    parts = _split(path)
    try:
        root = _open_root(outbox)
    except FileNotFoundError as exc:
        raise OutboxError("This sandbox has no outbox.", detail=f"outbox missing: {exc.errno}") \
            from exc
    try:
        fd = _open_file(root, parts)
    finally:
        os.close(root)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OutboxError("The requested outbox entry is not a regular file.",
                              detail=f"outbox entry has mode {stat.filemode(mode)}")
        return open(fd, "rb", closefd=True)  # noqa: SIM115 (the caller closes it)
    except BaseException:
        os.close(fd)
        raise


# ---------------------------------------------------------------------------- the walk


class _Walk:
    """Depth-first, sorted by name within each directory; every step relative to a
    directory descriptor, so replacing a directory by a link mid-walk leads nowhere."""

    def __init__(self, rules: OutboxRules, device: int) -> None:
        self.rules = rules
        self.device = device
        self.found: list[tuple[tuple[str, ...], ItemKind, int]] = []
        self.seen = 0
        self.truncated = False

    def _add(self, parts: tuple[str, ...], kind: ItemKind, size: int) -> None:
        if len(self.found) >= self.rules.max_entries:
            self.truncated = True
        else:
            self.found.append((parts, kind, size))

    def directory(self, dir_fd: int, parts: tuple[str, ...]) -> None:
        for name in self._names(dir_fd):
            here = (*parts, name)
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue  # gone since the directory was read: nothing to list
            if stat.S_ISREG(info.st_mode) and info.st_dev == self.device:
                self._add(here, "file", info.st_size)
            elif stat.S_ISDIR(info.st_mode) and info.st_dev == self.device:
                if len(here) > self.rules.max_depth:
                    self._add(here, "ignored", 0)  # its contents would be too deep
                    continue
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError:
                    self._add(here, "ignored", 0)  # replaced by a link or a file meanwhile
                    continue
                try:
                    if os.fstat(child).st_dev != self.device:
                        self._add(here, "ignored", 0)
                    else:
                        self.directory(child, here)
                finally:
                    os.close(child)
            else:
                self._add(here, "ignored", 0)

    def _names(self, dir_fd: int) -> list[str]:
        """Up to the remaining scan budget of this directory's names, sorted."""
        names: list[str] = []
        try:
            with os.scandir(dir_fd) as entries:
                for entry in entries:
                    if self.seen >= self.rules.max_entries_seen:
                        self.truncated = True
                        break
                    self.seen += 1
                    names.append(entry.name)
        except OSError:
            pass  # a directory removed while read lists what was read
        return sorted(names)


# ---------------------------------------------------------------------------- opening


def _open_root(outbox: Path) -> int:
    try:
        return os.open(outbox, _DIR_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise OutboxError("The outbox cannot be read safely.",
                          detail=f"outbox root refused: {errno.errorcode.get(exc.errno or 0)}"
                          ) from exc


def _split(path: str) -> tuple[str, ...]:
    parts = tuple(path.split("/"))
    if (not path or path.startswith("/") or "\0" in path
            or any(part in ("", ".", "..") for part in parts)):
        raise OutboxError("That is not a path inside the outbox.",
                          detail=f"refused outbox path of {len(parts)} components")
    return parts


def _open_file(root: int, parts: tuple[str, ...]) -> int:
    """A descriptor for `parts` under `root`, opened component by component."""
    opened: list[int] = []
    dir_fd = root
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            try:
                fd = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise OutboxError(
                    "The requested outbox entry cannot be opened safely.",
                    detail=f"component {index + 1} of {len(parts)}: "
                           f"{errno.errorcode.get(exc.errno or 0)}") from exc
            if last:
                return fd
            opened.append(fd)
            dir_fd = fd
    finally:
        for fd in opened:
            os.close(fd)
    raise AssertionError("unreachable: parts is never empty")


@contextmanager
def _opened(root: int, parts: tuple[str, ...]) -> Iterator[int]:
    fd = _open_file(root, parts)
    try:
        yield fd
    finally:
        os.close(fd)


def _hash_item(root: int, item: OutboxItem, budget: int) -> str | None:
    """sha256 of the file as listed, or None if it is no longer that file."""
    try:
        with _opened(root, tuple(item.path.split("/"))) as fd:
            before = os.fstat(fd)
            # The listed size was charged already; a file that grew since would read more.
            if (not stat.S_ISREG(before.st_mode) or before.st_size != item.size
                    or before.st_size > budget):
                return None
            digest = hashlib.sha256()
            remaining = before.st_size
            while remaining:
                chunk = os.read(fd, min(_CHUNK, remaining))
                if not chunk:
                    return None  # shrank while read
                digest.update(chunk)
                remaining -= len(chunk)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                return None
            return digest.hexdigest()
    except OutboxError:
        return None
    except OSError as exc:  # an I/O error, not a change: the caller logs it
        raise OutboxError("The outbox could not be read.",
                          detail=f"reading outbox file {item.position}: "
                                 f"{errno.errorcode.get(exc.errno or 0)}") from exc
