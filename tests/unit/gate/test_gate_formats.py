"""The gate's format checks: safetensors, ONNX, JSON, CSV and archive sniffing, on real files
written by the libraries people use (where installed) and on hand-made corruptions."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.gate.errors import InvalidFormat
from sandbox.gate.formats import (
    SAFETENSORS_DTYPE_BITS,
    check_onnx,
    check_safetensors,
    onnx_strings,
    parse_csv,
    parse_json,
    refuse_archive,
    sniff_archive,
)
from sandbox.gate.rules import CheckRules


def safetensors_file(tensors: dict[str, tuple[str, list[int], bytes]],
                     metadata: dict[str, str] | None = None,
                     offsets: dict[str, list[int]] | None = None,
                     pad: bool = True) -> bytes:
    """A safetensors file written by hand: {name: (dtype, shape, raw bytes)}."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata is not None else {}
    payload = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": (offsets or {}).get(
                            name, [len(payload), len(payload) + len(raw)])}
        payload += raw
    encoded = json.dumps(header).encode()
    if pad:
        encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + payload


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- safetensors ------------------------------------------------------------------------------


def test_real_safetensors_written_by_torch_passes(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2),
                                torch.nn.BatchNorm1d(2))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors["half"] = torch.ones(3, 5, dtype=torch.float16)
    tensors["brain"] = torch.ones(7, dtype=torch.bfloat16)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["flag"] = torch.tensor([True, False])
    path = tmp_path / "model.safetensors"
    st_torch.save_file(tensors, str(path), metadata={"format": "pt"})
    layout = check_safetensors(path)
    assert layout.tensors == len(tensors)
    assert layout.metadata_entries == 1
    assert layout.header_bytes + 8 + layout.data_bytes == path.stat().st_size


def test_real_safetensors_written_by_numpy_passes(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    st_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "model.safetensors"
    st_numpy.save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4),
                        "i": np.arange(5, dtype=np.int64), "u": np.zeros(3, dtype=np.uint8)},
                       str(path))
    assert check_safetensors(path).tensors == 3


def test_hand_made_safetensors_passes(tmp_path: Path) -> None:
    data = safetensors_file({"b": ("F32", [2], f32(1, 2)), "a": ("F32", [1, 1], f32(3)),
                             "z": ("F32", [0], b"")}, metadata={"k": "v"})
    assert check_safetensors(write(tmp_path, "m.safetensors", data)).tensors == 3


@pytest.mark.parametrize("corrupt, fragment", [
    (lambda d: d + b"EXTRA", "after the last tensor"),
    (lambda d: d + b"\0", "after the last tensor"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[:-8], "truncated"),
    (lambda d: d[:20], "truncated"),
    (lambda d: d[:7], "too short"),
    (lambda d: b"", "too short"),
    (lambda d: struct.pack("<Q", 200_000_000) + d[8:], "limit"),
    (lambda d: struct.pack("<Q", len(d)) + d[8:], "truncated"),
])
def test_safetensors_with_trailing_or_missing_bytes_fails(tmp_path: Path, corrupt: Any,
                                                          fragment: str) -> None:
    good = safetensors_file({"w": ("F32", [4], f32(1, 2, 3, 4)), "b": ("F32", [1], f32(5))})
    with pytest.raises(InvalidFormat, match=fragment):
        check_safetensors(write(tmp_path, "m.safetensors", corrupt(good)))


