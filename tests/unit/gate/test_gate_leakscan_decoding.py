"""The leak scan's decoding: rows under base64, base32, hex, UTF-16, URL and JSON escaping,
re-joined with other separators, and inside gzip, zlib, bz2, xz and zip streams found anywhere
in random bytes, nested to the depth limit; decompression stays within its caps and says so;
random weights and ordinary metrics files give no hit."""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import json
import lzma
import random
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.gate import leakscan
from sandbox.gate.decoding import compressed_starts, json_unescape, text_runs
from sandbox.gate.leakscan import DecodeLimits, LeakHit, LeakScanner


def patient_rows(count: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [f"P{i:05d},{rng.randint(1930, 2005)}-{rng.randint(1, 12):02d}-"
            f"{rng.randint(1, 28):02d},{rng.choice('MF')},"
            f"{rng.choice(['diabetes type 2', 'asthma', 'hypertension', 'copd'])},"
            f"{rng.random() * 10:.1f}" for i in range(count)]


ROWS = patient_rows(300)
ROW = ROWS[41]
ROW_LINE = 43  # 1-based, after the header


@pytest.fixture(scope="module")
def scanner(tmp_path_factory: pytest.TempPathFactory) -> LeakScanner:
    root = tmp_path_factory.mktemp("datasets") / "patients"
    root.mkdir()
    (root / "patients.csv").write_text("id,born,sex,diagnosis,score\n" + "\n".join(ROWS) + "\n")
    return LeakScanner.from_datasets({"patients": root})


def _zip(data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("notes.txt", data)
    return out.getvalue()


def _compressing(compress: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    # Padding makes every compressor really compress (xz and deflate store short input as is).
    return lambda data: compress(data + bytes(512))


def _json(data: bytes) -> bytes:
    escaped = json.dumps(data.decode(), ensure_ascii=True)[1:-1]
    return escaped.replace(",", "\\u002c").replace("-", "\\u002d").encode()


#: name in the scan's own words -> how to encode bytes that way
TEXT_ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "base64": base64.b64encode,
    "base32": base64.b32encode,
    "hex": lambda b: b.hex().encode(),
    "UTF-16LE": lambda b: b.decode("ascii").encode("utf-16-le"),
    "UTF-16BE": lambda b: b.decode("ascii").encode("utf-16-be"),
    "URL escaping": lambda b: urllib.parse.quote(b).encode(),
    "JSON escaping": _json,
}
COMPRESSIONS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": _compressing(gzip.compress),
    "zlib": _compressing(zlib.compress),
    "bz2": _compressing(bz2.compress),
    "xz": _compressing(lzma.compress),
    "zip": _compressing(_zip),
}
ALL = {**TEXT_ENCODINGS, **COMPRESSIONS}
#: Steps that need printable ASCII text in (escaping text that needs none would be no step).
ESCAPES = {"URL escaping", "JSON escaping"}
UTF16 = {"UTF-16LE", "UTF-16BE"}
PRINTABLE_OUT = {"base64", "base32", "hex", *ESCAPES}


def workable(chain: list[str]) -> list[str]:
    """The longest prefix of `chain` whose every step gets input it transforms: escapes only
    on the row itself, UTF-16 only on printable text."""
    for i, step in enumerate(chain):
        inner = chain[i + 1] if i + 1 < len(chain) else None
        if inner is not None and (step in ESCAPES or (step in UTF16
                                                      and inner not in PRINTABLE_OUT)):
            return chain[:i + 1]
    return chain


def encode(chain: list[str], data: bytes) -> bytes:
    """`data` under `chain`, outermost step first (as the scan names it)."""
    for step in reversed(chain):
        data = ALL[step](data)
    return data


def embed(payload: bytes, seed: int, before: int = 3000, after: int = 2000) -> tuple[bytes, int]:
    rng = random.Random(seed)
    head = rng.randbytes(rng.randint(0, before))
    return head + payload + rng.randbytes(rng.randint(0, after)), len(head)


def only_hit(hits: list[LeakHit]) -> LeakHit:
    assert len(hits) == 1, [h.describe() for h in hits]
    return hits[0]


def assert_found(hits: list[LeakHit], chain: str, at: int) -> None:
    # UTF-16 text with a NUL or an optional character (padding) at both ends reads both ways.
    mirror = chain.replace("LE", "<>").replace("BE", "LE").replace("<>", "BE")
    if len(hits) == 2 and {h.encoding for h in hits} == {chain, mirror}:
        hits = [h for h in hits if h.encoding == chain]
    hit = only_hit(hits)
    assert (hit.encoding, hit.dataset, hit.source, hit.line) == (
        chain, "patients", "patients.csv", ROW_LINE)
    # The outermost run may take in a few neighbouring bytes of its own alphabet; fields
    # re-joined are placed at their first letter or digit.
    assert at - 64 <= hit.offset <= at + 8
    assert ROW not in hit.describe()
    assert not any(field in hit.describe() for field in ROW.split(",") if len(field) > 3)


@pytest.mark.parametrize("name", list(ALL))
def test_each_encoding_and_compression_is_found_in_random_bytes(scanner: LeakScanner,
                                                                name: str) -> None:
    payload = encode([name], ROW.encode())
    assert ROW.encode() not in payload
    data, at = embed(payload, seed=len(name))
    assert_found(scanner.scan_bytes(data), name, at)
    clean, _ = embed(b"", seed=len(name))
    assert scanner.scan_bytes(clean) == []


@pytest.mark.parametrize("variant", [
    lambda b: base64.urlsafe_b64encode(b).rstrip(b"="),
    lambda b: base64.b64encode(b).rstrip(b"="),
    lambda b: base64.urlsafe_b64encode(b"\xfb\xff" + b),  # '-' and '_' in the run
    lambda b: b"Q" + base64.b64encode(b),  # the run starts one character early
    lambda b: b"QQ" + base64.b64encode(b),
    lambda b: b"QQQ" + base64.b64encode(b),
    lambda b: base64.b64encode(b"xy" + b + b"z"),  # the row at another alignment inside
])
def test_base64_in_every_alphabet_padding_and_alignment(
        scanner: LeakScanner, variant: Callable[[bytes], bytes]) -> None:
    data, at = embed(variant(ROW.encode()), seed=5)
    assert only_hit(scanner.scan_bytes(data)).encoding == "base64"


def test_hex_in_upper_case_and_at_an_odd_start(scanner: LeakScanner) -> None:
    data, _ = embed(b"a" + ROW.encode().hex().upper().encode(), seed=6)
    assert only_hit(scanner.scan_bytes(data)).encoding == "hex"


@pytest.mark.parametrize("rejoin", [
    lambda fields: "\t".join(fields),
    lambda fields: " | ".join(fields),
    lambda fields: json.dumps(fields),
    lambda fields: " ".join(fields),
    lambda fields: "\n".join(fields),
    lambda fields: "\0".join(fields),
])
def test_fields_in_order_with_other_separators_are_found(
        scanner: LeakScanner, rejoin: Callable[[list[str]], str]) -> None:
    data, at = embed(rejoin(ROW.split(",")).encode(), seed=7)
    assert_found(scanner.scan_bytes(data), "re-joined fields", at)


def test_fields_re_joined_and_then_encoded(scanner: LeakScanner) -> None:
    payload = base64.b64encode(json.dumps(ROW.split(",")).encode())
    data, at = embed(payload, seed=8)
    assert_found(scanner.scan_bytes(data), "base64 > re-joined fields", at)


@pytest.mark.parametrize("chain", [
    ["base64", "gzip"], ["gzip", "hex"], ["base64", "gzip", "hex"], ["hex", "zlib"],
    ["zip", "base64"], ["bz2", "UTF-16LE"], ["xz", "JSON escaping"], ["gzip", "gzip"],
    ["UTF-16BE", "base32"], ["base32", "URL escaping"],
])
def test_nested_chains_are_found_and_named(scanner: LeakScanner, chain: list[str]) -> None:
    data, at = embed(encode(chain, ROW.encode()), seed=len(chain))
    assert_found(scanner.scan_bytes(data), " > ".join(chain), at)


def test_nesting_stops_at_the_depth_limit(scanner: LeakScanner) -> None:
    chain = ["base64", "gzip", "hex", "base32"]
    data, at = embed(encode(chain, ROW.encode()), seed=9)
    assert scanner.scan_bytes(data) == []
    assert_found(scanner.scan_bytes(data, limits=DecodeLimits(depth=4)), " > ".join(chain), at)


def test_decoding_can_be_turned_off(scanner: LeakScanner, tmp_path: Path) -> None:
    data, _ = embed(base64.b64encode(ROW.encode()), seed=10)
    assert scanner.scan_bytes(data, decode=False) == []
    path = tmp_path / "out.bin"
    path.write_bytes(data)
    assert scanner.scan_file(path, decode=False) == []
    assert only_hit(scanner.scan_file(path)).encoding == "base64"


def test_a_compressed_stream_is_reported_at_its_first_byte(scanner: LeakScanner) -> None:
    data, at = embed(COMPRESSIONS["gzip"](ROW.encode()), seed=11)
    assert only_hit(scanner.scan_bytes(data)).offset == at


def test_a_row_verbatim_is_reported_once_verbatim(scanner: LeakScanner) -> None:
    data, at = embed(f"{ROW}\n%20 {ROW}".encode(), seed=12)
    assert [(h.offset, h.encoding) for h in scanner.scan_bytes(data)] == [
        (at, ""), (at + len(ROW) + 5, "")]


# --- limits ---------------------------------------------------------------------------------


def test_a_stream_expanding_past_its_cap_is_a_finding_not_a_crash(scanner: LeakScanner) -> None:
    bomb = gzip.compress(bytes(8 << 20) + ROW.encode())  # 8 MiB of zeros, then the row
    data, at = embed(bomb, seed=13)
    hit = only_hit(scanner.scan_bytes(data, limits=DecodeLimits(stream_bytes=1 << 20)))
    assert (hit.unscanned, hit.encoding, hit.offset, hit.length) == ("stream", "gzip", at,
                                                                     1 << 20)
    assert hit.describe() == (f"a gzip stream at byte {at:,} expands past the scan's limit of "
                              "1,048,576 bytes per stream, so it was not read to its end")
    # Within the cap the row at its end is found.
    assert only_hit(scanner.scan_bytes(data)).encoding == "gzip"


def test_streams_past_the_per_file_cap_are_a_finding(scanner: LeakScanner) -> None:
    stream = zlib.compress(bytes(600 << 10))
    data, _ = embed(stream + bytes(100) + stream + bytes(100) + stream, seed=14)
    hits = scanner.scan_bytes(data, limits=DecodeLimits(file_bytes=1 << 20))
    assert [(h.unscanned, h.encoding) for h in hits] == [("file", "zlib")]
    assert "per file" in hits[0].describe()


def test_a_zip_bomb_is_refused_within_bounded_work(scanner: LeakScanner) -> None:
    # 16 zlib streams of 8 MiB of zeros each, zipped: 128 MiB from a few hundred bytes.
    inner = zlib.compress(bytes(8 << 20), 9)
    bomb = _zip(inner * 16)
    assert len(bomb) < 2000
    hits = scanner.scan_bytes(bomb, limits=DecodeLimits(stream_bytes=1 << 20,
                                                        file_bytes=3 << 20))
    # Nested streams are placed at the outermost one, so the per-stream finding comes once.
    assert [(h.unscanned, h.encoding, h.offset) for h in hits] == [
        ("stream", "zip > zlib", 0), ("file", "zip > zlib", 0)]


def test_a_stream_nested_in_a_run_longer_than_the_window_fails_closed(
        scanner: LeakScanner, tmp_path: Path) -> None:
    text = "\n".join(patient_rows(1000, seed=99)).encode() + ROW.encode()
    payload = base64.b64encode(zlib.compress(text + random.Random(1).randbytes(10_000)))
    path = tmp_path / "out.bin"
    path.write_bytes(embed(payload, seed=15)[0])
    with mock.patch.object(leakscan, "SCAN_CHUNK", 8 << 10):
        hits = scanner.scan_file(path)
    # What the window held may already show the row; either way the check cannot pass.
    assert "window" in [h.unscanned for h in hits]
    assert only_hit(scanner.scan_file(path)).encoding == "base64 > zlib"


# --- no false positives -----------------------------------------------------------------------


def test_ten_megabytes_of_random_float32_weights_are_clean(scanner: LeakScanner,
                                                           tmp_path: Path) -> None:
    weights = np.random.default_rng(4).standard_normal(10 << 18, dtype=np.float32) * 0.05
    path = tmp_path / "weights.bin"
    path.write_bytes(weights.tobytes())
    assert scanner.scan_file(path) == []


def test_ordinary_metrics_files_are_clean(scanner: LeakScanner) -> None:
    rng = random.Random(5)
    metrics = {"run": "resnet-baseline_2026-12-01", "notes": "lr=3e-4 \\u00e9 100% done",
               "history": [{"epoch": e, "loss": rng.random(), "val_accuracy": rng.random(),
                            "per_class_f1_diabetes_type_2": rng.random()} for e in range(200)],
               "checksum": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
    assert scanner.scan_bytes(json.dumps(metrics, indent=1).encode()) == []
    csv = "epoch,loss,accuracy,patient_count,diagnosis\n" + "".join(
        f"{e},{rng.random():.6f},{rng.random():.4f},{rng.randint(1, 300)},asthma\n"
        for e in range(2000))
    assert scanner.scan_bytes(csv.encode()) == []
    # Fresh rows in the dataset's own style (predictions over other patients) are no leak.
    others = "\n".join(patient_rows(300, seed=77)) + "\n"
    assert scanner.scan_bytes(others.encode()) == []


# --- chunks, threads and the decoders' own pieces ---------------------------------------------


def test_encoded_rows_and_streams_across_chunk_and_thread_seams(scanner: LeakScanner,
                                                                tmp_path: Path) -> None:
    rng = random.Random(16)
    payloads = [(encode(["base64"], ROWS[i].encode()), i) for i in range(0, 60, 3)]
    payloads += [(encode(["gzip", "hex"], ROWS[i].encode()), i) for i in range(1, 60, 3)]
    out = io.BytesIO()
    for payload, _ in payloads:
        out.write(rng.randbytes(rng.randint(0, 9000)))
        out.write(payload)
    path = tmp_path / "model.bin"
    path.write_bytes(out.getvalue())
    with mock.patch.object(leakscan, "SCAN_CHUNK", 4096), \
            mock.patch.object(leakscan, "SCAN_THREADS", 3):
        hits = scanner.scan_file(path, max_hits=1000)
    assert sorted((h.line, h.encoding) for h in hits) == sorted(
        (i + 2, "base64" if i % 3 == 0 else "gzip > hex") for _, i in payloads)


def test_text_runs_are_found_wherever_they_start(scanner: LeakScanner) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(128, 256, 1000, dtype=np.uint8)
    data[100:116] = 65  # exactly the minimum, unaligned
    data[301:340] = 0x20
    data[500:514] = 66  # too short
    padded = np.concatenate((data, np.zeros(64, np.uint8)))
    assert text_runs(padded, data.size) == [(100, 116), (301, 340)]


def test_compressed_starts_check_headers(scanner: LeakScanner) -> None:
    blob = b"\xff" * 50 + gzip.compress(b"x" * 100) + b"\xff" * 50 + b"\x1f\x8b\x07" + b"\xff" * 50
    data = np.frombuffer(blob + bytes(64), dtype=np.uint8)
    assert [(at, kind) for at, kind in compressed_starts(data, 0, len(blob))
            if kind != "zlib"] == [(50, "gzip")]


def test_json_unescape() -> None:
    assert json_unescape(rb'a\"b\\c\u00e9\ud83d\ude00\n\x') == (
        'a"b\\cé😀\n'.encode() + rb"\x")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(sorted(ALL)), min_size=1, max_size=3),
       st.integers(0, 4000), st.integers(0, 2**32))
def test_random_chains_at_random_offsets_are_found(scanner: LeakScanner, chain: list[str],
                                                   offset: int, seed: int) -> None:
    chain = workable(chain)
    rng = random.Random(seed)
    payload = encode(chain, ROW.encode())
    data = rng.randbytes(offset) + payload + rng.randbytes(rng.randint(0, 500))
    assert_found(scanner.scan_bytes(data), " > ".join(chain), offset)


def test_a_file_of_endless_short_text_runs_is_refused_not_scanned_for_hours(
        scanner: LeakScanner, tmp_path: Path) -> None:
    """Each run of text costs Python time to decode; a file crafted as thousands of them
    (here every byte value in turn: a 95-byte printable run every 256 bytes) stops at the
    limit and fails closed, instead of holding the gate for hours."""
    data = bytes(range(256)) * 400
    (found,) = scanner.scan_bytes(data, limits=DecodeLimits(text_runs=50))
    assert found.unscanned == "runs" and found.length == 50
    assert "more than 50 runs of text" in found.describe()
    assert scanner.scan_bytes(data, limits=DecodeLimits(text_runs=1000)) == []
