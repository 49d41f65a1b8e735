"""The gate's reasons never carry file content: a random canary written into every field that
can hold text, in files of every type the gate knows (passing and failing), never comes back
in the check report, verbatim or base64/hex encoded."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
import string
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.gate.checks import CandidateFile, CheckReport, run_checks
from sandbox.gate.rules import CheckRules

onnx = pytest.importorskip("onnx")
np = pytest.importorskip("numpy")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

#: Not a word of the gate's, so any sighting in a report is an echo of the file.
MARK = "QzxCanary"
CANARIES = st.text(alphabet=string.ascii_letters + string.digits, min_size=12,
                   max_size=40).map(lambda tail: MARK + tail)

Builder = Callable[[str], bytes]


def forms(canary: str) -> list[str]:
    """The canary as a report could echo it: verbatim, in part, base64 (every alignment), hex."""
    raw = canary.encode()
    found = [canary, MARK, MARK.lower(), raw.hex(), raw.hex().upper()]
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw).decode()
        found.append(encoded[4:-4])  # the middle, which no alignment changes
    return found


# --- safetensors ------------------------------------------------------------------------------


def safetensors(header: dict[str, Any], payload: bytes = b"", raw: bytes | None = None) -> bytes:
    encoded = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + payload


def f32_tensor(begin: int, count: int = 1, dtype: str = "F32") -> dict[str, Any]:
    return {"dtype": dtype, "shape": [count], "data_offsets": [begin, begin + 4 * count]}


SAFETENSORS: dict[str, Builder] = {
    "ok.safetensors": lambda c: safetensors(
        {"__metadata__": {c: c}, c: f32_tensor(0), f"{c}.b": f32_tensor(4)}, b"\0" * 8),
    "dtype.safetensors": lambda c: safetensors({c: f32_tensor(0, dtype=c)}, b"\0" * 4),
    "overlap.safetensors": lambda c: safetensors(
        {c: f32_tensor(0), f"{c}.b": f32_tensor(0)}, b"\0" * 4),
    "keys.safetensors": lambda c: safetensors({c: {"dtype": "F32", c: 1}}),
    "name.safetensors": lambda c: safetensors({f"{c} {c}": f32_tensor(0)}, b"\0" * 4),
    "long.safetensors": lambda c: safetensors({c * 8: f32_tensor(0)}, b"\0" * 4),
    "meta.safetensors": lambda c: safetensors({"__metadata__": {c: c * 200}}),
    "metatype.safetensors": lambda c: safetensors({"__metadata__": {c: [c]}}),
    "dup.safetensors": lambda c: safetensors({}, raw=f'{{"{c}": 1, "{c}": 2}}'.encode()),
    "syntax.safetensors": lambda c: safetensors({}, raw=f'{{"{c}": {c}}}'.encode()),
}


# --- ONNX -------------------------------------------------------------------------------------


def onnx_model(c: str, op_type: str = "MatMul", domain: str = "") -> bytes:
    weight = numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), f"{c}.w")
    weight.doc_string = c
    constant = helper.make_node("Constant", [], [f"{c}.s"], name=f"{c}.const", doc_string=c,
                                value_string=c)
    matmul = helper.make_node(op_type, [f"{c}.x", f"{c}.w"], [f"{c}.y"], name=c, doc_string=c,
                              domain=domain)
    graph = helper.make_graph(
        [constant, matmul], c,
        [helper.make_tensor_value_info(f"{c}.x", TensorProto.FLOAT, [c, 4], doc_string=c)],
        [helper.make_tensor_value_info(f"{c}.y", TensorProto.FLOAT, [c, 2])], [weight],
        doc_string=c)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name=c,
                              producer_version=c, doc_string=c, domain=c)
    helper.set_model_props(model, {c: c})
    return bytes(model.SerializeToString())


def onnx_with(c: str, change: Callable[[Any], None]) -> bytes:
    model = onnx.load_model_from_string(onnx_model(c))
    change(model)
    return bytes(model.SerializeToString())


ONNX: dict[str, Builder] = {
    "ok.onnx": onnx_model,
    "op.onnx": lambda c: onnx_model(c, op_type=c),
    "domain.onnx": lambda c: onnx_model(c, op_type=c, domain=c),
    "long.onnx": lambda c: onnx_with(c, lambda m: setattr(m.graph, "name", c * 8)),
    "doc.onnx": lambda c: onnx_with(c, lambda m: setattr(m, "doc_string", c * 200)),
    "wiring.onnx": lambda c: onnx_with(c, lambda m: m.graph.node[1].input.append(c + "z")),
}


# --- metrics ----------------------------------------------------------------------------------


METRICS: dict[str, Builder] = {
    "ok.json": lambda c: json.dumps({c: 0.5, f"n_{c}": 20, "x": {c: [1, 2]}}).encode(),
    "count.json": lambda c: json.dumps({"a": {c: {f"n_{c}": 3}}}).encode(),
    "counts.json": lambda c: json.dumps({f"{c}_counts": [50, 2]}).encode(),
    "string.json": lambda c: json.dumps({c: c}).encode(),
    "null.json": lambda c: json.dumps({c: {c: None}}).encode(),
    "longkey.json": lambda c: json.dumps({c * 4: 1}).encode(),
    "badkey.json": lambda c: json.dumps({f"{c} {c}": 1}).encode(),
    "deep.json": lambda c: json.dumps({c: {c: {c: {c: {c: 1}}}}}).encode(),
    "dup.json": lambda c: f'{{"{c}": 1, "{c}": 2}}'.encode(),
    "syntax.json": lambda c: f'{{"{c}": 1 {c}}}'.encode(),
    "number.json": lambda c: f'{{"{c}": 1{"0" * 40}}}'.encode(),
    "ok.csv": lambda c: f"{c},n_{c}\n0.5,20\n".encode(),
    "header.csv": lambda c: f"{c},{c}x,{c}y\n".encode(),
    "wide.csv": lambda c: (",".join(f"{c}{i}" for i in range(200)) + "\n").encode(),
    "cell.csv": lambda c: f"epoch,{c}\n1,{c}\n".encode(),
    "count.csv": lambda c: f"epoch,{c}_count\n1,3\n".encode(),
    "dupcol.csv": lambda c: f"{c},{c}\n1,2\n".encode(),
    "quote.csv": lambda c: f'a,b\n"{c}"{c},1\n'.encode(),
    "width.csv": lambda c: f"{c}\n1,{c}\n".encode(),
}


# --- pickles ----------------------------------------------------------------------------------


def global_pickle(c: str) -> bytes:
    """protocol 2: GLOBAL '<c> <c>', EMPTY_TUPLE, REDUCE, STOP."""
    return b"\x80\x02c" + c.encode() + b"\n" + c.encode() + b"\n)R."


def stack_global_pickle(c: str) -> bytes:
    """protocol 4: STACK_GLOBAL of two canary strings, called."""
    name = c.encode()
    short = b"\x8c" + bytes([len(name)]) + name
    return b"\x80\x04" + short + short + b"\x93)R."


def torch_zip(c: str, pickled: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{c}/data.pkl", pickled)
        archive.writestr(f"{c}/{c}.pkl", global_pickle(c))
        archive.writestr(f"{c}/byteorder", "little")
    return buffer.getvalue()


PICKLES: dict[str, Builder] = {
    "ok.pt": lambda c: pickle.dumps(OrderedDict([(c, c), (f"{c}.b", 1.0)]), protocol=2),
    "global.pt": global_pickle,
    "stack.pt": stack_global_pickle,
    "zip.pt": lambda c: torch_zip(c, pickle.dumps(OrderedDict([(c, c)]), protocol=2)),
    "tail.pkl": lambda c: pickle.dumps(OrderedDict([(c, 1)]), protocol=2) + c.encode(),
}

REFUSED: dict[str, Builder] = {
    "notes.txt": lambda c: c.encode(),
    "weights.npy": lambda c: c.encode() * 3,
}

ALL_FILES = {**SAFETENSORS, **ONNX, **METRICS, **PICKLES, **REFUSED}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets") / "patients"
    root.mkdir()
    rows = [f"P{i:05d},1950-01-{i % 28 + 1:02d},clinic {i % 7},score {i * 37 % 101}"
            for i in range(40)]
    (root / "rows.csv").write_text("id,born,site,score\n" + "\n".join(rows) + "\n")
    return root


def check_all(root: Path, canary: str, dataset: Path,
              builders: dict[str, Builder]) -> CheckReport:
    files = []
    for name, build in builders.items():
        data = build(canary)
        path = root / name
        path.write_bytes(data)
        files.append(CandidateFile(name, path, len(data), hashlib.sha256(data).hexdigest()))
    return run_checks(files, CheckRules(allow_pickle=True), {"patients": dataset})


@settings(max_examples=40)
@given(canary=CANARIES)
def test_no_reason_carries_the_canary(tmp_path_factory: pytest.TempPathFactory, dataset: Path,
                                      canary: str) -> None:
    root = tmp_path_factory.mktemp("outbox")
    report = check_all(root, canary, dataset, ALL_FILES)
    text = json.dumps(report.to_dict())
    for form in forms(canary):
        assert form not in text, (form, [r for r in report.results if form in r.reason])


def test_the_canary_files_exercise_the_refusals_they_were_built_for(
        tmp_path: Path, dataset: Path) -> None:
    """The property above is only worth something if the files reach the reasons that used
    to echo: check which files pass and which fail, and on what."""
    report = check_all(tmp_path, MARK + "abcdefghijkl", dataset, ALL_FILES)
    failed = {(r.file, r.check) for r in report.failed}
    passing = {"ok.safetensors", "ok.onnx", "domain.onnx", "ok.json", "ok.csv", "header.csv",
               "ok.pt"}
    assert not {name for name, _ in failed} & passing, report.failed
    for name in set(ALL_FILES) - passing:
        assert any(file == name for file, _ in failed), name
    expected = {
        ("dtype.safetensors", "file_format"), ("overlap.safetensors", "file_format"),
        ("meta.safetensors", "file_format"), ("long.onnx", "file_format"),
        ("doc.onnx", "file_format"), ("op.onnx", "file_format"),
        ("wiring.onnx", "file_format"), ("count.json", "metrics"), ("counts.json", "metrics"),
        ("count.csv", "metrics"), ("wide.csv", "metrics"), ("global.pt", "pickle_scan"),
        ("stack.pt", "pickle_scan"), ("zip.pt", "pickle_scan"), ("notes.txt", "file_type"),
    }
    assert expected <= failed, expected - failed
    limits = {(r.file, r.limit) for r in report.failed if r.limit}
    assert {("meta.safetensors", "max_metadata_bytes"), ("long.safetensors", "max_name_length"),
            ("long.onnx", "max_name_length"), ("doc.onnx", "max_metadata_bytes"),
            ("count.json", "small_count_k"), ("deep.json", "max_key_depth"),
            ("longkey.json", "max_key_length"), ("wide.csv", "max_metric_key_bytes")} <= limits
    domain = next(r for r in report.results
                  if (r.file, r.check) == ("domain.onnx", "file_format"))
    assert "ai.onnx 17, 1 other opset import(s)" in domain.reason