def test_real_safetensors_with_trailing_bytes_or_truncated_fails(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "model.safetensors"
    st_torch.save_file({"w": torch.randn(8, 8)}, str(path))
    good = path.read_bytes()
    path.write_bytes(good + b"1,2,3,4")
    with pytest.raises(InvalidFormat, match="after the last tensor"):
        check_safetensors(path)
    path.write_bytes(good[:-100])
    with pytest.raises(InvalidFormat, match="truncated"):
        check_safetensors(path)


@pytest.mark.parametrize("offsets, fragment", [
    ({"b": [20, 24]}, "gap"),  # leaves bytes 16-20 uncovered
    ({"b": [12, 16]}, "overlaps"),  # shares bytes with w
    ({"b": [16, 24]}, "need 4"),  # claims 8 bytes for one float
    ({"w": [0, 16], "b": [0, 16]}, "need 4"),
    ({"b": [16, 15]}, "data_offsets"),
    ({"b": [16]}, "data_offsets"),
    ({"b": [-4, 0]}, "data_offsets"),
    ({"b": [16.0, 20.0]}, "data_offsets"),
    ({"w": [4, 20], "b": [0, 4]}, None),  # out of order but exact: fine
])
def test_safetensors_header_lying_about_offsets_fails(tmp_path: Path, offsets: dict[str, Any],
                                                      fragment: str | None) -> None:
    data = safetensors_file({"w": ("F32", [4], f32(1, 2, 3, 4)), "b": ("F32", [1], f32(5))},
                            offsets=offsets)
    path = write(tmp_path, "m.safetensors", data)
    if fragment is None:
        assert check_safetensors(path).tensors == 2
    else:
        with pytest.raises(InvalidFormat, match=fragment):
            check_safetensors(path)


@pytest.mark.parametrize("header, fragment", [
    (b'[1, 2]', "not a JSON object"),
    (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", '
     b'"shape": [1], "data_offsets": [0, 4]}}', "twice"),
    (b'{"w": {"dtype": "X99", "shape": [1], "data_offsets": [0, 4]}}', "unknown dtype"),
    (b'{"w": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}', "shape"),
    (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}', "exactly"),
    (b'{"w": {"dtype": "F32", "shape": [1]}}', "exactly"),
    (b'{"__metadata__": {"a": 1}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
     "__metadata__"),
    (b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', "NaN"),
    (b'{"w": {"dtype": "F4", "shape": [3], "data_offsets": [0, 4]}}', "whole number"),
    (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}\0', "NUL"),
    (b'\xff{}', "not a JSON object"),
])
def test_safetensors_bad_headers_fail(tmp_path: Path, header: bytes, fragment: str) -> None:
    data = struct.pack("<Q", len(header)) + header + f32(1)
    with pytest.raises(InvalidFormat, match=fragment):
        check_safetensors(write(tmp_path, "m.safetensors", data))


def test_safetensors_error_never_quotes_a_long_tensor_name(tmp_path: Path) -> None:
    secret = "alice smith,1970-01-01,diabetes"  # what a leaky tensor name might carry
    data = safetensors_file({secret: ("F32", [2], f32(1))})  # 4 bytes for 8 needed
    with pytest.raises(InvalidFormat) as caught:
        check_safetensors(write(tmp_path, "m.safetensors", data))
    assert secret not in caught.value.user_message
    assert "tensor 1" in caught.value.user_message


_DTYPES = sorted(d for d, bits in SAFETENSORS_DTYPE_BITS.items() if bits % 8 == 0)


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, tuple[str, list[int], bytes]]:
    count = draw(st.integers(0, 6))
    names = draw(st.lists(st.text("abcdefghij._0123456789", min_size=1, max_size=12),
                          min_size=count, max_size=count, unique=True))
    result = {}
    for name in names:
        dtype = draw(st.sampled_from(_DTYPES))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        size = SAFETENSORS_DTYPE_BITS[dtype] // 8
        for dim in shape:
            size *= dim
        result[name] = (dtype, shape, draw(st.binary(min_size=size, max_size=size)))
    return result


@settings(max_examples=60, deadline=None)
@given(tensors(), st.binary(min_size=1, max_size=16), st.booleans())
def test_random_safetensors_round_trip_and_any_extra_or_missing_byte_fails(
        tmp_path_factory: pytest.TempPathFactory, content: dict[str, tuple[str, list[int], bytes]],
        extra: bytes, pad: bool) -> None:
    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    good = safetensors_file(content, pad=pad)
    path.write_bytes(good)
    layout = check_safetensors(path)
    assert layout.tensors == len(content)
    assert layout.data_bytes == sum(len(raw) for _, _, raw in content.values())
    path.write_bytes(good + extra)
    with pytest.raises(InvalidFormat):
        check_safetensors(path)
    if layout.data_bytes:
        path.write_bytes(good[:-1])
        with pytest.raises(InvalidFormat):
            check_safetensors(path)


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.sampled_from(["w", "b", "gamma", "beta", "running_mean"]),
                       st.lists(st.integers(1, 6), min_size=1, max_size=3), max_size=5))
