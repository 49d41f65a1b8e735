"""The gate's report: a full checklist per file, failing closed, for a clean example release
(as the bundled MLP example writes it) and for each way a release can go wrong."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from sandbox.gate import checks
from sandbox.gate.checks import CandidateFile, Check, CheckReport, CheckResult, run_checks
from sandbox.gate.rules import CheckRules

EXAMPLE = Path(__file__).resolve().parents[3] / "sandbox" / "examples" / "mlp" / "train.py"
FEATURES = 16


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A train.csv shaped like the example expects: f0..f15 and a 0/1 label."""
    root = tmp_path / "datasets" / "demo"
    root.mkdir(parents=True)
    rng = random.Random(3)
    lines = [",".join([*(f"f{i}" for i in range(FEATURES)), "label"])]
    for _ in range(600):
        values = [rng.gauss(0, 1) for _ in range(FEATURES)]
        label = int(values[0] + 0.5 * values[1] > 0)
        lines.append(",".join([*(f"{v:.5f}" for v in values), str(label)]))
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def candidate(path: Path, name: str | None = None) -> CandidateFile:
    data = path.read_bytes()
    return CandidateFile(name=name or path.name, path=path, size=len(data),
                         sha256=hashlib.sha256(data).hexdigest())


def put(outbox: Path, name: str, data: bytes) -> CandidateFile:
    outbox.mkdir(parents=True, exist_ok=True)
    path = outbox / name.replace("/", "_")
    path.write_bytes(data)
    return candidate(path, name)


