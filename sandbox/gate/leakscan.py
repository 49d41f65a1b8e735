"""Dataset leak scan: finds any record (row) of a mounted dataset embedded verbatim in an output.

Owns the record index, built once per request from the dataset directories, and the streaming
scan of a released file, text or binary, in fixed-size chunks so memory stays bounded.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from sandbox.gate.errors import DatasetUnreadable

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

#: Rows longer than this are indexed (and looked for) by their first RECORD_CAP bytes.
RECORD_CAP = 64 << 10
#: Bytes of output scanned per step; the overlap with the previous step is one record at most.
SCAN_CHUNK = 4 << 20
#: Bytes of a dataset file read per step while indexing.
BUILD_CHUNK = 16 << 20
#: A file whose first SNIFF_BYTES hold a NUL byte is binary: it has no rows to index.
SNIFF_BYTES = 8192
#: Threads scanning one large file, each over its own byte range.
SCAN_THREADS = max(1, min(4, len(os.sched_getaffinity(0))))
_PAD = 16  # zero bytes after every buffer so 8-byte loads near its end stay inside it

_C1 = np.uint64(0x9E3779B97F4A7C15)
_C2 = np.uint64(0xC2B2AE3D27D4EB4F)


def _mask(nbytes: int) -> np.uint64:
    return np.uint64((1 << (8 * nbytes)) - 1)


def _bits_for(count: int, per_item: int) -> int:
    """log2 of a bitmap size giving about `per_item` bits per item, within sane bounds."""
    return min(30, max(16, (max(count, 1) * per_item - 1).bit_length()))


def _digest(data: bytes | memoryview) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@dataclass(frozen=True)
class LeakHit:
    """One dataset record found in an output: where, and which record (never its content)."""

    offset: int  # byte offset of the record in the scanned file
    length: int  # bytes matched
    dataset: str
    source: str  # the dataset file, relative to the dataset directory
    line: int  # 1-based line number of the record in that file

    @property
    def record(self) -> str:
        return f"line {self.line} of {self.source} in dataset '{self.dataset}'"

    def describe(self) -> str:
        return f"at byte {self.offset:,}: {self.length} bytes equal to {self.record}"


@dataclass(frozen=True)
class _Shape:
    """The sampling geometry derived from the minimum row length."""

    prefix: int  # P: bytes of each row's prefix fingerprint
    key: int  # A: bytes of the sampled key
    stride: int  # S: distance between sampled output positions

    @classmethod
    def for_min_row(cls, min_row_bytes: int) -> _Shape:
        prefix = min(min_row_bytes, 16)
        key = max(1, min(8, (prefix + 1) // 2))
        return cls(prefix=prefix, key=key, stride=max(1, min(8, prefix - key + 1)))


def _u64_at(buffer: npt.NDArray[np.uint8], stride: int = 1, offset: int = 0,
            count: int | None = None) -> U64:
    """Little-endian 8-byte words starting every `stride` bytes (unaligned, no copy)."""
    usable = buffer.size - 8 - offset
    n = usable // stride + 1 if count is None else count
    view: U64 = np.ndarray((max(n, 0),), dtype="<u8", buffer=buffer, offset=offset,
                           strides=(stride,))
    return view


def _bitmap_test(bitmap: npt.NDArray[np.uint8], index: U64) -> npt.NDArray[np.bool_]:
    byte = bitmap[(index >> np.uint64(3)).astype(np.intp)]
    return ((byte >> (index & np.uint64(7)).astype(np.uint8)) & np.uint8(1)).astype(np.bool_)


def _bitmap_set(bitmap: npt.NDArray[np.uint8], index: U64) -> None:
    np.bitwise_or.at(bitmap, (index >> np.uint64(3)).astype(np.intp),
                     np.left_shift(np.uint8(1), (index & np.uint64(7)).astype(np.uint8)))


class LeakScanner:
    """An index of every dataset record of at least `min_row_bytes`, and the scan against it.

    How it stays fast (numpy, no per-byte Python): every indexed row has at least P bytes
    (P = min(min_row_bytes, 16)). The output is sampled only every S-th byte with an A-byte
    key, and each row puts the S keys at its offsets 0..S-1 in a bitmap (A + S - 1 <= P), so any
    occurrence of a row lands one of its keys on a sampled position. A sampled hit is confirmed
    on the P-byte prefix fingerprint at the S row starts it allows, and a prefix hit on the
    whole row (length and 64-bit BLAKE2b digest). Binary output such as weights almost never
    passes the first, cheapest stage; text in the dataset's own style is the slow case.
    """

    def __init__(self, shape: _Shape, key_bits: int, key_bitmap: npt.NDArray[np.uint8],
                 prefix_bits: int, prefix_bitmap: npt.NDArray[np.uint8], prefix_keys: U64,
                 lengths: npt.NDArray[np.uint32], digests: U64, file_ids: npt.NDArray[np.uint32],
                 lines: npt.NDArray[np.uint32], sources: list[tuple[str, str]],
                 skipped: list[tuple[str, str]]) -> None:
        self._shape = shape
        self._key_shift = np.uint64(64 - key_bits)
        self._key_bitmap = key_bitmap
        self._prefix_shift = np.uint64(64 - prefix_bits)
        self._prefix_bitmap = prefix_bitmap
        self._prefix_keys = prefix_keys
        self._lengths = lengths
        self._digests = digests
        self._file_ids = file_ids
        self._lines = lines
        #: (dataset, relative path) of every indexed file, by file id.
        self.sources = sources
        #: (dataset, relative path) of files not indexed because they are binary.
        self.skipped = skipped
        self.max_record = int(lengths.max()) if lengths.size else 0

    @property
    def records(self) -> int:
        """Distinct records indexed."""
        return int(self._lengths.size)

    # --- building -------------------------------------------------------------------------

    @classmethod
    def from_datasets(cls, datasets: Mapping[str, Path], min_row_bytes: int = 16) -> LeakScanner:
        """Index every text file under each dataset directory (symlinks are not followed).

        The first line of each file (its header) and rows shorter than `min_row_bytes` are
        left out; duplicate rows are kept once, under their first file and line.
        """
        if min_row_bytes < 1:
            raise ValueError("min_row_bytes must be at least 1")
        shape = _Shape.for_min_row(min_row_bytes)
        files: list[tuple[str, str, Path]] = []
        for name, root in sorted(datasets.items()):
            files.extend((name, rel, path) for rel, path in _dataset_files(name, root))
        total = sum(_size(path, name) for name, _, path in files)
        key_bits = _bits_for(total, 2)
        key_bitmap = np.zeros(1 << (key_bits - 3), dtype=np.uint8)
        key_shift = np.uint64(64 - key_bits)
        parts: list[tuple[U64, npt.NDArray[np.uint32], U64, npt.NDArray[np.uint32],
                          npt.NDArray[np.uint32]]] = []
        sources: list[tuple[str, str]] = []
        skipped: list[tuple[str, str]] = []
        for name, rel, path in files:
            try:
                with path.open("rb") as handle:
                    if b"\0" in handle.read(SNIFF_BYTES):
                        skipped.append((name, rel))
                        continue
                    handle.seek(0)
                    file_id = len(sources)
                    sources.append((name, rel))
                    for block, first_line in _line_blocks(handle):
                        part = _index_block(block, first_line, shape, min_row_bytes)
                        if part is None:
                            continue
                        keys, prefix, lengths, digests, lines = part
                        _bitmap_set(key_bitmap, (keys * _C1) >> key_shift)
                        parts.append((prefix, lengths, digests, lines,
                                      np.full(lines.size, file_id, dtype=np.uint32)))
            except OSError as exc:
                raise DatasetUnreadable(f"dataset '{name}' cannot be read for the leak scan",
                                        detail=f"{path}: {exc}") from exc
        if parts:
            prefix = np.concatenate([p[0] for p in parts])
            lengths = np.concatenate([p[1] for p in parts])
            digests = np.concatenate([p[2] for p in parts])
            lines = np.concatenate([p[3] for p in parts])
            file_ids = np.concatenate([p[4] for p in parts])
        else:
            prefix, digests = np.zeros(0, np.uint64), np.zeros(0, np.uint64)
            lengths = lines = file_ids = np.zeros(0, np.uint32)
        # Sort by (prefix, length, digest), stable so the first occurrence of a row wins.
        order = np.lexsort((digests, lengths, prefix))
        prefix, lengths, digests = prefix[order], lengths[order], digests[order]
        lines, file_ids = lines[order], file_ids[order]
        if prefix.size:
            first = np.ones(prefix.size, dtype=np.bool_)
            first[1:] = ((prefix[1:] != prefix[:-1]) | (lengths[1:] != lengths[:-1])
                         | (digests[1:] != digests[:-1]))
            prefix, lengths, digests = prefix[first], lengths[first], digests[first]
            lines, file_ids = lines[first], file_ids[first]
        prefix_bits = _bits_for(prefix.size, 64)
        prefix_bitmap = np.zeros(1 << (prefix_bits - 3), dtype=np.uint8)
        _bitmap_set(prefix_bitmap, prefix >> np.uint64(64 - prefix_bits))
        return cls(shape, key_bits, key_bitmap, prefix_bits, prefix_bitmap, prefix, lengths,
                   digests, file_ids, lines, sources, skipped)

    # --- scanning -------------------------------------------------------------------------

    def scan_file(self, path: Path, *, max_hits: int = 100) -> list[LeakHit]:
        """Every indexed record found in the file (the first `max_hits`), in file order.

        A large file is cut into one byte range per core, scanned in parallel threads (numpy
        releases the GIL); each range owns the records that end inside it.
        """
        size = path.stat().st_size
        if not self.records or size == 0:
            return []
        workers = max(1, min(SCAN_THREADS, size // (4 * SCAN_CHUNK)))
        bounds = [size * i // workers for i in range(workers + 1)]
        if workers == 1:
            hits = self._scan_range(path, 0, size, max_hits)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="leakscan") as pool:
                parts = pool.map(lambda i: self._scan_range(path, bounds[i], bounds[i + 1],
                                                            max_hits), range(workers))
                hits = [hit for part in parts for hit in part]
        return sorted(hits, key=lambda h: (h.offset, h.length))[:max_hits]

    def scan_bytes(self, data: bytes, *, max_hits: int = 100) -> list[LeakHit]:
        """Every indexed record found in `data` (offsets are into `data`)."""
        if not self.records or not data:
            return []
        return self._scan_stream(io.BytesIO(data), 0, len(data), max_hits)

    def _scan_range(self, path: Path, start: int, stop: int, max_hits: int) -> list[LeakHit]:
        with path.open("rb") as handle:
            return self._scan_stream(handle, start, stop, max_hits)

    def _scan_stream(self, handle: BinaryIO, start: int, stop: int,
                     max_hits: int) -> list[LeakHit]:
        """Records of the stream that end in (start, stop], reading one record back before
        start so a record straddling it is seen whole."""
        hits: list[LeakHit] = []
        overlap = self.max_record - 1
        buffer = bytearray(overlap + SCAN_CHUNK + _PAD)
        view = memoryview(buffer)
        lead = min(overlap, start)
        handle.seek(start - lead)
        kept = _read_into(handle, view[:lead])
        base, position = start - kept, start
        while position < stop and len(hits) < max_hits:
            got = _read_into(handle, view[kept:kept + min(SCAN_CHUNK, stop - position)])
            if got == 0:
                break
            end = kept + got
            view[end:end + _PAD] = bytes(_PAD)
            hits.extend(self._scan_buffer(buffer, end, kept, base))
            position += got
            carry = min(overlap, end)
            buffer[:carry] = buffer[end - carry:end]
            base += end - carry
            kept = carry
        view.release()
        return hits

    def _scan_buffer(self, buffer: bytearray, end: int, new_from: int,
                     base: int) -> list[LeakHit]:
        """Records lying in buffer[:end] and ending after `new_from` (the part not yet seen)."""
        shape = self._shape
        if end < shape.prefix:
            return []
        data = np.frombuffer(buffer, dtype=np.uint8)
        # Stage 1: an A-byte key every S bytes, against a bitmap of every row's first S keys.
        positions = (end - shape.key) // shape.stride + 1
        keys = _u64_at(data, shape.stride, 0, positions)
        if shape.key < 8:
            keys = keys & _mask(shape.key)
        sampled = np.flatnonzero(_bitmap_test(self._key_bitmap, (keys * _C1) >> self._key_shift))
        if not sampled.size:
            return []
        # Stage 2: the S row starts each hit allows, on the P-byte prefix fingerprint.
        starts = (sampled[:, None] * shape.stride
                  - np.arange(shape.stride, dtype=np.intp)[None, :]).ravel()
        starts = starts[(starts >= 0) & (starts <= end - shape.prefix)]
        prefix = _prefix_key(data, starts, shape.prefix)
        maybe = _bitmap_test(self._prefix_bitmap, prefix >> self._prefix_shift)
        starts, prefix = starts[maybe], prefix[maybe]
        if not starts.size:
            return []
        keys = self._prefix_keys
        low = np.searchsorted(keys, prefix, side="left")
        found = keys[np.minimum(low, keys.size - 1)] == prefix
        if not found.any():
            return []
        starts, prefix, low = starts[found], prefix[found], low[found]
        high = np.searchsorted(keys, prefix, side="right")
        # Stage 3: whole rows (length + digest) for the rare exact prefix matches.
        hits: list[LeakHit] = []
        view = memoryview(buffer)
        for start, lo, hi in zip(starts.tolist(), low.tolist(), high.tolist(), strict=True):
            hits.extend(self._confirm(view, start, lo, hi, end, new_from, base))
        view.release()
        return hits

    def _confirm(self, view: memoryview, start: int, lo: int, hi: int, end: int,
                 new_from: int, base: int) -> Iterator[LeakHit]:
        lengths = self._lengths
        i = lo
        while i < hi:
            length = int(lengths[i])
            run_end = i + int(np.searchsorted(lengths[i:hi], length, side="right"))
            stop = start + length
            if new_from < stop <= end:
                digest = np.uint64(_digest(view[start:stop]))
                j = i + int(np.searchsorted(self._digests[i:run_end], digest))
                if j < run_end and self._digests[j] == digest:
                    dataset, source = self.sources[int(self._file_ids[j])]
                    yield LeakHit(offset=base + start, length=length, dataset=dataset,
                                  source=source, line=int(self._lines[j]))
            i = run_end


def _prefix_key(data: npt.NDArray[np.uint8], starts: npt.NDArray[np.intp], prefix: int) -> U64:
    """The P-byte prefix fingerprint at each start (P <= 16: two masked 8-byte words)."""
    words = _u64_at(data)
    low = words[starts]
    if prefix < 8:
        low = low & _mask(prefix)
    key: U64 = low * _C1
    if prefix > 8:
        high = words[starts + 8]
        if prefix < 16:
            high = high & _mask(prefix - 8)
        key ^= high * _C2
    return key


def _index_block(block: bytes, first_line: int, shape: _Shape, min_row_bytes: int) -> tuple[
        U64, U64, npt.NDArray[np.uint32], U64, npt.NDArray[np.uint32]] | None:
    """Keys, prefix fingerprints, lengths, digests and line numbers of a block's rows.

    `block` is whole lines, each ending in a newline; line `first_line` == 1 is a header.
    """
    data = np.frombuffer(block + bytes(_PAD), dtype=np.uint8)
    ends = np.flatnonzero(data[:len(block)] == 10)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    crlf = (ends > starts) & (data[ends - 1] == 13)
    ends = ends - crlf
    lengths = ends - starts
    lines = np.arange(first_line, first_line + ends.size, dtype=np.int64)
    keep = (lengths >= min_row_bytes) & (lines > 1)
    if not keep.any():
        return None
    starts, lengths, lines = starts[keep], np.minimum(lengths[keep], RECORD_CAP), lines[keep]
    words = _u64_at(data)
    keys = np.concatenate([words[starts + j] for j in range(shape.stride)])
    if shape.key < 8:
        keys &= _mask(shape.key)
    prefix = _prefix_key(data, starts, shape.prefix)
    rows = block.split(b"\n")
    blake2b = hashlib.blake2b
    digests = np.frombuffer(b"".join([
        blake2b(rows[i][:n], digest_size=8).digest()
        for i, n in zip(np.flatnonzero(keep).tolist(), lengths.tolist(), strict=True)]),
        dtype="<u8").astype(np.uint64)
    return (keys, prefix, lengths.astype(np.uint32), digests,
            np.minimum(lines, np.iinfo(np.uint32).max).astype(np.uint32))


def _line_blocks(handle: BinaryIO) -> Iterator[tuple[bytes, int]]:
    """Whole lines in blocks of about BUILD_CHUNK bytes, with the number of each block's first
    line; a line longer than RECORD_CAP comes as its first RECORD_CAP bytes (memory stays bounded).
    """
    carry, line, skipping = b"", 1, False
    while chunk := handle.read(BUILD_CHUNK):
        if skipping:  # the rest of an over-long line, already yielded truncated
            cut = chunk.find(b"\n")
            if cut < 0:
                continue
            chunk, line, skipping = chunk[cut + 1:], line + 1, False
        data = carry + chunk
        cut = data.rfind(b"\n") + 1
        if cut:
            yield data[:cut], line
            line += data.count(b"\n", 0, cut)
        carry = data[cut:]
        if len(carry) > RECORD_CAP:
            yield carry[:RECORD_CAP] + b"\n", line
            carry, skipping = b"", True
    if carry and not skipping:
        yield carry + b"\n", line


def _dataset_files(name: str, root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every regular file under a dataset, in a stable order."""
    if root.is_file() and not root.is_symlink():
        yield root.name, root
        return
    if not root.is_dir():
        raise DatasetUnreadable(f"dataset '{name}' is not available for the leak scan",
                                detail=f"{root} is not a directory")
    for folder, dirs, names in os.walk(root, onerror=_raise, followlinks=False):
        dirs.sort()
        for item in sorted(names):
            path = Path(folder) / item
            if path.is_file() and not path.is_symlink():
                yield path.relative_to(root).as_posix(), path


def _raise(exc: OSError) -> None:
    raise DatasetUnreadable("a dataset cannot be listed for the leak scan",
                            detail=str(exc)) from exc


def _size(path: Path, name: str) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise DatasetUnreadable(f"dataset '{name}' cannot be read for the leak scan",
                                detail=f"{path}: {exc}") from exc


def _read_into(handle: BinaryIO, target: memoryview) -> int:
    """Fill `target` from the stream as far as it goes; 0 only at end of file."""
    filled = 0
    while filled < len(target):
        got = handle.readinto(target[filled:])  # type: ignore[attr-defined]
        if not got:
            break
        filled += got
    return filled
