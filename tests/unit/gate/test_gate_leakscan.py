"""The dataset leak scan: any row of a mounted dataset found verbatim in an output, as text or
as raw bytes inside binary data, wherever chunk and thread boundaries fall; short fragments
(numbers, categories) are not leaks, and reports never carry the row itself."""

from __future__ import annotations

import io
import os
import random
import struct
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.gate import leakscan
from sandbox.gate.errors import DatasetUnreadable
from sandbox.gate.leakscan import LeakHit, LeakScanner
from tests.helpers import UNTIMED_HEALTH_CHECKS, raw_safetensors


def adult_rows(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.randint(17, 90)},{rng.choice(['Private', 'Self-emp', 'State-gov'])},"
            f"{rng.randint(10_000, 999_999)},{rng.choice(['Bachelors', 'HS-grad', 'Masters'])},"
            f"{rng.random():.6f}" for _ in range(count)]


HEADER = "age,workclass,fnlwgt,education,score"
ROWS = adult_rows(3000)


@pytest.fixture(scope="module")
def adult(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets") / "adult"
    root.mkdir()
    (root / "train.csv").write_text(HEADER + "\n" + "\n".join(ROWS) + "\n")
    return root


@pytest.fixture(scope="module")
def scanner(adult: Path) -> LeakScanner:
    return LeakScanner.from_datasets({"adult": adult})


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def line_of(row: str) -> int:
    return ROWS.index(row) + 2  # 1-based, after the header


def test_index_holds_every_row_but_the_header(scanner: LeakScanner) -> None:
    assert scanner.records == len(set(ROWS))
    assert scanner.sources == [("adult", "train.csv")]
    assert scanner.skipped == []


def test_row_embedded_as_text_in_a_csv_is_found(tmp_path: Path, scanner: LeakScanner) -> None:
    leaked = ROWS[100]
    prefix = "epoch,loss\n1,0.5\n"
    path = write(tmp_path, "metrics.csv", f"{prefix}{leaked}\n2,0.25\n".encode())
    hits = scanner.scan_file(path)
    assert hits == [LeakHit(offset=len(prefix), length=len(leaked), dataset="adult",
                            source="train.csv", line=line_of(leaked))]
    assert leaked not in hits[0].describe()
    assert f"line {line_of(leaked)} of train.csv" in hits[0].describe()


def _safetensors(tensors: dict[str, tuple[str, list[int], bytes]],
                 metadata: dict[str, str] | None = None) -> tuple[bytes, int]:
    """A safetensors file and the offset where its tensor data starts."""
    return raw_safetensors(tensors, metadata)


def test_row_as_raw_bytes_of_a_uint8_tensor_is_found(tmp_path: Path,
                                                     scanner: LeakScanner) -> None:
    leaked = ROWS[2999].encode()
    weights = os.urandom(4096)
    data, start = _safetensors({"w": ("U8", [4096], weights),
                                "smuggled": ("U8", [len(leaked)], leaked),
                                "b": ("F32", [3], struct.pack("<3f", 1, 2, 3))})
    hits = scanner.scan_file(write(tmp_path, "model.safetensors", data))
    assert [(h.offset, h.line) for h in hits] == [(start + 4096, 3001)]


def test_row_in_safetensors_metadata_is_found(tmp_path: Path, scanner: LeakScanner) -> None:
    leaked = ROWS[5]
    data, _ = _safetensors({"w": ("F32", [2], struct.pack("<2f", 1, 2))},
                           metadata={"note": leaked})
    hits = scanner.scan_file(write(tmp_path, "model.safetensors", data))
    assert [(h.offset, h.line) for h in hits] == [(data.index(leaked.encode()), 7)]


def test_a_real_torch_model_trained_on_the_data_is_clean(tmp_path: Path,
                                                         scanner: LeakScanner) -> None:
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    path = tmp_path / "model.safetensors"
    st_torch.save_file(dict(model.state_dict()), str(path))
    assert scanner.scan_file(path) == []


def test_short_fragments_are_not_leaks(tmp_path: Path, scanner: LeakScanner) -> None:
    # Fields out of their row's order (in order, they would be the row re-joined).
    fields = [field for row in ROWS[:200] for field in reversed(row.split(","))]
    text = "\n".join(";".join(fields[i:i + 4]) for i in range(0, len(fields), 4))
    # Every row with one byte changed: close is not verbatim.
    near = "\n".join(row[:-1] + ("0" if row[-1] != "0" else "1") for row in ROWS[:200])
    path = write(tmp_path, "fragments.txt", f"{text}\n{near}\n{HEADER}\n1,0\n".encode())
    assert scanner.scan_file(path) == []


def test_header_and_rows_shorter_than_the_minimum_are_not_indexed(tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    root.mkdir()
    (root / "data.csv").write_text("a_long_header_name,another_long_one\n1,0\n0,1\n"
                                   "exactly_16_bytes\n")
    scanner = LeakScanner.from_datasets({"tiny": root}, min_row_bytes=16)
    assert scanner.records == 1
    out = write(tmp_path, "out.csv", b"a_long_header_name,another_long_one\n1,0\n0,1\n")
    assert scanner.scan_file(out) == []
    assert [h.line for h in scanner.scan_file(write(tmp_path, "o2", b"xexactly_16_bytesx"))] == [4]


def test_crlf_rows_and_a_last_row_without_newline_are_matched(tmp_path: Path) -> None:
    root = tmp_path / "crlf"
    root.mkdir()
    (root / "a.csv").write_bytes(b"h1,h2\r\nfirst row of data 1\r\nlast row of data 22")
    scanner = LeakScanner.from_datasets({"crlf": root})
    out = write(tmp_path, "o", b"..first row of data 1\n..last row of data 22\r\n")
    assert [(h.offset, h.length, h.line) for h in scanner.scan_file(out)] == [
        (2, 19, 2), (24, 19, 3)]


def test_duplicate_rows_are_indexed_once_under_their_first_file_and_line(
        tmp_path: Path) -> None:
    root = tmp_path / "dup"
    (root / "sub").mkdir(parents=True)
    (root / "b.csv").write_text("h\nsame row in both files\nonly in b, also long\n")
    (root / "sub" / "a.csv").write_text("h\nx\nsame row in both files\nsame row in both files\n")
    (root / "blob.bin").write_bytes(b"\0\1\2same row in both files\n" * 3)
    scanner = LeakScanner.from_datasets({"dup": root})
    assert scanner.records == 2
    assert scanner.skipped == [("dup", "blob.bin")]
    assert [s for _, s in scanner.sources] == ["b.csv", "sub/a.csv"]
    hits = scanner.scan_file(write(tmp_path, "o", b"same row in both files"))
    assert [(h.source, h.line) for h in hits] == [("b.csv", 2)]


def test_several_datasets_are_named_in_hits(tmp_path: Path, adult: Path) -> None:
    other = tmp_path / "census"
    other.mkdir()
    (other / "c.csv").write_text("h\na census row that is long\n")
    scanner = LeakScanner.from_datasets({"adult": adult, "census": other})
    out = write(tmp_path, "o", f"{ROWS[1]}|a census row that is long".encode())
    assert [(h.dataset, h.line) for h in scanner.scan_file(out)] == [("adult", 3), ("census", 2)]


def test_rows_longer_than_the_record_cap_are_matched_by_their_start(tmp_path: Path) -> None:
    root = tmp_path / "long"
    root.mkdir()
    long_row = "".join(f"{i:04d}," for i in range(5000))  # 25,000 bytes
    (root / "a.csv").write_text(f"h\n{long_row}\nafter the long row, line 3\n")
    with mock.patch.object(leakscan, "RECORD_CAP", 64), \
            mock.patch.object(leakscan, "BUILD_CHUNK", 1000):
        scanner = LeakScanner.from_datasets({"long": root})
        assert scanner.max_record == 64
        out = write(tmp_path, "o", b"~" + long_row[:64].encode() + b"~after the long row, line 3")
        assert [(h.offset, h.length, h.line) for h in scanner.scan_file(out)] == [
            (1, 64, 2), (66, 26, 3)]


def test_missing_dataset_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnreadable, match="'gone'"):
        LeakScanner.from_datasets({"gone": tmp_path / "nope"})


def test_empty_and_tiny_outputs_have_no_hits(tmp_path: Path, scanner: LeakScanner) -> None:
    assert scanner.scan_file(write(tmp_path, "empty", b"")) == []
    assert scanner.scan_file(write(tmp_path, "tiny", b"17,Private")) == []


def test_hits_are_capped(tmp_path: Path, scanner: LeakScanner) -> None:
    out = write(tmp_path, "all.csv", ("\n".join(ROWS) + "\n").encode())
    assert len(scanner.scan_file(out, max_hits=7)) == 7
    assert len(scanner.scan_file(out, max_hits=10_000)) == len(ROWS)


@settings(max_examples=60, deadline=None, suppress_health_check=UNTIMED_HEALTH_CHECKS)
@given(st.lists(st.tuples(st.integers(0, len(ROWS) - 1), st.integers(0, 9000)),
                min_size=1, max_size=8),
       st.sampled_from([64, 256, 1024, 4096]), st.integers(1, 3), st.integers(0, 2**32))
def test_rows_at_random_offsets_are_always_found_across_chunks_and_threads(
        tmp_path_factory: pytest.TempPathFactory, scanner: LeakScanner,
        placements: list[tuple[int, int]], chunk: int, threads: int, seed: int) -> None:
    rng = random.Random(seed)
    out = io.BytesIO()
    expected = []
    for row_index, gap in placements:
        out.write(rng.randbytes(gap))
        row = ROWS[row_index].encode()
        expected.append((out.tell(), len(row), row_index + 2))
        out.write(row)
    out.write(rng.randbytes(rng.randint(0, 5000)))
    path = tmp_path_factory.mktemp("out") / "model.bin"
    path.write_bytes(out.getvalue())
    with mock.patch.object(leakscan, "SCAN_CHUNK", chunk), \
            mock.patch.object(leakscan, "SCAN_THREADS", threads):
        hits = scanner.scan_file(path, max_hits=1000)
    assert [(h.offset, h.length, h.line) for h in hits] == expected


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 40), st.lists(st.binary(min_size=1, max_size=60).filter(
    lambda b: b"\n" not in b and b"\r" not in b and b"\0" not in b), min_size=1, max_size=30,
    unique=True), st.integers(0, 2**32))