def test_random_tensors_written_by_safetensors_pass(tmp_path_factory: pytest.TempPathFactory,
                                                    shapes: dict[str, list[int]]) -> None:
    np = pytest.importorskip("numpy")
    st_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    rng = np.random.default_rng(len(shapes))
    st_numpy.save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()},
                       str(path))
    assert check_safetensors(path).tensors == len(shapes)


def _st_limit(tmp_path: Path, rules: CheckRules, *, names: list[str] | None = None,
              metadata: dict[str, str] | None = None) -> InvalidFormat | None:
    tensors = {name: ("F32", [1], f32(1)) for name in names or ["w"]}
    path = write(tmp_path, "m.safetensors", safetensors_file(tensors, metadata=metadata))
    try:
        check_safetensors(path, rules)
    except InvalidFormat as exc:
        return exc
    return None


def test_safetensors_metadata_bytes_limit(tmp_path: Path) -> None:
    rules = CheckRules(max_metadata_bytes=100)
    assert _st_limit(tmp_path, rules, metadata={"k": "v" * 49, "é": "x" * 48}) is None  # 100
    refused = _st_limit(tmp_path, rules, metadata={"k": "v" * 50, "é": "x" * 48})
    assert refused is not None and refused.limit == "max_metadata_bytes"
    assert "101 bytes of __metadata__" in refused.user_message
    assert CheckRules().max_metadata_bytes == 4096


def test_safetensors_tensor_name_length_limit(tmp_path: Path) -> None:
    rules = CheckRules(max_name_length=10)
    assert _st_limit(tmp_path, rules, names=["a", "b" * 10]) is None
    refused = _st_limit(tmp_path, rules, names=["a", "b" * 11])
    assert refused is not None and refused.limit == "max_name_length"
    assert "tensor 2 with a name of 11 characters" in refused.user_message
    assert "bbb" not in refused.user_message and "bbb" in refused.detail
    assert CheckRules().max_name_length == 128


@pytest.mark.parametrize("name", ["with space", "comma,name", "é", "quote'd", "", "a\nb"])
def test_safetensors_tensor_names_must_be_plain(tmp_path: Path, name: str) -> None:
    refused = _st_limit(tmp_path, CheckRules(), names=["ok.weight", name])
    assert refused is not None and "tensor 2 with a name that is not plain" in refused.user_message


def test_safetensors_all_tensor_names_limit(tmp_path: Path) -> None:
    rules = CheckRules(max_model_strings_bytes=30)
    assert _st_limit(tmp_path, rules, names=["a" * 10, "b" * 10, "c" * 10]) is None
    refused = _st_limit(tmp_path, rules, names=["a" * 10, "b" * 10, "c" * 11])
    assert refused is not None and refused.limit == "max_model_strings_bytes"
    assert "totalling 31 bytes" in refused.user_message


# --- ONNX -------------------------------------------------------------------------------------


def _onnx_model() -> Any:
    onnx = pytest.importorskip("onnx")
    np = pytest.importorskip("numpy")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_onnx_built_with_helper_passes(tmp_path: Path) -> None:
    model = _onnx_model()
    summary = check_onnx(write(tmp_path, "m.onnx", model.SerializeToString()))
    assert (summary.nodes, summary.initializers) == (2, 1)
    assert "17" in summary.opset


