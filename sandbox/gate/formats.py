"""Per-type format validation: a file must really be what its extension says, and nothing more.

Owns the strict readers for safetensors headers, ONNX models, JSON and CSV, the limits on the
text a model may carry, and the sniffing that keeps archives and compressed streams (which
would hide content from the leak scan) out. Reasons name positions, never file content.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.gate.errors import InvalidFormat
from sandbox.gate.rules import CheckRules

#: The safetensors library's own cap on the JSON header.
MAX_SAFETENSORS_HEADER = 100_000_000

#: Bits per element of every safetensors dtype (safetensors 0.8).
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E5M2FNUZ": 8,
    "F8_E4M3FNUZ": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

# (offset, magic, what): containers and compressed streams, refused for every non-pickle type.
_ARCHIVE_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"PK\x03\x04", "a zip archive"),
    (0, b"PK\x05\x06", "a zip archive"),
    (0, b"PK\x07\x08", "a zip archive"),
    (0, b"\x1f\x8b", "a gzip stream"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (0, b"\xfd7zXZ\x00", "an xz stream"),
    (0, b"\x28\xb5\x2f\xfd", "a zstd stream"),
    (0, b"Rar!\x1a\x07", "a rar archive"),
    (257, b"ustar\x0000", "a tar archive"),
    (257, b"ustar  \x00", "a tar archive"),
)
_BZIP2 = re.compile(rb"BZh[1-9]1AY&SY")
SNIFF_BYTES = 512

#: A tensor name: what `state_dict()` keys look like (`encoder.layers.0.weight`).
TENSOR_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:/\-]+$")

#: The server-side detail of a refusal quotes at most this much of the file, for the log.
DETAIL_CHARS = 200


def _detail(text: object) -> str:
    """What the file held, for the server log only (never for a reason)."""
    shown = repr(text)
    return shown if len(shown) <= DETAIL_CHARS else shown[:DETAIL_CHARS] + "..."


def _utf8_bytes(text: str) -> int:
    # JSON may hold lone surrogates (\ud800); they still take room, so count them.
    return len(text.encode("utf-8", "surrogatepass"))


def sniff_archive(head: bytes) -> str | None:
    """What archive or compressed stream these first bytes start, if any."""
    for offset, magic, what in _ARCHIVE_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return what
    if _BZIP2.match(head):
        return "a bzip2 stream"
    return None


def refuse_archive(path: Path) -> None:
    with path.open("rb") as handle:
        what = sniff_archive(handle.read(SNIFF_BYTES))
    if what:
        raise InvalidFormat(f"is {what}; archives and compressed files may not leave (they hide "
                            "their content from the checks)")


# --- JSON -------------------------------------------------------------------------------------


def decode_utf8(data: bytes, what: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidFormat(f"is not UTF-8 {what} (bad byte at offset {exc.start:,})") from exc
    if text.startswith("\ufeff"):
        raise InvalidFormat(f"starts with a byte-order mark; write plain UTF-8 {what}")
    if "\0" in text:
        raise InvalidFormat(f"holds a NUL character, which {what} never does")
    return text


def parse_json(data: bytes, what: str = "JSON",
               parse_number: Callable[[str], Any] | None = None) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity literals.

    `parse_number` receives the literal text of every number (ints and floats alike).
    """
    text = decode_utf8(data, what)

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for index, (key, value) in enumerate(items, start=1):
            if key in result:
                raise InvalidFormat(f"has the same key twice in one object (key {index} of that "
                                    f"object repeats an earlier one); {what} must not repeat "
                                    "keys", detail=f"duplicate key {_detail(key)}")
            result[key] = value
        return result

    def constant(name: str) -> Any:
        raise InvalidFormat(f"holds NaN or Infinity, which is not valid {what}")

    number = parse_number or float
    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant,
                          parse_float=number, parse_int=parse_number or int)
    except json.JSONDecodeError as exc:
        # json's own message is a fixed text, but the reason stays in the gate's words.
        raise InvalidFormat(f"is not valid {what}: its syntax breaks at line {exc.lineno}, "
                            f"column {exc.colno}", detail=exc.msg) from exc
    except RecursionError as exc:
        raise InvalidFormat(f"is nested too deeply to be {what}") from exc


# --- CSV --------------------------------------------------------------------------------------


