"""What a registered dataset version holds, read from its own files: the README its
registrar put in (and its first paragraph as the description), each file with its size, and
the column names of tabular files. Every read is bounded (a prefix of a file, a cap on files
and columns), never follows a link, and is kept by digest: a version's files never change."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import os
import re
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The names a README goes by at the top of a dataset, in the order one is preferred.
README_NAMES = ("readme.md", "readme.txt", "readme", "readme.rst")
MAX_README_BYTES = 64 * 1024
#: A CSV or TSV header must end within this many bytes; a longer first line is not read.
MAX_HEADER_BYTES = 64 * 1024
MAX_FILES_LISTED = 500
#: Tabular files whose columns are read, per version (the rest are listed with their size).
MAX_TABULAR_READ = 50
MAX_COLUMNS = 1000
MAX_COLUMN_CHARS = 200
MAX_DESCRIPTION_CHARS = 600
_CACHED = 128

_DELIMITERS = {".csv": ",", ".tsv": "\t"}
#: Control characters other than tab and newline: kept out of pages and terminals.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SETEXT = re.compile(r"^\s*(=+|-+)\s*$")


@dataclass(frozen=True)
class CatalogFile:
    """One file of a version: its path inside the dataset, its size, and its columns when it
    is tabular and they could be read (`note` says why not)."""

    path: str
    bytes: int
    columns: tuple[str, ...] | None = None
    note: str = ""


@dataclass(frozen=True)
class Catalog:
    """What one version holds. `available` is False once its files are removed."""

    available: bool
    description: str = ""
    readme: str = ""
    readme_file: str = ""
    readme_truncated: bool = False
    files: tuple[CatalogFile, ...] = ()
    #: More files than `MAX_FILES_LISTED`: the listing stops there.
    files_not_listed: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"available": self.available, "description": self.description,
                "readme": self.readme, "readme_file": self.readme_file,
                "readme_truncated": self.readme_truncated,
                "files": [{"path": f.path, "bytes": f.bytes,
                           "columns": list(f.columns) if f.columns is not None else None,
                           "note": f.note} for f in self.files],
                "files_not_listed": self.files_not_listed}


_cache: OrderedDict[tuple[str, str], Catalog] = OrderedDict()
_lock = threading.Lock()


def read_catalog(root: Path, digest: str) -> Catalog:
    """The catalog of the version whose files are under `root` with `digest` (cached)."""
    key = (str(root), digest)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    if not root.is_dir() or root.is_symlink():
        return Catalog(available=False)
    catalog = _build(root)
    with _lock:
        _cache[key] = catalog
        while len(_cache) > _CACHED:
            _cache.popitem(last=False)
    return catalog


def _build(root: Path) -> Catalog:
    found, more = _regular_files(root)
    files: list[CatalogFile] = []
    tabular_read = 0
    for relative, size in found:
        suffix = Path(relative).suffix.lower()
        if suffix in _DELIMITERS or suffix == ".parquet":
            if tabular_read >= MAX_TABULAR_READ:
                files.append(CatalogFile(relative, size, None, f"columns not read (only the "
                                         f"first {MAX_TABULAR_READ} tabular files are)"))
                continue
            tabular_read += 1
            columns, note = (_parquet_columns(root / relative) if suffix == ".parquet"
                             else _header_columns(root / relative, _DELIMITERS[suffix]))
            files.append(CatalogFile(relative, size, columns, note))
        else:
            files.append(CatalogFile(relative, size))
    readme_file = _readme_name([f for f, _ in found])
    readme, truncated = ("", False)
    if readme_file:
        readme, truncated = _text_prefix(root / readme_file, MAX_README_BYTES)
    return Catalog(available=True, description=description_of(readme), readme=readme,
                   readme_file=readme_file, readme_truncated=truncated, files=tuple(files),
                   files_not_listed=more)


def _regular_files(root: Path) -> tuple[list[tuple[str, int]], bool]:
    """(relative path, size) of the regular files below `root`, sorted, at most
    `MAX_FILES_LISTED`; and whether there were more. Links are never followed."""
    found: list[tuple[str, int]] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(directory, name)
            try:
                info = path.lstat()
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            if len(found) == MAX_FILES_LISTED:
                return found, True
            found.append((path.relative_to(root).as_posix(), info.st_size))
    return found, False


def _readme_name(paths: list[str]) -> str:
    top = {p.lower(): p for p in paths if "/" not in p}
    return next((top[n] for n in README_NAMES if n in top), "")


def _prefix(path: Path, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes from the start of the regular file `path` (never through a
    link, never blocking on a special file), and whether the file goes on past them."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b"", False
        chunks: list[bytes] = []
        wanted = limit + 1  # one byte past the limit says whether there is more
        while wanted > 0:
            chunk = os.read(fd, min(wanted, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            wanted -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return data[:limit], len(data) > limit


def _clean(text: str) -> str:
    return _CONTROL.sub("\ufffd", text)


def _text_prefix(path: Path, limit: int) -> tuple[str, bool]:
    try:
        data, more = _prefix(path, limit)
    except OSError:
        return "", False
    return _clean(data.decode("utf-8", errors="replace").removeprefix("\ufeff")), more


def _header_columns(path: Path, delimiter: str) -> tuple[tuple[str, ...] | None, str]:
    """The column names on the first line of a CSV or TSV file, read from a bounded prefix."""
    try:
        data, more = _prefix(path, MAX_HEADER_BYTES)
    except OSError as exc:
        return None, f"columns not read ({exc.strerror})"
    end = data.find(b"\n")
    if end < 0 and more:
        return None, (f"columns not read: the first line is longer than "
                      f"{MAX_HEADER_BYTES // 1024} KiB")
    line = (data if end < 0 else data[:end]).decode("utf-8", errors="replace")
    line = line.removeprefix("\ufeff").rstrip("\r")
    if not line.strip():
        return None, "no header line"
    try:
        names = next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error as exc:
        return None, f"columns not read ({exc})"
    note = ""
    if len(names) > MAX_COLUMNS:
        note = f"the first {MAX_COLUMNS} of {len(names)} columns"
        names = names[:MAX_COLUMNS]
    return tuple(_clean(n.strip())[:MAX_COLUMN_CHARS] for n in names), note


def _parquet_columns(path: Path) -> tuple[tuple[str, ...] | None, str]:
    """The schema's field names, read from the file's footer, when pyarrow is installed."""
    if importlib.util.find_spec("pyarrow") is None:
        return None, "columns not read (pyarrow is not installed)"
    parquet: Any = importlib.import_module("pyarrow.parquet")
    try:
        names = list(parquet.read_schema(str(path)).names)
    except Exception as exc:  # noqa: BLE001  # a damaged file is listed without its columns
        return None, f"columns not read ({type(exc).__name__})"
    note = f"the first {MAX_COLUMNS} of {len(names)} columns" if len(names) > MAX_COLUMNS else ""
    return tuple(_clean(str(n))[:MAX_COLUMN_CHARS] for n in names[:MAX_COLUMNS]), note


def description_of(readme: str) -> str:
    """The README's first paragraph that is not a heading, on one line."""
    for paragraph in re.split(r"\n\s*\n", readme):
        lines = [line.strip() for line in paragraph.strip().splitlines()]
        # a setext heading (a line underlined with === or ---) and ATX headings (# ...)
        if len(lines) >= 2 and _SETEXT.match(lines[1]):
            lines = lines[2:]
        lines = [line for line in lines if line and not line.startswith("#")]
        if lines:
            text = " ".join(lines)
            if len(text) > MAX_DESCRIPTION_CHARS:
                text = text[:MAX_DESCRIPTION_CHARS].rsplit(" ", 1)[0] + " …"
            return text
    return ""
