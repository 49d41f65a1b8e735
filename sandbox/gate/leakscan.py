"""Dataset leak scan: finds any record (row) of a mounted dataset in an output, verbatim,
with its fields re-joined, or under encodings and compression an insider might use to hide it.

Owns the record index, built once per request from the dataset directories, and the streaming
scan of a released file, text or binary, in fixed-size chunks so memory stays bounded.

What the scan finds, and how (each hit names its `encoding`, a chain of the gate's own words):

- Verbatim rows, anywhere (encoding ""): the sampled three-stage index described on
  `LeakScanner`, at the speed of the disk on weights.
- Rows with their fields re-joined ("re-joined fields"): each row is also indexed by its
  squeezed form, only its ASCII letters and digits, lower-cased, when that is at least
  max(min_row_bytes, 16) long; every run of text (at least 16 printable ASCII bytes) in the
  output, and in anything decoded from it, is squeezed the same way and scanned. Only runs of
  text are squeezed, never binary, so the letters and digits that random weights happen to hold
  are never strung together into a false match.
- Rows under base64 (standard or URL-safe, padded or not, at any of the 4 alignments of the
  run), base32, hex (either case), UTF-16 LE/BE (of ASCII text), URL and JSON string escaping:
  every run of text is searched for runs of each alphabet long enough to encode a row; each is
  decoded and the result scanned again, verbatim and squeezed.
- Rows in gzip, zlib, bz2, xz and zip (deflate) streams that start anywhere in the file: the
  magic bytes of each are found with numpy, checked on their header, then decompressed in steps
  of at most DECODE_STEP bytes, and the output scanned in windows of DECODE_WINDOW bytes.
- Both recursively, to `DecodeLimits.depth` steps (default 3: e.g. "base64 > gzip > hex").

Failing closed: a compressed stream whose output passes `DecodeLimits.stream_bytes`, or which
takes the file's total decompressed bytes past `DecodeLimits.file_bytes`, is not decompressed
further; the scan reports it as a finding ("a gzip stream at byte N expands past the scan's
limit") so the check fails rather than pass what it did not read. The same goes for a stream
nested in a decoded window (say gzip inside base64) whose input runs past the window the scan
holds (runs of text up to SCAN_CHUNK bytes are decoded whole).

Residual, by design: rows shorter than about 12 bytes are found only verbatim (the shortest run
of text the decoders look at is 16 bytes); UTF-16 of non-ASCII text, raw deflate outside a zip
entry, zip entries compressed with methods other than deflate, bzip2 and xz, encryption, and
any encoding not listed above are not undone; a row's decoded hits are reported once per
encoding chain, not at every occurrence, and a row found several ways is reported the best way
(whole before re-joined, then the shortest chain). UTF-16 text with a NUL or an optional
character at both ends reads both ways and may be reported as both LE and BE. Offsets of
decoded hits are those of the outermost run, which may take in a few neighbouring bytes of its
alphabet; a run longer than SCAN_CHUNK is decoded in overlapping pieces, each placed at its start.

Cost: on binary output only words of 8 ASCII bytes and the bytes that may start a stream are
looked at closer; `make bench` prints the decoding scan's MB/s beside the verbatim one.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from sandbox.gate.decoding import (
    HEADER_BYTES,
    MIN_TEXT_RUN,
    Inflation,
    compressed_starts,
    inflate,
    text_runs,
    transcodings,
)
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
#: Squeezed rows (letters and digits only) shorter than this are not indexed: shorter ones
#: would match by chance in ordinary text.
SQUEEZE_MIN = 16
#: Decompressed output is scanned in windows of this many bytes...
DECODE_WINDOW = 4 << 20
#: ... and taken from a decompressor at most this many bytes at a time.
DECODE_STEP = 1 << 20
#: Bytes of compressed input read from the file per step.
INFLATE_READ = 1 << 20
#: The first bytes of a possible compressed stream tried alone: most candidates fail on them.
PROBE_BYTES = 256
#: The widest encoding of one byte the decoders undo (JSON's \u00XX).
_WIDEST = 6
#: A stream cut by its window is reported once it has given this much: a false candidate (random
#: bytes that pass a header check) near a window's edge also runs out of input, but gives less.
_CUT_MIN = 1024
_PAD = 16  # zero bytes after every buffer so 8-byte loads near its end stay inside it
_TAIL = max(_PAD, HEADER_BYTES)  # zero bytes after a buffer the decoders read

_C1 = np.uint64(0x9E3779B97F4A7C15)
_C2 = np.uint64(0xC2B2AE3D27D4EB4F)

REJOINED = "re-joined fields"


def _mask(nbytes: int) -> np.uint64:
    return np.uint64((1 << (8 * nbytes)) - 1)


def _bits_for(count: int, per_item: int) -> int:
    """log2 of a bitmap size giving about `per_item` bits per item, within sane bounds."""
    return min(30, max(16, (max(count, 1) * per_item - 1).bit_length()))


def _digest(data: bytes | memoryview) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@dataclass(frozen=True)
class DecodeLimits:
    """How far the scan decodes: nesting depth, and decompressed bytes per stream and per file."""

    depth: int = 3
    stream_bytes: int = 256 << 20
    file_bytes: int = 1 << 30
    #: Runs of text decoded per file (at every depth). Each costs about a millisecond of
    #: Python, so a file crafted as endless short runs would hold the gate for hours; past
    #: this the file is refused unscanned (weights hold a few hundred such runs per GiB).
    text_runs: int = 10_000


@dataclass(frozen=True)
class LeakHit:
    """One dataset record found in an output: where, and which record (never its content).

    A hit with `unscanned` set is no record but a stream the scan refused to read to its end
    ("stream": past the per-stream limit, "file": past the per-file limit, "window": nested
    in a decoded window it runs past); `length` is then that limit, in bytes.
    """

    offset: int  # byte offset of the record in the scanned file, or of the outermost encoded run
    length: int  # bytes matched (in the decoded text, when encoded)
    dataset: str
    source: str  # the dataset file, relative to the dataset directory
    line: int  # 1-based line number of the record in that file
    encoding: str = ""  # "" verbatim, else the chain of decodings, outermost first
    unscanned: str = ""

    @property
    def record(self) -> str:
        return f"line {self.line} of {self.source} in dataset '{self.dataset}'"

    def describe(self) -> str:
        if self.unscanned == "stream":
            return (f"a {self.encoding} stream at byte {self.offset:,} expands past the scan's "
                    f"limit of {self.length:,} bytes per stream, so it was not read to its end")
        if self.unscanned == "file":
            return (f"a {self.encoding} stream at byte {self.offset:,} expands past the scan's "
                    f"limit of {self.length:,} decompressed bytes per file, so it was not read "
                    f"to its end")
        if self.unscanned == "runs":
            return (f"holds more than {self.length:,} runs of text for the scan to decode (the "
                    f"first past it at byte {self.offset:,}), so it was not read to its end")
        if self.unscanned == "window":
            return (f"a {self.encoding} stream at byte {self.offset:,} runs past the "
                    f"{self.length:,}-byte window the scan decodes it in, so it was not read to "
                    f"its end")
        if not self.encoding:
            return f"at byte {self.offset:,}: {self.length} bytes equal to {self.record}"
        return (f"at byte {self.offset:,}, under {self.encoding}: {self.length} bytes equal to "
                f"{self.record}")

    @property
    def chain(self) -> tuple[str, ...]:
        return tuple(self.encoding.split(" > ")) if self.encoding else ()


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


#: (offset, length, file id, line) of one record found in a buffer.
_Found = tuple[int, int, int, int]


class _Index:
    """Rows of at least `shape.prefix` bytes, and the sampled three-stage search for them (see
    `LeakScanner`). The scanner keeps two: rows as they are, and rows squeezed."""

    def __init__(self, shape: _Shape, key_bits: int, key_bitmap: npt.NDArray[np.uint8],
                 prefix_keys: U64, lengths: npt.NDArray[np.uint32], digests: U64,
                 file_ids: npt.NDArray[np.uint32], lines: npt.NDArray[np.uint32]) -> None:
        self.shape = shape
        self._key_shift = np.uint64(64 - key_bits)
        self._key_bitmap = key_bitmap
        prefix_bits = _bits_for(prefix_keys.size, 64)
        self._prefix_shift = np.uint64(64 - prefix_bits)
        self._prefix_bitmap = np.zeros(1 << (prefix_bits - 3), dtype=np.uint8)
        _bitmap_set(self._prefix_bitmap, prefix_keys >> self._prefix_shift)
        self._prefix_keys = prefix_keys
        self.lengths = lengths
        self._digests = digests
        self.file_ids = file_ids
        self.lines = lines
        self.max_record = int(lengths.max()) if lengths.size else 0

    def find_in(self, data: bytes | bytearray | memoryview) -> list[_Found]:
        """Every record in `data` (copied once, to pad it)."""
        if len(data) < self.shape.prefix or not self.lengths.size:
            return []
        buffer = bytearray(len(data) + _PAD)
        buffer[:len(data)] = data
        return self.find(buffer, len(data), 0)

    def find(self, buffer: bytearray, end: int, new_from: int) -> list[_Found]:
        """Records lying in buffer[:end] and ending after `new_from` (the part not yet seen)."""
        shape = self.shape
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
        hits: list[_Found] = []
        view = memoryview(buffer)
        for start, lo, hi in zip(starts.tolist(), low.tolist(), high.tolist(), strict=True):
            hits.extend(self._confirm(view, start, lo, hi, end, new_from))
        view.release()
        return hits

    def _confirm(self, view: memoryview, start: int, lo: int, hi: int, end: int,
                 new_from: int) -> Iterator[_Found]:
        lengths = self.lengths
        i = lo
        while i < hi:
            length = int(lengths[i])
            run_end = i + int(np.searchsorted(lengths[i:hi], length, side="right"))
            stop = start + length
            if new_from < stop <= end:
                digest = np.uint64(_digest(view[start:stop]))
                j = i + int(np.searchsorted(self._digests[i:run_end], digest))
                if j < run_end and self._digests[j] == digest:
                    yield start, length, int(self.file_ids[j]), int(self.lines[j])
            i = run_end


class _IndexBuilder:
    """Collects rows block by block into an `_Index`."""

    def __init__(self, min_row_bytes: int, total_bytes: int) -> None:
        self.shape = _Shape.for_min_row(min_row_bytes)
        self.min_row_bytes = min_row_bytes
        self.key_bits = _bits_for(total_bytes, 2)
        self.key_bitmap = np.zeros(1 << (self.key_bits - 3), dtype=np.uint8)
        self._key_shift = np.uint64(64 - self.key_bits)
        self._parts: list[tuple[U64, npt.NDArray[np.uint32], U64, npt.NDArray[np.uint32],
                                npt.NDArray[np.uint32]]] = []

    def add(self, block: bytes, first_line: int, file_id: int) -> None:
        part = _index_block(block, first_line, self.shape, self.min_row_bytes)
        if part is None:
            return
        keys, prefix, lengths, digests, lines = part
        _bitmap_set(self.key_bitmap, (keys * _C1) >> self._key_shift)
        self._parts.append((prefix, lengths, digests, lines,
                            np.full(lines.size, file_id, dtype=np.uint32)))

    def finish(self) -> _Index:
        parts = self._parts
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
        return _Index(self.shape, self.key_bits, self.key_bitmap, prefix, lengths, digests,
                      file_ids, lines)


def _alnum(data: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Where `data` holds an ASCII letter or digit (arithmetic, faster than a table here)."""
    letter: npt.NDArray[np.bool_] = ((data | np.uint8(0x20)) - np.uint8(97)) < 26
    digit: npt.NDArray[np.bool_] = (data - np.uint8(48)) < 10
    return letter | digit