def parse_csv(data: bytes) -> list[list[str]]:
    """Strict CSV: UTF-8, a header row, every row as wide as the header (blank lines skipped)."""
    text = decode_utf8(data, "CSV")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = [row for row in reader if row]
    except csv.Error as exc:  # its text may quote the input; say where instead
        raise InvalidFormat(f"is not valid CSV: a quoted field is malformed or too long near "
                            f"line {reader.line_num}", detail=str(exc)) from exc
    if not rows:
        raise InvalidFormat("is an empty CSV file (it needs at least a header row)")
    width = len(rows[0])
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise InvalidFormat(f"has {len(row)} columns in row {number} but {width} in its "
                                "header")
    return rows


# --- safetensors ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetensorsLayout:
    """What a valid safetensors file holds, for the check's reason."""

    tensors: int
    header_bytes: int
    data_bytes: int
    metadata_entries: int


def _safetensors_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """The parsed JSON header, its length and the file size."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < 8:
            raise InvalidFormat("is too short to be safetensors (no 8-byte header length)")
        (header_bytes,) = struct.unpack("<Q", handle.read(8))
        if header_bytes > MAX_SAFETENSORS_HEADER:
            raise InvalidFormat(f"declares a {header_bytes:,}-byte safetensors header (the "
                                f"limit is {MAX_SAFETENSORS_HEADER:,})")
        if header_bytes > size - 8:
            raise InvalidFormat(f"declares a {header_bytes:,}-byte header but only "
                                f"{size - 8:,} bytes follow (truncated?)")
        raw = handle.read(header_bytes)
    if len(raw) != header_bytes:
        raise InvalidFormat("changed size while being read")
    if not raw.startswith(b"{"):
        raise InvalidFormat("has a safetensors header that is not a JSON object")
    header = parse_json(raw.rstrip(b" "), "safetensors header JSON")
    if not isinstance(header, dict):
        raise InvalidFormat("has a safetensors header that is not a JSON object")
    return header, header_bytes, size


def safetensors_strings(path: Path) -> list[str]:
    """Every string in the header as decoded from JSON (tensor names, metadata keys and
    values): text hidden behind JSON escapes is not in the file's raw bytes."""
    header, _, _ = _safetensors_header(path)
    found = list(header)
    metadata = header.get("__metadata__")
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            found.extend((key, str(value)))
    return found


def check_safetensors(path: Path, rules: CheckRules | None = None) -> SafetensorsLayout:
    """Header length, JSON header, dtypes/shapes/offsets, and a payload the tensors cover
    exactly: contiguous from 0, no gaps, no overlaps, nothing after the last tensor; plus the
    limits on the header's text (metadata, tensor names) from `rules`."""
    rules = rules or CheckRules()
    header, header_bytes, size = _safetensors_header(path)
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values())):
        raise InvalidFormat("has __metadata__ that is not a map of strings to strings")
    _check_safetensors_text(metadata or {}, list(header), rules)
    spans: list[tuple[int, int, str]] = []
    for index, entry in enumerate(header.values(), start=1):
        tensor = f"tensor {index}"
        spans.append((*_tensor_span(entry, tensor), tensor))
    payload = size - 8 - header_bytes
    covered = 0
    for begin, end, tensor in sorted(spans):
        if begin != covered:
            gap = "overlaps the one before it" if begin < covered else "leaves a gap before it"
            raise InvalidFormat(f"has {tensor} at bytes {begin:,}-{end:,}, which {gap}; "
                                "the data must be covered exactly once")
        covered = end
    if covered != payload:
        if covered > payload:
            raise InvalidFormat(f"has tensors covering {covered:,} bytes of data but only "
                                f"{payload:,} follow the header (truncated?)")
        raise InvalidFormat(f"has {payload - covered:,} bytes after the last tensor; nothing "
                            "may follow the tensor data")
    return SafetensorsLayout(tensors=len(spans), header_bytes=header_bytes, data_bytes=payload,
                             metadata_entries=len(metadata or {}))


def _check_safetensors_text(metadata: dict[str, str], names: list[str],
                            rules: CheckRules) -> None:
    """Free text in the header is a channel: metadata in all, each tensor name, all names."""
    metadata_bytes = sum(_utf8_bytes(k) + _utf8_bytes(v) for k, v in metadata.items())
    if metadata_bytes > rules.max_metadata_bytes:
        raise InvalidFormat(f"has {metadata_bytes:,} bytes of __metadata__ in its "
                            f"{len(metadata)} entries (at most {rules.max_metadata_bytes:,})",
                            limit="max_metadata_bytes")
    total = 0
    for index, name in enumerate(names, start=1):
        if len(name) > rules.max_name_length:
            raise InvalidFormat(f"has tensor {index} with a name of {len(name):,} characters "
                                f"(at most {rules.max_name_length})", limit="max_name_length",
                                detail=f"tensor name {_detail(name)}")
        if not TENSOR_NAME_PATTERN.match(name):
            raise InvalidFormat(f"has tensor {index} with a name that is not plain (letters, "
                                "digits, _ . : / -)", detail=f"tensor name {_detail(name)}")
        total += _utf8_bytes(name)
    if total > rules.max_model_strings_bytes:
        raise InvalidFormat(f"has tensor names totalling {total:,} bytes (at most "
                            f"{rules.max_model_strings_bytes:,})",
                            limit="max_model_strings_bytes")