def safetensors_file(tensors: dict[str, tuple[list[int], list[float]]],
                     metadata: dict[str, str] | None = None) -> bytes:
    """float32 tensors {name: (shape, values)}, laid out as safetensors.torch.save_file does."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    payload = b""
    for name, (shape, values) in sorted(tensors.items()):
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape,
                        "data_offsets": [len(payload), len(payload) + len(raw)]}
        payload += raw
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + payload


def example_outputs(outbox: Path) -> list[CandidateFile]:
    """What train.py writes, built without torch: the MLP's state_dict and its metrics."""
    rng = random.Random(5)

    def values(*shape: int) -> tuple[list[int], list[float]]:
        count = 1
        for dim in shape:
            count *= dim
        return list(shape), [rng.gauss(0, 0.3) for _ in range(count)]

    model = safetensors_file({"0.mean": values(16), "0.std": values(16),
                              "1.weight": values(32, 16), "1.bias": values(32),
                              "3.weight": values(2, 32), "3.bias": values(2)},
                             metadata={"format": "pt"})
    metrics = {"accuracy": 0.9125, "loss": 0.231456, "epochs": 5, "n_train": 480,
               "n_test": 120, "seconds": 2.481}
    return [put(outbox, "model.safetensors", model),
            put(outbox, "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())]


def results(report: CheckReport, file: str = "") -> dict[str, CheckResult]:
    return {r.check: r for r in report.results if r.file == file}


ALL_FILE_CHECKS = {"file_type", "file_size", "file_format", "leak_scan"}


def test_clean_example_release_passes_every_check(tmp_path: Path, dataset: Path) -> None:
    files = example_outputs(tmp_path / "outbox")
    report = run_checks(files, CheckRules(), {"demo": dataset})
    assert report.passed, report.failed
    assert set(results(report, "model.safetensors")) == ALL_FILE_CHECKS
    assert set(results(report, "metrics.json")) == ALL_FILE_CHECKS | {"metrics"}
    assert set(results(report)) == {"files", "total_size"}
    assert all(r.reason for r in report.results)
    assert "600 distinct record(s)" in results(report, "model.safetensors")["leak_scan"].reason
    document = json.loads(json.dumps(report.to_dict()))
    assert document["passed"] is True
    assert {r["check"] for r in document["results"]} == {c.value for c in Check} - {"pickle_scan"}


def test_real_example_training_run_passes_every_check(tmp_path: Path, dataset: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    outbox = tmp_path / "outbox"
    env = {**os.environ, "SEALROOM_DATA": str(dataset), "SEALROOM_OUTBOX": str(outbox),
           "SEALROOM_EPOCHS": "2"}
    subprocess.run([sys.executable, str(EXAMPLE)], env=env, check=True, capture_output=True,
                   timeout=300)
    files = [candidate(outbox / "model.safetensors"), candidate(outbox / "metrics.json")]
    report = run_checks(files, CheckRules(), {"demo": dataset})
    assert report.passed, report.failed
    assert len(report.results) == 2 + 4 + 5


def test_a_request_with_no_files_fails_closed() -> None:
    report = run_checks([], CheckRules(), {})
    assert not report.passed
    assert [(r.check, r.passed) for r in report.results] == [("files", False)]
    assert not CheckReport(()).passed


def test_the_same_file_twice_fails(tmp_path: Path) -> None:
    file = example_outputs(tmp_path)[1]
    report = run_checks([file, file], CheckRules(), {})
    assert not results(report)["files"].passed


def test_every_file_gets_every_check_that_applies(tmp_path: Path, dataset: Path) -> None:
    outbox = tmp_path / "outbox"
    files = [*example_outputs(outbox),
             put(outbox, "model.pt", pickle.dumps({"w": [1.0]}, protocol=4)),
             put(outbox, "notes.txt", b"just some notes"),
             put(outbox, "curve.csv", b"epoch,loss\n1,0.5\n")]
    report = run_checks(files, CheckRules(), {"demo": dataset})
    assert set(results(report, "model.pt")) == ALL_FILE_CHECKS | {"pickle_scan"}
    assert set(results(report, "notes.txt")) == {"file_type", "file_size", "leak_scan"}
    assert set(results(report, "curve.csv")) == ALL_FILE_CHECKS | {"metrics"}
    assert not results(report, "notes.txt")["file_type"].passed
    assert not results(report, "model.pt")["file_type"].passed
    assert results(report, "model.pt")["pickle_scan"].passed  # informative even when refused
    assert not report.passed


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo owned",))


def torch_zip(pickled: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/data.pkl", pickled)
        archive.writestr("model/byteorder", "little")
        archive.writestr("model/data/0", struct.pack("<4f", 1, 2, 3, 4))
    return buffer.getvalue()


def test_pt_from_torch_save_passes_only_when_the_policy_allows_pickles(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    refused = run_checks([candidate(path)], CheckRules(), {})
    assert [r.check for r in refused.failed] == ["file_type"]
    allowed = run_checks([candidate(path)], CheckRules(allow_pickle=True), {})
    assert allowed.passed, allowed.failed
    assert "torch._utils._rebuild_tensor_v2" in results(allowed, "model.pt")["pickle_scan"].reason


def test_recorded_torch_state_dict_passes_only_when_the_policy_allows_pickles(
        tmp_path: Path) -> None:
    from test_gate_pickles import RECORDED_STATE_DICT  # torch.save output, recorded

    file = put(tmp_path, "model.pt", RECORDED_STATE_DICT)
    assert [r.check for r in run_checks([file], CheckRules(), {}).failed] == ["file_type"]
    assert run_checks([file], CheckRules(allow_pickle=True), {}).passed


@pytest.mark.parametrize("name, data", [
    ("model.pt", torch_zip(pickle.dumps(Exploit(), protocol=2))),
    ("model.pkl", pickle.dumps(Exploit())),
    ("pytorch_model.bin", pickle.dumps(Exploit(), protocol=0)),
])
def test_reduce_payload_fails_even_when_pickles_are_allowed(tmp_path: Path, name: str,
                                                             data: bytes) -> None:
    report = run_checks([put(tmp_path, name, data)], CheckRules(allow_pickle=True), {})
    scan = results(report, name)["pickle_scan"]
    assert not scan.passed
    assert "outside the allowlist" in scan.reason and "global 1 of the stream" in scan.reason
    assert "system" not in scan.reason and os.system.__module__ not in scan.reason
    assert [r.check for r in report.failed] == ["pickle_scan"]


@pytest.mark.parametrize("name, data, check, fragment", [
    ("metrics.json", json.dumps({"accuracy": 0.9, "note": "great"}).encode(), "metrics",
     "string"),
    ("metrics.json", json.dumps({"accuracy": 0.9, "n": 3}).encode(), "metrics", "below 10"),
    ("metrics.json", json.dumps({"support": 3}).encode(), "metrics", "below 10"),
    ("metrics.json", b'{"accuracy": NaN}', "file_format", "NaN"),
    ("metrics.json", b'{"accuracy": NaN}', "metrics", "NaN"),
    ("metrics.json", json.dumps({"loss": [0.1] * 1001}).encode(), "metrics", "1,000"),
    ("metrics.json", b"PK\x03\x04" + b"\0" * 30, "file_format", "zip archive"),
    ("model.zip", b"PK\x03\x04rest", "file_type", "files of this type may not leave"),
    ("model.safetensors", safetensors_file({"w": ([1], [1.0])}) + b"EXTRA", "file_format",
     "after the last tensor"),
    ("model.safetensors", safetensors_file({"w": ([4], [1.0] * 4)})[:-3], "file_format",
     "truncated"),
    ("model.onnx", b"\x08\x07garbage", "file_format", "ONNX"),
    ("model", b"no extension", "file_type", "may not leave"),
])
def test_each_way_a_file_can_fail(tmp_path: Path, name: str, data: bytes, check: str,
                                  fragment: str) -> None:
    report = run_checks([put(tmp_path, name, data)], CheckRules(), {})
    assert not report.passed
    result = results(report, name)[check]
    assert not result.passed, result
    assert fragment in result.reason


def test_metrics_with_large_counts_pass(tmp_path: Path) -> None:
    file = put(tmp_path, "metrics.json", json.dumps({"accuracy": 0.9, "n_test": 2000}).encode())
    assert run_checks([file], CheckRules(), {}).passed


def test_onnx_model_passes(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    report = run_checks([put(tmp_path, "model.onnx", model.SerializeToString())], CheckRules(),
                        {})
    assert report.passed, report.failed


def test_file_over_the_size_cap_fails_and_is_not_opened(tmp_path: Path, dataset: Path) -> None:
    model, metrics = example_outputs(tmp_path)
    rules = CheckRules(max_file_bytes=1024)
    report = run_checks([model, metrics], rules, {"demo": dataset})
    checked = results(report, "model.safetensors")
    assert not checked["file_size"].passed and "at most 1.0 KiB" in checked["file_size"].reason
    assert checked["file_format"].reason.startswith("not run")
    assert checked["leak_scan"].reason.startswith("not run")
    assert all(r.passed for r in results(report, "metrics.json").values())


def test_total_over_the_cap_fails(tmp_path: Path) -> None:
    files = example_outputs(tmp_path)
    report = run_checks(files, CheckRules(max_total_bytes=files[0].size), {})
    assert [r.check for r in report.failed] == ["total_size"]


def test_frozen_copy_that_changed_size_fails(tmp_path: Path) -> None:
    file = example_outputs(tmp_path)[1]
    file.path.write_bytes(file.path.read_bytes() + b" ")
    report = run_checks([file], CheckRules(), {})
    assert "not the" in results(report, "metrics.json")["file_size"].reason
    assert not report.passed


def test_outputs_embedding_dataset_rows_are_caught_without_quoting_them(
        tmp_path: Path, dataset: Path) -> None:
    rows = (dataset / "train.csv").read_text().splitlines()[5:8]
    leaky_csv = ("epoch,loss\n" + "\n".join(rows) + "\n").encode()
    model = safetensors_file({"w": ([1], [1.0])}, metadata={"note": rows[0]})
    report = run_checks([put(tmp_path, "metrics.csv", leaky_csv),
                         put(tmp_path, "model.safetensors", model)], CheckRules(),
                        {"demo": dataset})
    leaks = {r.file: r for r in report.results if r.check == "leak_scan"}
    assert not leaks["metrics.csv"].passed and not leaks["model.safetensors"].passed
    assert "line 6 of train.csv in dataset 'demo'" in leaks["metrics.csv"].reason
    assert "at byte 11:" in leaks["metrics.csv"].reason
    assert "3 record(s)" in leaks["metrics.csv"].reason
    for result in report.results:
        assert not any(row in result.reason for row in rows)
        assert not any(row[:16] in result.reason for row in rows)


def test_leak_scan_switched_off_or_without_datasets_says_so(tmp_path: Path,
                                                            dataset: Path) -> None:
    files = example_outputs(tmp_path)
    off = run_checks(files, CheckRules(leak_scan=False), {"demo": dataset})
    assert off.passed
    assert results(off, "metrics.json")["leak_scan"].reason.startswith("not run")
    none = run_checks(files, CheckRules(), {})
    assert "no dataset was mounted" in results(none, "metrics.json")["leak_scan"].reason


def test_unreadable_dataset_fails_the_leak_scan_closed(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # there, but neither a directory nor a file
    report = run_checks(example_outputs(tmp_path), CheckRules(), {"odd": tmp_path / "fifo"})
    leak = results(report, "model.safetensors")["leak_scan"]
    assert not leak.passed and "'odd'" in leak.reason
    assert not report.passed


def test_a_removed_dataset_version_fails_the_leak_scan_closed(tmp_path: Path,
                                                              dataset: Path) -> None:
    """A version retired and purged (None) or whose directory is gone: the scan cannot know
    what the outputs may not hold, so every file fails it, naming the version."""
    files = example_outputs(tmp_path / "outbox")
    for removed in (None, tmp_path / "purged"):
        report = run_checks(files, CheckRules(), {"demo@2": dataset, "x@1": removed})
        assert not report.passed
        for name in ("model.safetensors", "metrics.json"):
            leak = results(report, name)["leak_scan"]
            assert not leak.passed
            assert "the leak scan needs dataset x@1, whose files were removed" in leak.reason
    both = run_checks(files, CheckRules(), {"x@1": None, "a@3": None})
    assert "needs datasets a@3, x@1, whose files were removed" in \
        results(both, "metrics.json")["leak_scan"].reason
    # The versions still present are scanned as before; a policy without the scan ignores it.
    assert run_checks(files, CheckRules(), {"demo@2": dataset}).passed
    assert run_checks(files, CheckRules(leak_scan=False), {"x@1": None}).passed


def test_a_crashing_check_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    def boom(path: Path, rules: CheckRules | None = None) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(checks, "check_safetensors", boom)
    report = run_checks(example_outputs(tmp_path), CheckRules(), {})
    result = results(report, "model.safetensors")["file_format"]
    assert not result.passed and "could not complete" in result.reason
    assert "bug" not in result.reason and "bug" in caplog.text
    assert not report.passed


def test_row_hidden_behind_json_escapes_in_a_safetensors_header_is_caught(
        tmp_path: Path) -> None:
    root = tmp_path / "patients"
    root.mkdir()
    row = '"Müller, Jürgen",1970-01-01,diabetes'
    (root / "p.csv").write_text(f"name,born,condition\n{row}\n", encoding="utf-8")
    model = safetensors_file({"w": ([1], [1.0])}, metadata={"note": row})
    assert row.encode() not in model  # json.dumps escaped the quotes and the umlauts
    report = run_checks([put(tmp_path, "model.safetensors", model)], CheckRules(),
                        {"patients": root})
    leak = results(report, "model.safetensors")["leak_scan"]
    assert not leak.passed
    assert "once JSON-decoded" in leak.reason and "line 2 of p.csv" in leak.reason
    assert "Müller" not in leak.reason


def test_a_file_the_scan_cannot_read_to_its_end_fails_closed(tmp_path: Path,
                                                              dataset: Path) -> None:
    from unittest import mock

    from sandbox.gate.leakscan import LeakHit, LeakScanner

    unread = LeakHit(offset=4096, length=256 << 20, dataset="", source="", line=0,
                     encoding="gzip", unscanned="stream")
    file = put(tmp_path / "outbox", "model.safetensors",
               safetensors_file({"w": ([2], [0.5, 1.5])}))
    with mock.patch.object(LeakScanner, "scan_file", return_value=[unread]):
        report = run_checks([file], CheckRules(), {"demo": dataset})
    leak = results(report, "model.safetensors")["leak_scan"]
    assert not leak.passed
    assert "cannot be scanned to its end" in leak.reason and "gzip stream at byte 4,096" in \
        leak.reason