def _squeeze_lines(block: bytes) -> bytes:
    """Each line of `block` reduced to its letters and digits, lower-cased (lines kept)."""
    data = np.frombuffer(block, dtype=np.uint8)
    keep = _alnum(data) | (data == 10)
    squeezed: npt.NDArray[np.uint8] = data[keep] | np.uint8(0x20)  # '\n' | 0x20 is '*'
    squeezed[squeezed == 0x2A] = 10
    return squeezed.tobytes()


class LeakScanner:
    """An index of every dataset record of at least `min_row_bytes`, and the scan against it.

    How it stays fast (numpy, no per-byte Python): every indexed row has at least P bytes
    (P = min(min_row_bytes, 16)). The output is sampled only every S-th byte with an A-byte
    key, and each row puts the S keys at its offsets 0..S-1 in a bitmap (A + S - 1 <= P), so any
    occurrence of a row lands one of its keys on a sampled position. A sampled hit is confirmed
    on the P-byte prefix fingerprint at the S row starts it allows, and a prefix hit on the
    whole row (length and 64-bit BLAKE2b digest). Binary output such as weights almost never
    passes the first, cheapest stage; text in the dataset's own style is the slow case.

    The decoding scan (see the module's docstring) runs beside it, on runs of text and on
    compressed streams only, which binary weights seldom hold.
    """

    def __init__(self, exact: _Index, squeezed: _Index, min_row_bytes: int,
                 sources: list[tuple[str, str]], skipped: list[tuple[str, str]]) -> None:
        self._exact = exact
        self._squeezed = squeezed
        self.min_row_bytes = min_row_bytes
        #: (dataset, relative path) of every indexed file, by file id.
        self.sources = sources
        #: (dataset, relative path) of files not indexed because they are binary.
        self.skipped = skipped
        self.max_record = exact.max_record

    @property
    def records(self) -> int:
        """Distinct records indexed."""
        return int(self._exact.lengths.size)

    # --- building -------------------------------------------------------------------------

    @classmethod
    def from_datasets(cls, datasets: Mapping[str, Path], min_row_bytes: int = 16) -> LeakScanner:
        """Index every text file under each dataset directory (symlinks are not followed).

        The first line of each file (its header) and rows shorter than `min_row_bytes` are
        left out; duplicate rows are kept once, under their first file and line.
        """
        if min_row_bytes < 1:
            raise ValueError("min_row_bytes must be at least 1")
        files: list[tuple[str, str, Path]] = []
        for name, root in sorted(datasets.items()):
            files.extend((name, rel, path) for rel, path in _dataset_files(name, root))
        total = sum(_size(path, name) for name, _, path in files)
        exact = _IndexBuilder(min_row_bytes, total)
        squeezed = _IndexBuilder(max(min_row_bytes, SQUEEZE_MIN), total)
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
                        exact.add(block, first_line, file_id)
                        squeezed.add(_squeeze_lines(block), first_line, file_id)
            except OSError as exc:
                raise DatasetUnreadable(f"dataset '{name}' cannot be read for the leak scan",
                                        detail=f"{path}: {exc}") from exc
        return cls(exact.finish(), squeezed.finish(), min_row_bytes, sources, skipped)

    # --- scanning -------------------------------------------------------------------------

    def scan_file(self, path: Path, *, max_hits: int = 100, decode: bool = True,
                  limits: DecodeLimits | None = None) -> list[LeakHit]:
        """Every indexed record found in the file (the first `max_hits`), in file order.

        A large file is cut into one byte range per core, scanned in parallel threads (numpy
        releases the GIL); each range owns the records that end inside it. With `decode`, each
        range is also scanned for encoded and compressed records (the module's docstring).
        """
        size = path.stat().st_size
        if not self.records or size == 0:
            return []
        workers = max(1, min(SCAN_THREADS, size // (4 * SCAN_CHUNK)))
        bounds = [size * i // workers for i in range(workers + 1)]
        job = _DecodeJob(self, limits or DecodeLimits(), max_hits, _file_pieces(path), size)

        def verbatim(i: int) -> list[LeakHit]:
            return self._scan_range(path, bounds[i], bounds[i + 1], max_hits)

        def decoded(i: int) -> list[LeakHit]:
            with path.open("rb") as handle:
                job.scan_range(handle, bounds[i], bounds[i + 1])
            return []

        tasks: list[Callable[[int], list[LeakHit]]] = [verbatim]
        if decode:
            tasks.append(decoded)
        if workers == 1:
            hits = [hit for task in tasks for hit in task(0)]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="leakscan") as pool:
                parts = pool.map(lambda arg: arg[0](arg[1]),
                                 [(task, i) for task in tasks for i in range(workers)])
                hits = [hit for part in parts for hit in part]
        return _merge(hits, job.hits() if decode else [], max_hits)

    def scan_bytes(self, data: bytes, *, max_hits: int = 100, decode: bool = True,
                   limits: DecodeLimits | None = None) -> list[LeakHit]:
        """Every indexed record found in `data` (offsets are into `data`)."""
        if not self.records or not data:
            return []
        hits = self._scan_stream(io.BytesIO(data), 0, len(data), max_hits)
        if not decode:
            return hits
        job = _DecodeJob(self, limits or DecodeLimits(), max_hits, _bytes_pieces(data),
                         len(data))
        job.scan_range(io.BytesIO(data), 0, len(data))
        return _merge(hits, job.hits(), max_hits)

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
            hits.extend(self._hit(found, base) for found in self._exact.find(buffer, end, kept))
            position += got
            carry = min(overlap, end)
            buffer[:carry] = buffer[end - carry:end]
            base += end - carry
            kept = carry
        view.release()
        return hits

    def _hit(self, found: _Found, offset: int, encoding: str = "") -> LeakHit:
        start, length, file_id, line = found
        dataset, source = self.sources[file_id]
        return LeakHit(offset=offset + start, length=length, dataset=dataset, source=source,
                       line=line, encoding=encoding)

    def _squeezed_in(self, text: bytes) -> list[_Found]:
        """Records whose squeezed form lies in the squeezed `text`; offsets and lengths are
        mapped back to `text`."""
        if len(text) < SQUEEZE_MIN or not self._squeezed.lengths.size:
            return []
        data = np.frombuffer(text, dtype=np.uint8)
        where = np.flatnonzero(_alnum(data))
        if where.size < self._squeezed.shape.prefix:
            return []
        squeezed = data[where] | np.uint8(0x20)
        found = []
        for start, length, file_id, line in self._squeezed.find_in(squeezed.tobytes()):
            first, last = int(where[start]), int(where[start + length - 1])
            found.append((first, last + 1 - first, file_id, line))
        return found


def _merge(verbatim: list[LeakHit], decoded: list[LeakHit], max_hits: int) -> list[LeakHit]:
    """Verbatim and decoded hits in file order; of the ways one record was found, only the
    best are kept: a chain that finds the row whole over one that finds its fields re-joined
    (UTF-16 text is also its own characters re-joined by NULs), then the shorter chain."""
    hits = verbatim + decoded
    best: dict[tuple[str, str, int], tuple[bool, int]] = {}
    for hit in hits:
        key = (hit.dataset, hit.source, hit.line)
        best[key] = min(best.get(key, _rank(hit)), _rank(hit))
    kept = [hit for hit in hits
            if hit.unscanned or _rank(hit) == best[(hit.dataset, hit.source, hit.line)]]
    return sorted(kept, key=lambda h: (h.offset, h.length, h.encoding))[:max_hits]


def _rank(hit: LeakHit) -> tuple[bool, int]:
    chain = hit.chain
    return (bool(chain) and chain[-1] == REJOINED, len(chain))


#: The bytes of the scanned file (or bytes) from an offset on, in pieces.
_Pieces = Callable[[int], Iterator[bytes]]


def _file_pieces(path: Path) -> _Pieces:
    def pieces(offset: int) -> Iterator[bytes]:
        with path.open("rb") as handle:
            handle.seek(offset)
            while piece := handle.read(INFLATE_READ):
                yield piece
    return pieces


def _bytes_pieces(data: bytes) -> _Pieces:
    def pieces(offset: int) -> Iterator[bytes]:
        view = memoryview(data)
        for at in range(offset, len(data), INFLATE_READ):
            yield bytes(view[at:at + INFLATE_READ])
    return pieces


class _DecodeJob:
    """The decoding scan of one file: its hits (one per record and encoding chain) and the
    decompressed bytes it has spent, shared by the threads scanning its ranges."""

    def __init__(self, scanner: LeakScanner, limits: DecodeLimits, max_hits: int,
                 pieces: _Pieces, size: int) -> None:
        self._scanner = scanner
        self._limits = limits
        self._max_hits = max_hits
        self._pieces = pieces
        self._size = size
        self._lock = threading.Lock()
        self._hits: dict[tuple[object, ...], LeakHit] = {}
        self._inflated = 0
        self._runs = 0
        self._min_row = min(scanner.min_row_bytes, scanner.max_record or 1)
        # Enough encoded bytes to hold any row whole at a seam between two pieces.
        self._overlap = _WIDEST * max(scanner.max_record, SQUEEZE_MIN) + 64

    def hits(self) -> list[LeakHit]:
        return list(self._hits.values())

    @property
    def full(self) -> bool:
        return len(self._hits) >= self._max_hits or self._runs > self._limits.text_runs

    def _add(self, hit: LeakHit) -> None:
        # One hit per record and chain; one finding per over-long stream, and one per file
        # for the per-file limit and for streams cut by their window.
        key: tuple[object, ...] = (
            (hit.encoding, hit.dataset, hit.source, hit.line) if not hit.unscanned
            else (hit.unscanned, hit.offset) if hit.unscanned == "stream"
            else (hit.unscanned,))
        with self._lock:
            known = self._hits.get(key)
            if known is None or hit.offset < known.offset:
                self._hits[key] = hit

    # --- the file ------------------------------------------------------------------------

    def scan_range(self, handle: BinaryIO, start: int, stop: int) -> None:
        """Runs of text and compressed streams of the range [start, stop): runs of text that
        start in it (read on past `stop` to finish one, up to SCAN_CHUNK bytes), with an
        overlap before `start` so a row at the seam is seen whole; streams that start in it."""
        size, chunk, overlap = self._size, SCAN_CHUNK, self._overlap
        base = max(0, start - overlap)
        handle.seek(base)
        carry = b""
        position = base
        streams_from = start
        while not self.full:
            piece = handle.read(min(chunk, size - position))
            position += len(piece)
            buffer = carry + piece
            end = len(buffer)
            more = position < size and position < stop + chunk
            data = np.frombuffer(buffer + bytes(_TAIL), dtype=np.uint8)
            deferred = None
            for run_start, run_stop in text_runs(data, end, MIN_TEXT_RUN):
                if more and run_stop == end and end - run_start <= chunk:
                    deferred = run_start  # seen whole in the next buffer
                    break
                if base + run_stop <= start and start > 0:
                    continue  # the previous range's
                cut = more and run_stop == end
                self.text(buffer[run_start:run_stop], (), self._limits.depth, base + run_start,
                          cut)
            if self._limits.depth > 0:
                last = end if not more else end - HEADER_BYTES
                low, high = max(streams_from - base, 0), min(last, stop - base)
                for at, kind in compressed_starts(data, low, high) if high > low else []:
                    self.stream(kind, self._from_buffer(buffer, at, base), (kind,),
                                self._limits.depth - 1, base + at, cut=False)
                streams_from = max(streams_from, base + high)
            if not more or (position >= stop and deferred is None and streams_from >= stop):
                break
            keep = end - deferred if deferred is not None else overlap
            keep = min(end, max(keep, HEADER_BYTES))  # stream starts not yet checked, too
            carry = buffer[end - keep:]
            base += end - keep

    def _from_buffer(self, buffer: bytes, at: int, base: int) -> Iterator[bytes]:
        """A stream's input: a small first piece (most candidates fail on it), the rest of
        the buffer, then the file after it."""
        yield buffer[at:at + PROBE_BYTES]
        if at + PROBE_BYTES < len(buffer):
            yield buffer[at + PROBE_BYTES:]
        if base + len(buffer) < self._size:
            yield from self._pieces(base + len(buffer))

    # --- what is decoded -----------------------------------------------------------------

    def text(self, text: bytes, chain: tuple[str, ...], depth: int, origin: int,
             cut: bool) -> None:
        """A run of text: squeezed against the squeezed rows, and every encoded run in it
        decoded (while depth lasts). Offsets are `origin` plus the position in `text` at the
        top level, and `origin` (the outermost run) under any encoding."""
        scanner = self._scanner
        with self._lock:
            self._runs += 1
            over = self._runs == self._limits.text_runs + 1
        if over:
            self._add(LeakHit(offset=origin, length=self._limits.text_runs, dataset="",
                              source="", line=0, encoding="text", unscanned="runs"))
        if self._runs > self._limits.text_runs:
            return
        for start, length, file_id, line in scanner._squeezed_in(text):
            found = (0, length, file_id, line)
            self._add(scanner._hit(found, origin + (0 if chain else start),
                                   " > ".join((*chain, REJOINED))))
        if depth <= 0:
            return
        for decoded in transcodings(text, self._min_row):
            if self.full:
                return
            self.decoded(decoded.data, (*chain, decoded.encoding), depth - 1,
                         origin + (0 if chain else decoded.offset), cut)

    def decoded(self, data: bytes, chain: tuple[str, ...], depth: int, origin: int,
                cut: bool) -> None:
        """Bytes decoded from an encoding or a stream: rows in them verbatim, their runs of
        text, and (while depth lasts) compressed streams in them."""
        scanner = self._scanner
        encoding = " > ".join(chain)
        for _, length, file_id, line in scanner._exact.find_in(data):
            self._add(scanner._hit((0, length, file_id, line), origin, encoding))
        array = np.frombuffer(data + bytes(_TAIL), dtype=np.uint8)
        for start, stop in text_runs(array, len(data), MIN_TEXT_RUN):
            self.text(data[start:stop], chain, depth, origin, cut and stop == len(data))
        if depth <= 0:
            return
        for at, kind in compressed_starts(array, 0, len(data)):
            pieces = iter((data[at:at + PROBE_BYTES], data[at + PROBE_BYTES:]))
            self.stream(kind, pieces, (*chain, kind), depth - 1, origin, cut)

    def stream(self, kind: str, pieces: Iterator[bytes], chain: tuple[str, ...], depth: int,
               origin: int, cut: bool) -> None:
        """One compressed stream, decompressed in steps and scanned in overlapping windows,
        within the per-stream and per-file limits."""
        limits = self._limits
        outcome = Inflation()
        window = bytearray()
        produced = 0
        over = ""
        for out in inflate(kind, pieces, DECODE_STEP, outcome):
            produced += len(out)
            with self._lock:
                self._inflated += len(out)
                spent = self._inflated
            if produced > limits.stream_bytes:
                over = "stream"
            elif spent > limits.file_bytes:
                over = "file"
            if over:
                keep = len(out) - (produced - limits.stream_bytes if over == "stream"
                                   else spent - limits.file_bytes)
                window += out[:max(keep, 0)]
                break
            window += out
            if len(window) >= DECODE_WINDOW:
                self.decoded(bytes(window), chain, depth, origin, True)
                if self.full:
                    return
                del window[:len(window) - self._overlap]
        if window:
            self.decoded(bytes(window), chain, depth, origin, cut)
        outer = chain[0] if len(chain) == 1 else " > ".join(chain)
        if over:
            limit = limits.stream_bytes if over == "stream" else limits.file_bytes
            self._add(LeakHit(offset=origin, length=limit, dataset="", source="", line=0,
                              encoding=outer, unscanned=over))
        elif cut and outcome.starved and produced >= _CUT_MIN:
            self._add(LeakHit(offset=origin, length=DECODE_WINDOW, dataset="", source="",
                              line=0, encoding=outer, unscanned="window"))


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
