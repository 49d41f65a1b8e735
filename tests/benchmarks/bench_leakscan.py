"""Dataset leak scan throughput: the gate's scan of a 1 GiB output against `sha256sum` of the
same file, and the decoding scan (encodings, compressed streams, re-joined fields) beside the
verbatim one on the same files, all timed in the same run on a warm page cache.

Builds a ~100 MB synthetic CSV dataset and a 1 GiB output of random bytes with a few dataset
rows embedded, some across the scan's chunk and thread boundaries; a row the scan misses is an
error, not a slow number. Float32 weights (what a model really holds) carry rows under base64
and inside gzip-of-hex, which the decoding scan must find and the verbatim one cannot. A text
output of fresh rows in the dataset's own style and id range (the scan's slowest case) is timed
too. Everything lives in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import base64
import gzip
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sandbox.gate import leakscan
from sandbox.gate.leakscan import LeakHit, LeakScanner

NAME = "leakscan"
DATASET_BYTES = 100 << 20
OUTPUT_BYTES = 1 << 30
TEXT_OUTPUT_BYTES = 64 << 20
WEIGHTS_BYTES = 256 << 20
EMBEDDED = 8
REPEATS = 2
MB = 1e6


def _census_rows(rng: random.Random, first_id: int, count: int) -> str:
    jobs = ["Private", "Self-emp-inc", "Self-emp-not-inc", "State-gov", "Federal-gov"]
    schooling = ["Bachelors", "HS-grad", "Masters", "Doctorate", "Some-college", "Assoc-voc"]
    return "".join(
        f"{first_id + i},{rng.randint(17, 90)},{rng.choice(jobs)},"
        f"{rng.randint(10_000, 1_500_000)},{rng.choice(schooling)},"
        f"{rng.randint(1, 99)},{rng.random() * 1e5:.2f},{rng.random():.6f},"
        f"{rng.gauss(0, 1):.6f}\n" for i in range(count))


def _write_dataset(path: Path) -> int:
    """A census-like CSV of about DATASET_BYTES; returns its row count."""
    rng = random.Random(11)
    rows = written = 0
    with path.open("w") as handle:
        handle.write("id,age,workclass,fnlwgt,education,hours,income,score_a,score_b\n")
        while written < DATASET_BYTES:
            written += handle.write(_census_rows(rng, rows, 10_000))
            rows += 10_000
    return rows


def _write_text_output(path: Path, row_count: int) -> None:
    """Fresh rows in the dataset's own style and id range (say, predictions over the same
    table): the scan's slowest case, as most sampled keys hit the index."""
    rng = random.Random(12)
    written = 0
    with path.open("w") as handle:
        while written < TEXT_OUTPUT_BYTES:
            written += handle.write(_census_rows(rng, rng.randrange(row_count), 1000))


def _write_output(path: Path, rows: list[tuple[bytes, int]]) -> list[tuple[int, int]]:
    """OUTPUT_BYTES of random bytes with EMBEDDED (row, line) embedded; returns sorted
    (offset, line) pairs. Offsets straddle chunk and thread-range boundaries on purpose."""
    chunk = leakscan.SCAN_CHUNK
    middle = OUTPUT_BYTES // 2  # where the second scanning thread's range starts
    offsets = [1000, chunk - 7, 3 * chunk - 20, middle - 20, middle + 200, OUTPUT_BYTES // 3,
               OUTPUT_BYTES - chunk - 11, OUTPUT_BYTES - len(rows[-1][0])]
    pending = sorted(zip(offsets, rows, strict=True))
    written = 0
    with path.open("wb") as handle:
        for offset, (row, _) in pending:
            while written < offset:
                size = min(64 << 20, offset - written)
                handle.write(os.urandom(size))
                written += size
            handle.write(row)
            written += len(row)
        while written < OUTPUT_BYTES:
            size = min(64 << 20, OUTPUT_BYTES - written)
            handle.write(os.urandom(size))
            written += size
    return [(offset, line) for offset, (_, line) in pending]