def test_rows_of_at_least_the_minimum_are_found_and_shorter_ones_never(
        tmp_path_factory: pytest.TempPathFactory, min_row: int, rows: list[bytes],
        seed: int) -> None:
    root = tmp_path_factory.mktemp("ds")
    (root / "d.csv").write_bytes(b"header\n" + b"\n".join(rows) + b"\n")
    scanner = LeakScanner.from_datasets({"d": root}, min_row_bytes=min_row)
    rng = random.Random(seed)
    for line, row in enumerate(rows, start=2):
        out = root / "out.bin"
        before = bytes(rng.randrange(128, 256) for _ in range(rng.randint(0, 40)))
        out.write_bytes(before + row + bytes(rng.randrange(128, 256) for _ in range(3)))
        hits = {(h.offset, h.length) for h in scanner.scan_file(out, max_hits=1000)}
        if len(row) >= min_row:
            assert (len(before), len(row)) in hits
        else:
            assert all(length >= min_row for _, length in hits)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=40),
       st.booleans(), st.integers(1, 64))
def test_line_blocks_keep_line_numbers_whatever_the_block_size(
        lines: list[bytes], final_newline: bool, block: int) -> None:
    text = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    numbered = []
    with mock.patch.object(leakscan, "BUILD_CHUNK", block), \
            mock.patch.object(leakscan, "RECORD_CAP", 1 << 20):
        for chunk, first in leakscan._line_blocks(io.BytesIO(text)):
            assert chunk.endswith(b"\n")
            numbered.extend(enumerate(chunk[:-1].split(b"\n"), start=first))
    pieces = text.split(b"\n")
    if pieces[-1] == b"":  # a final newline (or no text) ends the last line, opens none
        pieces.pop()
    assert numbered == list(enumerate(pieces, start=1))


def test_scan_bytes_reports_offsets_into_the_bytes(scanner: LeakScanner) -> None:
    data = b"x" * 10 + ROWS[42].encode() + b"y"
    assert [(h.offset, h.line) for h in scanner.scan_bytes(data)] == [(10, 44)]
    assert scanner.scan_bytes(b"") == []