def _tensor_span(entry: object, tensor: str) -> tuple[int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise InvalidFormat(f"has {tensor} without exactly dtype, shape and "
                            "data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    bits = SAFETENSORS_DTYPE_BITS.get(dtype) if isinstance(dtype, str) else None
    if bits is None:
        raise InvalidFormat(f"has {tensor} with an unknown dtype")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise InvalidFormat(f"has {tensor} whose shape is not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
            and offsets[0] <= offsets[1]):
        raise InvalidFormat(f"has {tensor} whose data_offsets are not [begin, end]")
    total_bits = math.prod(shape) * bits
    if total_bits % 8:
        raise InvalidFormat(f"has {tensor} whose size is not a whole number of bytes")
    begin, end = int(offsets[0]), int(offsets[1])
    if end - begin != total_bits // 8:
        raise InvalidFormat(f"has {tensor} whose data_offsets span {end - begin:,} bytes "
                            f"but its dtype and shape need {total_bits // 8:,}")
    return begin, end


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --- ONNX -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxSummary:
    ir_version: int
    opset: str
    nodes: int
    initializers: int


#: Opset domains the gate names in a reason; any other is "a custom domain" (its name is text
#: from the file).
KNOWN_ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training",
                                "ai.onnx.preview.training", "com.microsoft"})

#: Opset versions above this are not repeated in a reason (ONNX itself is near 25).
MAX_SHOWN_OPSET = 100

#: Fields whose bytes are tensor data, not text: the weights themselves.
_ONNX_DATA_FIELDS = frozenset({"raw_data"})
#: Free-text fields, limited together with metadata_props by `max_metadata_bytes`.
_ONNX_DOC_FIELDS = frozenset({"doc_string"})
#: Values rather than names: string attributes and string tensors, counted only in the total.
_ONNX_VALUE_FIELDS = frozenset({"s", "strings", "string_data"})


@dataclass(frozen=True)
class OnnxString:
    """One string in an ONNX model: what kind of text it is, where it sits (a path of schema
    field names and 1-based indices, e.g. `graph.node[5].attribute[2].s`) and the text."""

    kind: str  # "name", "doc" (doc_string), "metadata" (metadata_props) or "value"
    where: str
    text: str

    @property
    def size(self) -> int:
        return _utf8_bytes(self.text)


def onnx_strings(model: Any) -> Iterator[OnnxString]:
    """Every string and bytes field of a parsed ONNX model (graph, nodes, value infos,
    initializers, attributes, subgraphs, functions, metadata, opsets...), except tensor
    `raw_data`. `where` is built from the ONNX schema's field names and positions only."""
    pending: list[tuple[Any, str, bool]] = [(model, "", False)]
    while pending:
        message, path, in_metadata = pending.pop()
        for field, value in message.ListFields():
            where = f"{path}.{field.name}" if path else field.name
            if field.message_type is not None:
                is_entry = field.message_type.name == "StringStringEntryProto"
                items = list(value) if field.is_repeated else [value]
                for index, item in enumerate(items, start=1):
                    shown = f"{where}[{index}]" if field.is_repeated else where
                    pending.append((item, shown, in_metadata or is_entry))
                continue
            if field.type not in (field.TYPE_STRING, field.TYPE_BYTES):
                continue
            if field.name in _ONNX_DATA_FIELDS:
                continue
            kind = ("metadata" if in_metadata else "doc" if field.name in _ONNX_DOC_FIELDS
                    else "value" if field.name in _ONNX_VALUE_FIELDS else "name")
            texts = list(value) if field.is_repeated else [value]
            for index, text in enumerate(texts, start=1):
                if isinstance(text, bytes):
                    text = text.decode("utf-8", "surrogateescape")
                shown = f"{where}[{index}]" if field.is_repeated else where
                yield OnnxString(kind, shown, text)


