"""Rendered views of release files (sandbox.gate.inspect): safetensors, ONNX, metrics JSON and
CSV, built from parsed structure with sampled statistics.

What these views show is sandbox bytes shown to approvers (not the requester) after the
checks, audited per view: the requester's channel is closed (403 before release).
"""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.gate.inspect import FileView, ViewKind, render_file, tensor_stats, visible
from tests.helpers import raw_safetensors, safetensors_bytes


def _safetensors(tensors: dict[str, tuple[str, list[int], bytes]],
                 metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file by hand: name -> (dtype, shape, little-endian data)."""
    return raw_safetensors(tensors, metadata)[0]


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _serialisable(view: FileView) -> dict[str, Any]:
    body = view.to_dict()
    return json.loads(json.dumps(body, allow_nan=False))  # type: ignore[no-any-return]


def test_safetensors_tensors_stats_and_metadata(tmp_path: Path) -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0], dtype="<f4")
    odd = np.array([np.nan, np.inf, -np.inf, 1.0, 3.0], dtype="<f4")
    counts = np.array([-7, 0, 9], dtype="<i8")
    bf16 = (np.array([0.5, -2.0], dtype="<f4").view("<u4") >> 16).astype("<u2")
    path = _write(tmp_path, "m.safetensors", _safetensors({
        "layer.weight": ("F32", [2, 2], values.tobytes()),
        "odd": ("F32", [5], odd.tobytes()),
        "steps": ("I64", [3], counts.tobytes()),
        "half": ("BF16", [2], bf16.tobytes()),
        "tiny": ("F8_E4M3", [2], b"\x01\x02"),
    }, metadata={"format": "pt", "note": "bell\x07 and \u202egnp.exe"}))

    view = render_file(path, ".safetensors")

    assert view.kind == ViewKind.SAFETENSORS and view.safetensors is not None
    tensors = {t.name: t for t in view.safetensors.tensors}
    weight = tensors["layer.weight"]
    assert (weight.dtype, weight.shape) == ("F32", [2, 2])
    assert weight.stats is not None
    assert (weight.stats.count, weight.stats.sampled, weight.stats.min, weight.stats.max) == (
        4, 4, 1.0, 4.0)
    assert weight.stats.mean == pytest.approx(2.5)
    assert weight.stats.std == pytest.approx(float(np.std([1.0, 2.0, 3.0, 4.0])))
    odd_stats = tensors["odd"].stats
    assert odd_stats is not None
    assert (odd_stats.nan, odd_stats.inf, odd_stats.min, odd_stats.max) == (1, 2, 1.0, 3.0)
    assert odd_stats.mean == pytest.approx(2.0)
    steps = tensors["steps"].stats
    assert steps is not None and (steps.min, steps.max, steps.nan) == (-7, 9, 0)
    assert isinstance(steps.min, int)
    half = tensors["half"].stats
    assert half is not None and (half.min, half.max) == (-2.0, 0.5)
    assert tensors["tiny"].stats is None and "dtype" in tensors["tiny"].note
    assert [(e.key, e.value) for e in view.safetensors.metadata] == [
        ("format", "pt"), ("note", "bell\\x07 and \\u202egnp.exe")]
    assert any("1,000,000 elements" in note for note in view.notes)
    body = _serialisable(view)
    assert body["kind"] == "safetensors"
    assert body["safetensors"]["tensors"][0]["stats"]["count"] == 4


def test_a_huge_sparse_tensor_is_sampled_never_loaded(tmp_path: Path) -> None:
    count = 1 << 28  # 1 GiB of float32, declared and present, but a hole on disk
    head = _safetensors({"big": ("F32", [1 << 14, 1 << 14], b"")})
    header = json.loads(head[8:])
    header["big"]["data_offsets"] = [0, count * 4]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "big.safetensors"
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + count * 4)

    tracemalloc.start()
    try:
        view = render_file(path, ".safetensors", max_elements=20_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert view.safetensors is not None
    [big] = view.safetensors.tensors
    assert big.stats is not None
    assert big.stats.count == count and 0 < big.stats.sampled <= 20_000 and big.stats.runs > 1
    assert (big.stats.min, big.stats.max) == (0.0, 0.0)
    assert peak < 16 << 20, f"{peak:,} bytes allocated: the tensor was read whole"


def test_a_tensor_past_the_end_of_the_file_gets_no_statistics(tmp_path: Path) -> None:
    data = bytearray(safetensors_bytes({"w": [1.0, 2.0]}))
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    header["w"]["shape"] = [1000]
    header["w"]["data_offsets"] = [0, 4000]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = _write(tmp_path, "short.safetensors",
                  struct.pack("<Q", len(raw)) + raw + bytes(data[8 + header_len:]))

    view = render_file(path, ".safetensors")

    assert view.safetensors is not None
    [tensor] = view.safetensors.tensors
    assert tensor.stats is None and "does not match" in tensor.note


def test_the_statistics_budget_of_a_file_runs_out(tmp_path: Path) -> None:
    tensors = {f"t{i}": ("F32", [8], np.full(8, i, dtype="<f4").tobytes()) for i in range(40)}
    view = render_file(_write(tmp_path, "many.safetensors", _safetensors(tensors)),
                       ".safetensors", max_elements=4)
    assert view.safetensors is not None
    sampled = [t for t in view.safetensors.tensors if t.stats is not None]
    assert sum(t.stats.sampled for t in sampled if t.stats) <= 4 * 16
    assert any("budget" in t.note for t in view.safetensors.tensors)
    assert any("Statistics stop" in note for note in view.notes)


def test_sampling_reads_evenly_spaced_runs() -> None:
    values = np.arange(1_000_000, dtype=np.float64)
    stats = tensor_stats(values, 10_000)
    assert stats.count == 1_000_000 and stats.sampled <= 10_000 and stats.runs > 10
    assert stats.min == 0.0 and stats.max == 999_999.0  # the runs reach both ends
    assert stats.mean == pytest.approx(499_999.5, rel=0.01)


def _onnx_model() -> bytes:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([[1.0, -1.0], [0.5, 2.5]], dtype=np.float32),
                                     name="W")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
        helper.make_node("Relu", ["h"], ["r"], name="relu", doc_string="act\x1b[31m"),
        helper.make_node("Relu", ["r"], ["y"], name="relu2", note="a string attribute",
                         codes=list(range(20)), alpha=0.25),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [weight],
        doc_string="graph doc")
    model = helper.make_model(graph, producer_name="trainer<script>",
                              opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"author": "ada", "secret": "row\x00data"})
    return bytes(onnx.shape_inference.infer_shapes(model).SerializeToString())


def test_onnx_graph_operators_io_initializers_and_every_string(tmp_path: Path) -> None:
    path = _write(tmp_path, "model.onnx", _onnx_model())

    view = render_file(path, ".onnx")

    assert view.kind == ViewKind.ONNX and view.onnx is not None, view.error
    model = view.onnx
    assert model.operators == [("Relu", 2), ("MatMul", 1)]
    assert [(n.index, n.op_type, n.inputs, n.outputs) for n in model.nodes] == [
        (0, "MatMul", ["x", "W"], ["h"]), (1, "Relu", ["h"], ["r"]), (2, "Relu", ["r"], ["y"])]
    assert [(v.name, v.elem_type, v.shape) for v in model.inputs] == [
        ("x", "FLOAT", ["batch", 2])]
    assert [(v.name, v.shape) for v in model.outputs] == [("y", ["batch", 2])]
    assert model.nodes[2].attributes == [
        "alpha=0.25", "codes=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, … 4 more]",
        "note=(text: see the strings)"]
    [weight] = model.initializers
    assert (weight.name, weight.dtype, weight.shape) == ("W", "FLOAT", [2, 2])
    assert weight.stats is not None
    assert (weight.stats.min, weight.stats.max, weight.stats.count) == (-1.0, 2.5, 4)
    assert weight.stats.mean == pytest.approx(0.75)
    strings = {s.where: s.value for s in model.strings}
    assert strings["producer_name"] == "trainer<script>"
    assert strings["metadata_props[1].value"] == "row\\x00data"
    assert strings["graph.node[1].doc_string"] == "act\\x1b[31m"
    assert strings["graph.node[2].attribute[2].s"] == "a string attribute"
    assert strings["graph.doc_string"] == "graph doc"
    assert strings["graph.initializer[0].name"] == "W"
    assert model.strings_total == len(model.strings)
    _serialisable(view)


def test_onnx_string_tensors_and_bytes_are_listed(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    labels = helper.make_tensor("labels", TensorProto.STRING, [2], [b"ok", b"\xff\xfebad"])
    graph = helper.make_graph([helper.make_node("Identity", ["labels"], ["out"])], "g", [],
                              [helper.make_tensor_value_info("out", TensorProto.STRING, [2])],
                              [labels])
    path = _write(tmp_path, "s.onnx", helper.make_model(graph).SerializeToString())

    view = render_file(path, ".onnx")

    assert view.onnx is not None
    strings = {s.where: s.value for s in view.onnx.strings}
    assert strings["graph.initializer[0].string_data[1]"] == "\\xff\\xfebad"
    assert view.onnx.initializers[0].stats is None


def test_metrics_json_is_a_table_of_key_paths(tmp_path: Path) -> None:
    path = _write(tmp_path, "metrics.json", json.dumps(
        {"accuracy": 0.9, "per_class": {"a.b": [1, 2.50]}, "note": "tab\there",
         "ok": True}).encode())

    view = render_file(path, ".json")

    assert view.metrics is not None
    assert [(e.key, e.value) for e in view.metrics.entries] == [
        ("accuracy", "0.9"), ("per_class.a.b[0]", "1"), ("per_class.a.b[1]", "2.5"),
        ("note", "tab\\x09here"), ("ok", "true")]


def test_metrics_csv_is_header_row_count_and_column_summaries(tmp_path: Path) -> None:
    path = _write(tmp_path, "metrics.csv",
                  b"epoch,loss,phase\n1,0.5,train\n2,0.25,train\n3,0.125,test\n")

    view = render_file(path, ".csv")

    assert view.csv is not None
    assert view.csv.header == ["epoch", "loss", "phase"] and view.csv.rows == 3
    loss = view.csv.columns[1]
    assert (loss.numeric, loss.other, loss.min, loss.max) == (3, 0, 0.125, 0.5)
    assert loss.mean == pytest.approx(0.875 / 3)
    phase = view.csv.columns[2]
    assert (phase.numeric, phase.other, phase.min) == (0, 3, None)
    assert "train" not in json.dumps(view.to_dict())  # no cell is shown


@pytest.mark.parametrize("name, data, words", [
    ("m.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", "safetensors"),
    ("m.safetensors", b"\x01\x02", "safetensors"),
    ("m.onnx", b"\xff\xff\xff\xff\xff", "its protobuf does not parse"),
    ("metrics.json", b'{"a": 1, "a": 2}', "metrics JSON"),
    ("metrics.csv", b"a,b\n1\n", "metrics CSV"),
])
def test_a_malformed_file_gets_a_parse_failure_view(tmp_path: Path, name: str, data: bytes,
                                                    words: str) -> None:
    view = render_file(_write(tmp_path, name, data), "." + name.rsplit(".", 1)[1])
    assert view.kind == ViewKind.UNREADABLE
    assert view.error.startswith("This file could not be read as") and words in view.error
    assert view.size == len(data)


def test_other_types_have_no_rendered_view(tmp_path: Path) -> None:
    view = render_file(_write(tmp_path, "model.pt", b"\x80\x04K\x01."), ".pt")
    assert view.kind == ViewKind.NONE and view.size == 5
    assert "no rendered view" in view.notes[0]
    missing = render_file(tmp_path / "gone.safetensors", ".safetensors")
    assert missing.kind == ViewKind.UNREADABLE


def test_visible_escapes_what_does_not_print() -> None:
    assert visible("plain text") == "plain text"
    assert visible("a\x00b\n\u202e\u200b\\x00") == "a\\x00b\\x0a\\u202e\\u200b\\\\x00"


@given(st.text())
def test_visible_text_always_prints(text: str) -> None:
    shown = visible(text)
    assert shown.isprintable()
    assert math.isfinite(len(shown))


def test_onnx_subgraphs_and_constants_are_in_the_view(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    def branch(value: float) -> Any:
        constant = helper.make_node("Constant", [], ["out"], value=numpy_helper.from_array(
            np.array([value], dtype=np.float32), name=f"c{value:g}"))
        return helper.make_graph([constant], f"branch{value:g}", [],
                                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])

    choose = helper.make_node("If", ["cond"], ["y"], then_branch=branch(1.0),
                              else_branch=branch(-1.0))
    graph = helper.make_graph([choose], "g",
                              [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    view = render_file(_write(tmp_path, "if.onnx", helper.make_model(graph).SerializeToString()),
                       ".onnx")

    assert view.onnx is not None
    assert dict(view.onnx.operators) == {"If": 1, "Constant": 2}
    assert {n.graph for n in view.onnx.nodes} == {
        "graph", "graph.node[0].attribute[0].g", "graph.node[0].attribute[1].g"}
    constants = {t.name: t for t in view.onnx.initializers}
    assert set(constants) == {"c1", "c-1"}
    assert constants["c-1"].stats is not None and constants["c-1"].stats.min == -1.0
    assert constants["c1"].where.endswith(".node[0].attribute[0].t")
    assert view.onnx.inputs[0].shape == [] and view.onnx.inputs[0].elem_type == "BOOL"