@pytest.mark.parametrize("corrupt", [
    lambda d: d[: len(d) // 2],
    lambda d: b"",
    lambda d: d[:5] + bytes([d[5] ^ 0xFF]) + d[6:],
    lambda d: d + b"\x00\x00\x00",
    lambda d: b"not a model at all",
], ids=["truncated", "empty", "flipped-byte", "trailing-zeros", "text"])
def test_corrupted_onnx_fails(tmp_path: Path, corrupt: Any) -> None:
    data = corrupt(_onnx_model().SerializeToString())
    with pytest.raises(InvalidFormat):
        check_onnx(write(tmp_path, "m.onnx", data))


def test_onnx_with_unknown_protobuf_fields_fails(tmp_path: Path) -> None:
    hidden = b"\xc2\x3e" + bytes([20]) + b"a row of the dataset"  # field 1000, 20 bytes
    with pytest.raises(InvalidFormat, match="not part of ONNX"):
        check_onnx(write(tmp_path, "m.onnx", _onnx_model().SerializeToString() + hidden))


def test_onnx_with_external_data_fails(tmp_path: Path) -> None:
    model = _onnx_model()
    from onnx import TensorProto

    tensor = model.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    with pytest.raises(InvalidFormat, match="external"):
        check_onnx(write(tmp_path, "m.onnx", model.SerializeToString()))


def _onnx_limit(tmp_path: Path, model: Any, rules: CheckRules) -> InvalidFormat | None:
    try:
        check_onnx(write(tmp_path, "m.onnx", model.SerializeToString()), rules)
    except InvalidFormat as exc:
        return exc
    return None


def test_onnx_strings_enumerates_every_string_by_kind() -> None:
    from onnx import helper

    model = _onnx_model()
    model.doc_string = "about"
    model.producer_name = "maker"
    model.graph.node[0].doc_string = "node doc"
    model.graph.node[1].attribute.append(helper.make_attribute("mode", "fast"))
    helper.set_model_props(model, {"author": "someone"})
    found = {(s.kind, s.where, s.text) for s in onnx_strings(model)}
    assert ("doc", "doc_string", "about") in found
    assert ("doc", "graph.node[1].doc_string", "node doc") in found
    assert ("name", "producer_name", "maker") in found
    assert ("name", "graph.name", "mlp") in found
    assert ("name", "graph.node[1].op_type", "MatMul") in found
    assert ("name", "graph.node[1].input[2]", "W") in found
    assert ("name", "graph.initializer[1].name", "W") in found
    assert ("value", "graph.node[2].attribute[1].s", "fast") in found
    assert ("metadata", "metadata_props[1].key", "author") in found
    assert ("metadata", "metadata_props[1].value", "someone") in found
    assert not any("raw_data" in where for _, where, _ in found)  # weights are not text


def test_onnx_name_length_limit(tmp_path: Path) -> None:
    model = _onnx_model()
    model.graph.name = "g" * 20
    assert _onnx_limit(tmp_path, model, CheckRules(max_name_length=20)) is None
    refused = _onnx_limit(tmp_path, model, CheckRules(max_name_length=19))
    assert refused is not None and refused.limit == "max_name_length"
    assert "at graph.name" in refused.user_message and "ggg" not in refused.user_message


def test_onnx_doc_strings_and_metadata_share_the_metadata_limit(tmp_path: Path) -> None:
    from onnx import helper

    model = _onnx_model()
    model.doc_string = "d" * 50
    helper.set_model_props(model, {"k" * 20: "v" * 30})
    assert _onnx_limit(tmp_path, model, CheckRules(max_metadata_bytes=100)) is None
    refused = _onnx_limit(tmp_path, model, CheckRules(max_metadata_bytes=99))
    assert refused is not None and refused.limit == "max_metadata_bytes"
    assert "ddd" not in refused.user_message and "kkk" not in refused.user_message


def test_onnx_all_strings_limit_counts_string_attributes(tmp_path: Path) -> None:
    from onnx import helper

    model = _onnx_model()
    baseline = sum(s.size for s in onnx_strings(model))
    model.graph.node.append(helper.make_node("Constant", [], ["c"], value_string="s" * 100))
    total = baseline + 100 + len("c") + len("Constant") + len("value_string")
    assert total == sum(s.size for s in onnx_strings(model))
    assert _onnx_limit(tmp_path, model, CheckRules(max_model_strings_bytes=total)) is None
    refused = _onnx_limit(tmp_path, model, CheckRules(max_model_strings_bytes=total - 1))
    assert refused is not None and refused.limit == "max_model_strings_bytes"


def test_onnx_opsets_in_a_reason_are_bounded() -> None:
    from onnx import helper

    from sandbox.gate.formats import _opsets

    imports = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 123456789),
               helper.make_opsetid("", 99), *(helper.make_opsetid(f"d{i}", i * 7919)
                                              for i in range(50))]
    assert _opsets(imports) == ("ai.onnx 17, ai.onnx.ml (a version above 100), "
                                "51 other opset import(s)")