def _write_weights(path: Path, rows: list[tuple[bytes, int]]) -> list[tuple[int, str]]:
    """WEIGHTS_BYTES of float32 weights (normal, scale 0.05) with rows hidden in them, half
    base64, half gzip of hex; returns sorted (line, encoding) pairs."""
    rng = np.random.default_rng(14)
    hidden = [(base64.b64encode(row), line, "base64") if i % 2 == 0 else
              (gzip.compress(row.hex().encode() + bytes(256)), line, "gzip > hex")
              for i, (row, line) in enumerate(rows)]
    step = WEIGHTS_BYTES // (len(hidden) + 1)
    with path.open("wb") as handle:
        written = 0
        for payload, _, _ in hidden:
            block = (rng.standard_normal(step // 4, dtype=np.float32) * 0.05).tobytes()
            handle.write(block)
            handle.write(payload)
            written += len(block) + len(payload)
        while written < WEIGHTS_BYTES:
            count = max(1, min(step, WEIGHTS_BYTES - written) // 4)
            block = (rng.standard_normal(count, dtype=np.float32) * 0.05).tobytes()
            handle.write(block)
            written += len(block)
    return sorted((line, encoding) for _, line, encoding in hidden)


def _sha256sum(path: Path) -> float:
    began = time.perf_counter()
    subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
    return time.perf_counter() - began


def _scan(scanner: LeakScanner, path: Path, decode: bool = False) -> tuple[float, list[LeakHit]]:
    began = time.perf_counter()
    hits = scanner.scan_file(path, max_hits=1000, decode=decode)
    return time.perf_counter() - began, hits


def _both(scanner: LeakScanner, path: Path) -> tuple[float, float, list[LeakHit],
                                                     list[LeakHit]]:
    """Best of REPEATS for the verbatim and the decoding scan, interleaved."""
    plain, decoding = [], []
    plain_hits: list[LeakHit] = []
    decoded_hits: list[LeakHit] = []
    for _ in range(REPEATS):
        seconds, plain_hits = _scan(scanner, path)
        plain.append(seconds)
        seconds, decoded_hits = _scan(scanner, path, decode=True)
        decoding.append(seconds)
    return min(plain), min(decoding), plain_hits, decoded_hits


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sealroom-bench-leakscan-") as scratch:
        root = Path(scratch)
        dataset = root / "census"
        dataset.mkdir()
        began = time.perf_counter()
        row_count = _write_dataset(dataset / "train.csv")
        dataset_bytes = (dataset / "train.csv").stat().st_size
        lines = (dataset / "train.csv").read_bytes().split(b"\n")
        picks = random.Random(13).sample(range(1, row_count + 1), EMBEDDED)
        embedded = [(lines[i], i + 1) for i in picks]  # lines[0] is line 1, the header
        del lines
        output = root / "model.bin"
        expected = _write_output(output, embedded)
        text_output = root / "predictions.csv"
        _write_text_output(text_output, row_count)
        weights = root / "weights.bin"
        hidden = _write_weights(weights, embedded)
        setup = time.perf_counter() - began

        began = time.perf_counter()
        scanner = LeakScanner.from_datasets({"census": dataset}, 16)
        build = time.perf_counter() - began

        sha_times, scan_times, decode_times = [], [], []
        hits: list[LeakHit] = []
        for _ in range(REPEATS):  # interleaved, all on the same warm page cache
            sha_times.append(_sha256sum(output))
            seconds, hits = _scan(scanner, output)
            scan_times.append(seconds)
            seconds, decoded = _scan(scanner, output, decode=True)
            decode_times.append(seconds)
            if decoded != hits:
                raise AssertionError("the decoding scan disagrees with the verbatim one on "
                                     f"random bytes: {[h.describe() for h in decoded]}")
        found = [(h.offset, h.line) for h in hits]
        if found != expected:
            raise AssertionError(f"leak scan found {found}, expected {expected}")
        text_seconds, text_decode, text_hits, text_decoded = _both(scanner, text_output)
        text_sha = _sha256sum(text_output)
        if text_hits or text_decoded:
            raise AssertionError(f"leak scan reported {len(text_hits + text_decoded)} false "
                                 "hit(s) in the text output")
        w_seconds, w_decode, w_hits, w_decoded = _both(scanner, weights)
        w_sha = _sha256sum(weights)
        if w_hits:
            raise AssertionError(f"verbatim scan found {len(w_hits)} row(s) in the weights")
        got = sorted((h.line, h.encoding) for h in w_decoded)
        if got != hidden:
            raise AssertionError(f"decoding scan found {got} in the weights, expected {hidden}")

    sha = min(sha_times)
    scan = min(scan_times)
    decode = min(decode_times)
    out_mb = OUTPUT_BYTES / MB
    text_mb = TEXT_OUTPUT_BYTES / MB
    w_mb = WEIGHTS_BYTES / MB
    print(f"dataset {dataset_bytes / MB:,.0f} MB, {row_count:,} rows -> "
          f"{scanner.records:,} records indexed in {build:.1f} s "
          f"({dataset_bytes / MB / build:,.0f} MB/s); setup {setup:.0f} s; "
          f"{leakscan.SCAN_THREADS} scan thread(s), best of {REPEATS}")
    print(f"{'':<36}{'seconds':>9}{'MB/s':>9}{'vs sha256sum':>14}")
    print(f"{'sha256sum, 1 GiB random output':<36}{sha:>9.2f}{out_mb / sha:>9.0f}{1.0:>14.2f}")
    print(f"{'leak scan, 1 GiB random output':<36}{scan:>9.2f}{out_mb / scan:>9.0f}"
          f"{sha / scan:>14.2f}")
    print(f"{'sha256sum, 64 MiB CSV, same style':<36}{text_sha:>9.2f}{text_mb / text_sha:>9.0f}"
          f"{1.0:>14.2f}")
    print(f"{'leak scan, 64 MiB CSV, same style':<36}{text_seconds:>9.2f}"
          f"{text_mb / text_seconds:>9.0f}{text_sha / text_seconds:>14.2f}")
    print(f"embedded rows found: {len(found)}/{EMBEDDED} at the expected offsets")
    print()
    print(f"{'decoding scan beside verbatim':<36}{'verbatim MB/s':>14}{'decoding MB/s':>14}"
          f"{'ratio':>7}")
    for label, mb, plain, decoding in (
            ("1 GiB random bytes", out_mb, scan, decode),
            ("256 MiB float32 weights", w_mb, w_seconds, w_decode),
            ("64 MiB CSV, same style", text_mb, text_seconds, text_decode)):
        print(f"{label:<36}{mb / plain:>14.0f}{mb / decoding:>14.0f}{plain / decoding:>7.2f}")
    print(f"rows hidden in the weights found by the decoding scan: {len(w_decoded)}/"
          f"{len(hidden)} (base64 and gzip > hex); by the verbatim scan: 0")
    return {
        "dataset_mb": round(dataset_bytes / MB, 1),
        "dataset_rows": row_count,
        "records_indexed": scanner.records,
        "index_build_s": round(build, 2),
        "scan_threads": leakscan.SCAN_THREADS,
        "output_mb": round(out_mb, 1),
        "sha256sum_s": round(sha, 3),
        "sha256sum_mb_s": round(out_mb / sha, 1),
        "leak_scan_s": round(scan, 3),
        "leak_scan_mb_s": round(out_mb / scan, 1),
        "leak_scan_vs_sha256sum": round(sha / scan, 3),
        "text_leak_scan_mb_s": round(text_mb / text_seconds, 1),
        "text_sha256sum_mb_s": round(text_mb / text_sha, 1),
        "embedded_rows_found": len(found),
        "decoding_random_mb_s": round(out_mb / decode, 1),
        "decoding_vs_verbatim_random": round(scan / decode, 3),
        "weights_sha256sum_mb_s": round(w_mb / w_sha, 1),
        "weights_verbatim_mb_s": round(w_mb / w_seconds, 1),
        "weights_decoding_mb_s": round(w_mb / w_decode, 1),
        "decoding_vs_verbatim_weights": round(w_seconds / w_decode, 3),
        "text_decoding_mb_s": round(text_mb / text_decode, 1),
        "decoding_vs_verbatim_text": round(text_seconds / text_decode, 3),
        "weights_hidden_rows_found": len(w_decoded),
    }