def _check_onnx_text(model: Any, rules: CheckRules) -> None:
    """Names, doc strings, metadata and string attributes are channels: limit each kind."""
    free = total = 0
    for string in onnx_strings(model):
        size = string.size
        if string.kind == "name" and len(string.text) > rules.max_name_length:
            raise InvalidFormat(f"has a name of {len(string.text):,} characters at "
                                f"{string.where} (at most {rules.max_name_length})",
                                limit="max_name_length", detail=_detail(string.text))
        if string.kind in ("doc", "metadata"):
            free += size
            if free > rules.max_metadata_bytes:
                raise InvalidFormat(f"has more than {rules.max_metadata_bytes:,} bytes of doc "
                                    "strings and metadata_props (reached at "
                                    f"{string.where})", limit="max_metadata_bytes")
        total += size
        if total > rules.max_model_strings_bytes:
            raise InvalidFormat(f"has more than {rules.max_model_strings_bytes:,} bytes of "
                                f"strings in all (reached at {string.where})",
                                limit="max_model_strings_bytes")


def check_onnx(path: Path, rules: CheckRules | None = None) -> OnnxSummary:
    """`onnx.load_model_from_string` + `onnx.checker.check_model`, plus what the checker allows
    but a release must not carry: external data (paths to other files), protobuf fields
    unknown to the ONNX schema (invisible to every ONNX tool, so a hiding place), and more
    text (names, doc strings, metadata, string attributes) than `rules` allow."""
    rules = rules or CheckRules()
    try:
        import onnx
    except ImportError as exc:  # fail closed: no checker, no release
        raise InvalidFormat("cannot be checked: the gate has no ONNX support installed") from exc
    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises its own DecodeError and friends
        raise InvalidFormat("is not an ONNX model (its protobuf does not parse)") from exc
    _refuse_unknown_fields(model)
    _check_onnx_text(model, rules)
    # Before the checker, which would otherwise look for the named files on this host.
    for tensor in _onnx_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            raise InvalidFormat("keeps tensor data in external files; release one "
                                "self-contained .onnx file")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError, or a protobuf error inside it
        # The checker's text quotes op types, names and domains from the model: log it only.
        raise InvalidFormat("is not a valid ONNX model: the ONNX checker refused it (the "
                            "server log has its message)",
                            detail=f"{type(exc).__name__}: {str(exc)[:500]}") from exc
    return OnnxSummary(ir_version=int(model.ir_version), opset=_opsets(model.opset_import),
                       nodes=len(model.graph.node), initializers=len(model.graph.initializer))


def _opsets(imports: Any) -> str:
    """The opsets for a passing reason, with a bounded vocabulary: numbers copied from the
    file are data too, so only the first import of each known domain is named, with a small
    version, and the rest are counted."""
    shown: dict[str, str] = {}
    others = 0
    for opset in imports:
        domain = opset.domain or "ai.onnx"
        if opset.domain in KNOWN_ONNX_DOMAINS and domain not in shown:
            version = opset.version
            shown[domain] = (f"{domain} {version}" if 0 <= version <= MAX_SHOWN_OPSET
                             else f"{domain} (a version above {MAX_SHOWN_OPSET})")
        else:
            others += 1
    parts = list(shown.values()) + ([f"{others} other opset import(s)"] if others else [])
    return ", ".join(parts) or "no opset imports"


def _refuse_unknown_fields(message: Any) -> None:
    from google.protobuf.unknown_fields import UnknownFieldSet

    pending = [message]
    while pending:
        current = pending.pop()
        if len(UnknownFieldSet(current)):
            raise InvalidFormat("carries protobuf fields that are not part of ONNX")
        for field, value in current.ListFields():
            if field.message_type is None:
                continue
            if field.is_repeated:
                pending.extend(value)
            else:
                pending.append(value)


def _onnx_tensors(model: Any) -> list[Any]:
    """Every TensorProto in the model: initializers, constants in node attributes (of the
    graph, its subgraphs and model-local functions)."""
    found: list[Any] = []
    graphs: list[Any] = [model.graph]
    node_lists: list[Any] = [function.node for function in model.functions]
    while graphs or node_lists:
        if graphs:
            graph = graphs.pop()
            found.extend(graph.initializer)
            for sparse in graph.sparse_initializer:
                found.extend((sparse.values, sparse.indices))
            node_lists.append(graph.node)
            continue
        for node in node_lists.pop():
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    found.append(attribute.t)
                found.extend(attribute.tensors)
                for sparse in [*attribute.sparse_tensors] + (
                        [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []):
                    found.extend((sparse.values, sparse.indices))
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    return found