def test_onnx_checker_message_is_never_echoed(tmp_path: Path) -> None:
    model = _onnx_model()
    model.graph.node[0].op_type = "SecretRowAsOp"
    refused = _onnx_limit(tmp_path, model, CheckRules())
    assert refused is not None and "checker refused it" in refused.user_message
    assert "SecretRowAsOp" not in refused.user_message and "SecretRowAsOp" in refused.detail


# --- JSON and CSV -----------------------------------------------------------------------------


@pytest.mark.parametrize("data, fragment", [
    (b'{"a": 1, "a": 2}', "twice"),
    (b'{"a": {"b": 1, "b": 1}}', "twice"),
    (b'{"a": NaN}', "NaN"),
    (b'{"a": Infinity}', "Infinity"),
    (b'{"a": -Infinity}', "Infinity"),
    (b'{"a": 1', "not valid"),
    (b'{"a": 1}garbage', "not valid"),
    (b'\xef\xbb\xbf{"a": 1}', "byte-order mark"),
    (b'{"a": "\xff"}', "UTF-8"),
    (b'{"a": "\x00"}', "NUL"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid"),
])
def test_strict_json_refuses(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidFormat, match=fragment):
        parse_json(data)


def test_strict_json_accepts_plain_json() -> None:
    assert parse_json(b'{"a": 1.5, "b": [1, 2], "c": {"d": -3e-2}}') == {
        "a": 1.5, "b": [1, 2], "c": {"d": -0.03}}


@pytest.mark.parametrize("data, fragment", [
    (b"a,b\n1,2\n3\n", "columns"),
    (b"a,b\n1,2,3\n", "columns"),
    (b"", "empty"),
    (b"\n\n", "empty"),
    (b"a,b\n\xff,1\n", "UTF-8"),
    (b'a,b\n"1,2\n', "not valid CSV"),
])
def test_strict_csv_refuses(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidFormat, match=fragment):
        parse_csv(data)


def test_strict_csv_accepts_a_table() -> None:
    assert parse_csv(b"epoch,loss\r\n1,0.5\r\n\r\n2,0.25\r\n") == [
        ["epoch", "loss"], ["1", "0.5"], ["2", "0.25"]]


# --- archives ---------------------------------------------------------------------------------


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("metrics.json", '{"accuracy": 0.9}')
    return buffer.getvalue()


def _tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("rows.csv")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"1,2\n"))
    return buffer.getvalue()


@pytest.mark.parametrize("data, what", [
    (_zip(), "zip"),
    (gzip.compress(b'{"a": 1}'), "gzip"),
    (bz2.compress(b'{"a": 1}'), "bzip2"),
    (lzma.compress(b'{"a": 1}'), "xz"),
    (b"7z\xbc\xaf\x27\x1c\x00\x04rest", "7z"),
    (b"\x28\xb5\x2f\xfdrest", "zstd"),
    (_tar(), "tar"),
])
def test_archives_are_sniffed_whatever_their_name(tmp_path: Path, data: bytes, what: str) -> None:
    assert what in (sniff_archive(data[:512]) or "")
    with pytest.raises(InvalidFormat, match=what):
        refuse_archive(write(tmp_path, "metrics.json", data))


@pytest.mark.parametrize("data", [b'{"BZh": 1}', b"BZh_score\n1\n", b"PK,x\n1,2\n", b"{}"])
def test_plain_text_is_not_an_archive(data: bytes) -> None:
    assert sniff_archive(data) is None
