"""Decoders for the leak scan: where text and compressed streams lie in a buffer of bytes, and
what they decode to (base64, base32, hex, UTF-16, URL and JSON escapes; gzip, zlib, bz2, xz, zip).

Finding candidates is numpy over the whole buffer; only candidates that survive cheap checks
(a run of text, a compressed stream's header) reach Python, so binary weights cost little.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import lzma
import re
import struct
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]

#: The shortest run of text the decoders look at: the shortest encoding of a row they can find.
MIN_TEXT_RUN = 16

_HIGH = np.uint64(0x8080808080808080)
_LOW_0X60 = np.uint64(0x6060606060606060)
_LOW_0X01 = np.uint64(0x0101010101010101)


def _table(chars: bytes) -> npt.NDArray[np.bool_]:
    table = np.zeros(256, dtype=np.bool_)
    table[list(chars)] = True
    return table


_ALNUM = bytes(range(48, 58)) + bytes(range(65, 91)) + bytes(range(97, 123))
#: Bytes that may appear in a run of text: printable ASCII, tab, CR, LF, and NUL (so UTF-16
#: of ASCII text is one run).
TEXT = _table(bytes(range(0x20, 0x7F)) + b"\t\n\r\0")
_B64, _B32, _HEXBIT = 1, 2, 4
#: Which alphabets each byte belongs to (bits _B64, _B32, _HEXBIT): one lookup for all three.
_ALPHABETS = (_table(_ALNUM + b"+/-_").astype(np.uint8) * _B64
              | _table(bytes(range(65, 91)) + bytes(range(97, 123)) + b"234567").astype(
                  np.uint8) * _B32
              | _table(b"0123456789abcdefABCDEF").astype(np.uint8) * _HEXBIT)
_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")


def text_runs(data: U8, end: int, min_len: int = MIN_TEXT_RUN) -> list[tuple[int, int]]:
    """(start, stop) of every run of TEXT bytes in data[:end] at least `min_len` (>= 15) long.

    Any such run holds a whole aligned 8-byte word of text, so only words with no high bit set
    are looked at byte by byte; in random bytes that is one word in 256.
    """
    if min_len < 15:
        raise ValueError("text runs shorter than 15 bytes may hold no aligned word")
    whole = end // 8
    if whole == 0:
        return []
    words: npt.NDArray[np.uint64] = np.ndarray((whole,), dtype="<u8", buffer=data,
                                                 strides=(8,))
    ascii_words = (words & _HIGH) == 0
    candidates = np.flatnonzero(ascii_words)
    if not candidates.size:
        return []
    # Words of printable characters pass at once (each byte + 0x60 carries into its high bit,
    # none + 1 does: no control byte, no DEL); the rest (NUL, tab, newline) byte by byte.
    picked = words[candidates]
    printable = (((picked + _LOW_0X60) & _HIGH) == _HIGH) & (((picked + _LOW_0X01) & _HIGH) == 0)
    others = candidates[~printable]
    offsets = others[:, None] * 8 + np.arange(8)
    candidates = np.sort(np.concatenate((candidates[printable],
                                         others[TEXT[data[offsets]].all(axis=1)])))
    if not candidates.size:
        return []
    breaks = np.flatnonzero(np.diff(candidates) != 1)
    firsts = candidates[np.concatenate(([0], breaks + 1))].tolist()
    lasts = candidates[np.concatenate((breaks, [candidates.size - 1]))].tolist()
    runs = []
    for first, last in zip(firsts, lasts, strict=True):
        start = first * 8
        while start > 0 and TEXT[data[start - 1]]:  # at most 7 steps: the word before fails
            start -= 1
        stop = last * 8 + 8
        while stop < end and TEXT[data[stop]]:
            stop += 1
        if stop - start >= min_len:
            runs.append((start, stop))
    return runs


def _class_runs(mask: npt.NDArray[np.bool_], min_len: int) -> list[tuple[int, int]]:
    """(start, stop) of every run of True in `mask` at least `min_len` long."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).view(np.int8)))
    starts, stops = edges[0::2], edges[1::2]
    long = (stops - starts) >= min_len
    return list(zip(starts[long].tolist(), stops[long].tolist(), strict=True))


@dataclass(frozen=True)
class Decoded:
    """Text decoded from a run of encoded text: which encoding, where the run starts (in the
    text searched), and the bytes it decodes to."""

    encoding: str
    offset: int
    data: bytes


def transcodings(text: bytes, min_row: int) -> Iterator[Decoded]:
    """Every way a run of text may decode to a row of at least `min_row` bytes.

    Encoded runs are cut anywhere (a buffer's edge, a neighbour in the same alphabet), so
    base64 is tried at its 4 alignments, base32 at its 8 and hex at its 2; a trailing partial
    quantum is padded, so runs with or without padding decode alike.
    """
    data = np.frombuffer(text, dtype=np.uint8)
    alphabets = _ALPHABETS[data]
    yield from _base64(text, (alphabets & _B64) != 0, min_row)
    yield from _base32(text, (alphabets & _B32) != 0, min_row)
    yield from _hex(text, (alphabets & _HEXBIT) != 0, min_row)
    if b"\0" in text:
        yield from _utf16(data, min_row)
    if b"%" in text:
        unquoted = urllib.parse.unquote_to_bytes(text)
        if unquoted != text:
            yield Decoded("URL escaping", 0, unquoted)
    if b"\\" in text:
        unescaped = json_unescape(text)
        if unescaped != text:
            yield Decoded("JSON escaping", 0, unescaped)


def _base64(text: bytes, alphabet: npt.NDArray[np.bool_], min_row: int) -> Iterator[Decoded]:
    for start, stop in _class_runs(alphabet, -(-4 * min_row // 3)):
        run = text[start:stop].translate(_URLSAFE_TO_STD)
        for shift in range(4):
            quanta = run[shift:]
            whole, rest = divmod(len(quanta), 4)
            if rest == 1:
                quanta = quanta[:4 * whole]
            elif rest:
                quanta += b"=" * (4 - rest)
            try:
                decoded = binascii.a2b_base64(quanta)
            except binascii.Error:
                continue
            if len(decoded) >= min_row:
                yield Decoded("base64", start + shift, decoded)


_B32_FULL = {0: 0, 2: 6, 4: 4, 5: 3, 7: 1}  # chars in the last quantum -> '=' to add


def _base32(text: bytes, alphabet: npt.NDArray[np.bool_], min_row: int) -> Iterator[Decoded]:
    for start, stop in _class_runs(alphabet, -(-8 * min_row // 5)):
        run = text[start:stop].upper()
        for shift in range(8):
            quanta = run[shift:]
            rest = len(quanta) % 8
            while rest not in _B32_FULL:
                quanta, rest = quanta[:-1], rest - 1
            if not quanta:
                break
            try:
                decoded = base64.b32decode(quanta + b"=" * _B32_FULL[rest])
            except binascii.Error:
                continue
            if len(decoded) >= min_row:
                yield Decoded("base32", start + shift, decoded)


def _hex(text: bytes, alphabet: npt.NDArray[np.bool_], min_row: int) -> Iterator[Decoded]:
    for start, stop in _class_runs(alphabet, 2 * min_row):
        for shift in range(2):
            digits = text[start + shift:stop]
            decoded = bytes.fromhex(digits[:len(digits) // 2 * 2].decode("ascii"))
            yield Decoded("hex", start + shift, decoded)


def _utf16(data: U8, min_row: int) -> Iterator[Decoded]:
    """ASCII text as UTF-16: a NUL beside every character. Little-endian keeps the characters
    followed by a NUL, big-endian those preceded by one, so a neighbour byte is never taken in."""
    zero = data == 0
    alternating = np.concatenate((zero[1:] != zero[:-1], [False]))
    for start, stop in _class_runs(alternating, 2 * min_row - 1):
        stop += 1
        part, nul = data[start:stop], zero[start:stop]
        little = part[:-1][~nul[:-1] & nul[1:]].tobytes()
        big = part[1:][nul[:-1] & ~nul[1:]].tobytes()
        if little == big:  # NULs on both ends: either reading; a leading NUL says big-endian
            if len(big) >= min_row:
                yield Decoded("UTF-16BE" if nul[0] else "UTF-16LE", start, big)
            continue
        if len(little) >= min_row:
            yield Decoded("UTF-16LE", start, little)
        if len(big) >= min_row:
            yield Decoded("UTF-16BE", start, big)


_JSON_ESCAPE = re.compile(rb"\\(u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
                          rb"|u[0-9a-fA-F]{4}|[\"\\/bfnrt])")
_JSON_SIMPLE = {b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b", b"f": b"\f", b"n": b"\n",
                b"r": b"\r", b"t": b"\t"}


def json_unescape(text: bytes) -> bytes:
    """JSON string escapes undone (\\" \\n \\u00e9, surrogate pairs); anything else kept."""
    def one(match: re.Match[bytes]) -> bytes:
        body = match.group(1)
        if body[:1] != b"u":
            return _JSON_SIMPLE[body]
        units = [int(body[i:i + 4], 16) for i in range(1, len(body), 6)]
        chars = struct.pack(f">{len(units)}H", *units).decode("utf-16-be", "surrogatepass")
        return chars.encode("utf-8", "surrogatepass")
    return _JSON_ESCAPE.sub(one, text)


# --- compressed streams ---------------------------------------------------------------------

#: How many bytes past a stream's start its header checks read.
HEADER_BYTES = 40


def compressed_starts(data: U8, begin: int, end: int) -> list[tuple[int, str]]:
    """(offset, kind) of every place in data[begin:end] where a compressed stream may start.

    `data` must hold HEADER_BYTES readable bytes past `end` (zeros if the stream ends there).
    Each kind is checked on its header with numpy first (gzip flags, zlib's check bits and its
    first block type, bz2's block magic, the xz and zip signatures), so only real candidates are
    left to a decompressor.
    """
    found: list[tuple[int, str]] = []
    window = data[begin:end]
    if not window.size:
        return found
    # The first byte of the gzip, bz2, xz and zip signatures, in one pass...
    first = window == 0x1F
    for byte in (0x42, 0xFD, 0x50):
        first |= window == byte
    at = np.flatnonzero(first) + begin
    if at.size:
        value = data[at].astype(np.uint16) | (data[at + 1].astype(np.uint16) << 8)
        for signature, kind in _SIGNATURES.items():
            mine = at[value == signature]
            if mine.size:
                found.extend((int(p), kind) for p in mine[_header_ok(data, mine, kind)].tolist())
    # ... and zlib's CMF and FLG read as 16-bit words at even and at odd offsets: CMF says
    # deflate with a window of at most 32 KiB, FLG asks for no preset dictionary.
    for parity in (0, 1):
        count = (end - begin - parity + 1) // 2
        if count <= 0:
            continue
        pairs: npt.NDArray[np.uint16] = np.ndarray((count,), dtype="<u2", buffer=data,
                                                   offset=begin + parity, strides=(2,))
        mine = np.flatnonzero((pairs & 0x208F) == 0x0008) * 2 + (begin + parity)
        if mine.size:
            found.extend((int(p), "zlib") for p in _zlib_starts(data, mine).tolist())
    found.sort()
    return found


#: The first two bytes of each signature, as a little-endian 16-bit word.
_SIGNATURES = {0x8B1F: "gzip", 0x5A42: "bz2", 0x37FD: "xz", 0x4B50: "zip"}


def _zlib_starts(data: U8, at: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """FLG makes CMF*256+FLG a multiple of 31 and asks for no preset dictionary; the first
    deflate block is stored with LEN and NLEN complementary, fixed, or dynamic with counts in
    range and a complete code-length code (as zlib itself demands)."""
    cmf = data[at].astype(np.uint32)
    flg = data[at + 1].astype(np.uint32)
    at = at[((cmf * 256 + flg) % 31 == 0) & (flg & 0x20 == 0)]
    if not at.size:
        return at
    ok = np.zeros(at.size, dtype=np.bool_)
    low = _u64(data, at + 2)
    high = _u64(data, at + 10)
    block = (low >> np.uint64(1)) & np.uint64(3)
    stored = block == 0
    # Stored: the rest of the first byte is padding; LEN, NLEN follow at bytes 3..6.
    length = (low >> np.uint64(8)) & np.uint64(0xFFFF)
    nlength = (low >> np.uint64(24)) & np.uint64(0xFFFF)
    ok |= stored & ((length ^ nlength) == np.uint64(0xFFFF))
    ok |= block == 1
    dynamic = np.flatnonzero(block == 2)
    low, high = low[dynamic], high[dynamic]
    hlit = (low >> np.uint64(3)) & np.uint64(31)
    hdist = (low >> np.uint64(8)) & np.uint64(31)
    hclen = ((low >> np.uint64(13)) & np.uint64(15)) + np.uint64(4)
    kraft = np.zeros(dynamic.size, dtype=np.uint64)
    for i in range(19):
        bit = 17 + 3 * i
        if bit + 3 <= 64:
            size = (low >> np.uint64(bit)) & np.uint64(7)
        elif bit >= 64:
            size = (high >> np.uint64(bit - 64)) & np.uint64(7)
        else:
            size = ((low >> np.uint64(bit)) | (high << np.uint64(64 - bit))) & np.uint64(7)
        used = (np.uint64(i) < hclen) & (size > 0)
        kraft += np.where(used, np.uint64(1) << (np.uint64(7) - size), np.uint64(0))
    ok[dynamic] = (hlit <= 29) & (hdist <= 29) & (kraft == 128)
    return at[ok]


def _u64(data: U8, at: npt.NDArray[np.intp]) -> npt.NDArray[np.uint64]:
    """The little-endian 8-byte word at each offset (data has bytes to spare past them)."""
    words = np.zeros(at.size, dtype=np.uint64)
    for k in range(8):
        words |= data[at + k].astype(np.uint64) << np.uint64(8 * k)
    return words


_BZ2_BLOCK = b"1AY&SY"
_BZ2_END = b"\x17rE8P\x90"


def _header_ok(data: U8, at: npt.NDArray[np.intp], kind: str) -> npt.NDArray[np.bool_]:
    def byte(k: int) -> U8:
        picked: U8 = data[at + k]
        return picked
    ok: npt.NDArray[np.bool_]
    if kind == "gzip":  # 1f 8b, method 8 (deflate), no reserved flag bits
        ok = (byte(1) == 0x8B) & (byte(2) == 0x08) & ((byte(3) & 0xE0) == 0)
        return ok
    if kind == "bz2":  # "BZh", a block size digit, then a block or the end-of-stream magic
        ok = (byte(1) == 0x5A) & (byte(2) == 0x68) & (byte(3) >= 0x31) & (byte(3) <= 0x39)
        keep = np.flatnonzero(ok)
        for i in keep.tolist():
            p = int(at[i])
            if data[p + 4:p + 10].tobytes() not in (_BZ2_BLOCK, _BZ2_END):
                ok[i] = False
        return ok
    if kind == "xz":  # fd "7zXZ" 00
        ok = ((byte(1) == 0x37) & (byte(2) == 0x7A) & (byte(3) == 0x58) & (byte(4) == 0x5A)
              & (byte(5) == 0))
        return ok
    # zip local file header "PK\3\4" with deflate (8); stored entries are scanned as they lie,
    # bzip2 (12) and xz (95) entries carry their own stream signature.
    ok = ((byte(1) == 0x4B) & (byte(2) == 0x03) & (byte(3) == 0x04) & (byte(8) == 8)
          & (byte(9) == 0) & ((byte(6) & 1) == 0))
    return ok


class StreamOverLimit(Exception):  # noqa: N818 -- a signal inside the scan, never raised out
    """A stream's output went past a cap."""


@dataclass
class Inflation:
    """The outcome of decompressing one stream: whether it ended, and whether it was cut
    short by the end of its input (as opposed to by an error or by its own end)."""

    ended: bool = False
    starved: bool = False


def inflate(kind: str, pieces: Iterator[bytes], step: int, outcome: Inflation) -> Iterator[bytes]:
    """The output of one compressed stream fed from `pieces`, at most `step` bytes at a time so
    memory stays bounded however far it expands. Stops quietly at the first error: what came
    out before it is still yielded, because a corrupt tail must not hide the rest."""
    decompressor: _Decompressor
    if kind == "zip":
        first = next(pieces, b"")
        if len(first) < 30:
            return
        name_len, extra_len = struct.unpack_from("<HH", first, 26)
        first = first[30 + name_len + extra_len:]
        pieces = _chain_first(first, pieces)
        decompressor = _Zlib(-15)
    elif kind == "gzip":
        decompressor = _Zlib(31)
    elif kind == "zlib":
        decompressor = _Zlib(15)
    elif kind == "bz2":
        decompressor = _Other(bz2.BZ2Decompressor())
    else:
        decompressor = _Other(lzma.LZMADecompressor(format=lzma.FORMAT_XZ))
    try:
        for piece in pieces:
            out = decompressor.feed(piece, step)
            while True:
                if out:
                    yield out
                if decompressor.done:
                    outcome.ended = True
                    return
                if not decompressor.has_more:
                    break
                out = decompressor.feed(b"", step)
        outcome.starved = True
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        return


def _chain_first(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


class _Decompressor:
    done: bool
    has_more: bool

    def feed(self, data: bytes, step: int) -> bytes:
        raise NotImplementedError


class _Zlib(_Decompressor):
    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)
        self.done = self.has_more = False

    def feed(self, data: bytes, step: int) -> bytes:
        out = self._d.decompress(self._d.unconsumed_tail + data, step)
        self.done = self._d.eof
        self.has_more = bool(self._d.unconsumed_tail) or len(out) == step
        return out


class _Other(_Decompressor):
    def __init__(self, d: bz2.BZ2Decompressor | lzma.LZMADecompressor) -> None:
        self._d = d
        self.done = self.has_more = False

    def feed(self, data: bytes, step: int) -> bytes:
        out = self._d.decompress(data, step)
        self.done = self._d.eof
        self.has_more = not self._d.eof and not self._d.needs_input
        return out
