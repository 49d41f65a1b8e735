"""Rendered views of release files for approvers: what a file holds, built from its parsed
structure (tensor names, dtypes, shapes, sampled statistics, metadata, ONNX graphs and every
string in them, metrics tables), never its raw bytes. Pure functions returning plain data.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sandbox.gate.errors import GateError
from sandbox.gate.formats import _safetensors_header, parse_csv, parse_json

log = logging.getLogger(__name__)

#: Rows of one table (tensors, nodes, strings, metrics) a view lists; the rest are counted.
MAX_ROWS = 20_000
#: Elements read for statistics across a whole file, in multiples of the per-tensor cap.
FILE_BUDGET_TENSORS = 16
#: Largest run of consecutive elements one sample reads (a few pages of the memory map).
MAX_RUN = 4096


class ViewKind(StrEnum):
    SAFETENSORS = "safetensors"
    ONNX = "onnx"
    METRICS_JSON = "metrics_json"
    METRICS_CSV = "metrics_csv"
    NONE = "none"  # no rendered view for this type
    UNREADABLE = "unreadable"  # the type has a view, but this file does not parse


# --- text ---------------------------------------------------------------------------------


def visible(text: str, *, escaped_bytes: bool = False) -> str:
    """`text` with every character that does not print (control, format, bidi overrides,
    zero-width, unassigned) and the backslash written as an escape, so nothing is hidden
    from the person reading it and `\\x00` in the text is told apart from a NUL.

    With `escaped_bytes`, the lone surrogates U+DC80..U+DCFF (bytes that were not UTF-8,
    decoded with `surrogateescape`) are written as the `\\xNN` of their byte."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for char in text:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif char.isprintable():
            out.append(char)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif escaped_bytes and 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def visible_bytes(data: bytes) -> str:
    """Bytes as text: UTF-8 where they decode, `\\xNN` for each byte that does not."""
    return visible(data.decode("utf-8", "surrogateescape"), escaped_bytes=True)


# --- statistics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorStats:
    """Summary statistics of a tensor, over a sample of at most the view's cap.

    min, max, mean and std are over the finite sampled values (None when there are none)."""

    count: int  # elements in the tensor
    sampled: int  # elements read
    runs: int  # evenly spaced runs of consecutive elements the sample was read in
    min: float | int | None
    max: float | int | None
    mean: float | None
    std: float | None
    nan: int
    inf: int

    @property
    def complete(self) -> bool:
        return self.sampled == self.count


def _number(value: Any) -> float | int | None:
    if isinstance(value, np.integer | int):
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def _sample(values: npt.NDArray[Any], max_elements: int) -> tuple[npt.NDArray[Any], int]:
    """At most `max_elements` of a flat array (a memory map, say) in evenly spaced runs of
    consecutive elements: runs read whole pages, where a plain stride would touch one page
    per element read."""
    total = int(values.shape[0])
    if total <= max_elements:
        return np.asarray(values), 1
    run = max(1, min(MAX_RUN, max_elements // 64))
    runs = max(1, max_elements // run)
    starts = np.linspace(0, total - run, runs).astype(np.int64)
    return np.concatenate([np.asarray(values[s:s + run]) for s in starts]), runs


def tensor_stats(values: npt.NDArray[Any], max_elements: int) -> TensorStats:
    """Statistics of a flat numeric array (float, signed or unsigned int, bool)."""
    count = int(values.shape[0])
    sample, runs = _sample(values, max_elements)
    if sample.dtype == np.bool_:
        sample = sample.astype(np.uint8)
    floating = np.issubdtype(sample.dtype, np.floating)
    wide = sample.astype(np.float64)
    finite_mask = np.isfinite(wide)
    nan = int(np.isnan(wide).sum()) if floating else 0
    inf = int(np.isinf(wide).sum()) if floating else 0
    finite = wide[finite_mask] if floating else wide
    if finite.size == 0:
        low = high = mean = std = None
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            if floating:
                low, high = _number(finite.min()), _number(finite.max())
            else:  # exact, where float64 would round a large int64
                low, high = _number(sample.min()), _number(sample.max())
            mean, std = _number(finite.mean()), _number(finite.std())
    return TensorStats(count=count, sampled=int(sample.shape[0]), runs=runs, min=low,
                       max=high, mean=mean if mean is None else float(mean),
                       std=std if std is None else float(std), nan=nan, inf=inf)


# --- views --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorView:
    index: int
    name: str
    dtype: str
    shape: list[int | str]
    stats: TensorStats | None
    #: Why there are no statistics, in the console's words ("" when there are).
    note: str = ""
    where: str = ""  # for ONNX: where in the model the tensor is


@dataclass(frozen=True)
class Entry:
    """One (key, value) pair: safetensors metadata, or a metrics value by its key path."""

    key: str
    value: str


@dataclass(frozen=True)
class SafetensorsView:
    header_bytes: int
    data_bytes: int
    tensors: list[TensorView]
    tensors_total: int
    metadata: list[Entry]


@dataclass(frozen=True)
class ValueInfo:
    name: str
    elem_type: str
    shape: list[int | str]


@dataclass(frozen=True)
class NodeView:
    graph: str  # where the node's graph is ("graph", or a subgraph or function path)
    index: int
    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    #: `name=value` for each attribute; numbers in full up to a few, strings and tensors by
    #: reference to their own tables (numbers in attributes can carry data too).
    attributes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StringSite:
    """A string in the model and where it is (a protobuf field path)."""

    where: str
    value: str


@dataclass(frozen=True)
class OnnxView:
    ir_version: int
    opsets: list[str]
    operators: list[tuple[str, int]]  # op_type (domain-qualified if not ai.onnx), count
    nodes: list[NodeView]
    nodes_total: int
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    initializers: list[TensorView]
    initializers_total: int
    strings: list[StringSite]
    strings_total: int
    unknown_fields: int  # protobuf fields not in the ONNX schema (not shown: no names)


@dataclass(frozen=True)
class ColumnView:
    name: str
    numeric: int  # cells that parse as finite numbers
    other: int  # cells that do not
    min: float | None
    max: float | None
    mean: float | None


@dataclass(frozen=True)
class CsvView:
    header: list[str]
    rows: int  # data rows, header excluded
    columns: list[ColumnView]


@dataclass(frozen=True)
class MetricsView:
    entries: list[Entry]
    entries_total: int


@dataclass(frozen=True)
class FileView:
    """What the console shows of one file. Every string that came from the file has been
    through `visible`; every other string is the console's own."""

    kind: ViewKind
    size: int
    #: What the view is and how it was built, in the console's words.
    notes: list[str] = field(default_factory=list)
    #: Why the file could not be parsed (kind UNREADABLE), in the console's words.
    error: str = ""
    safetensors: SafetensorsView | None = None
    onnx: OnnxView | None = None
    metrics: MetricsView | None = None
    csv: CsvView | None = None

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["kind"] = str(self.kind)
        return body


_VIEWS = {".safetensors": ViewKind.SAFETENSORS, ".onnx": ViewKind.ONNX,
          ".json": ViewKind.METRICS_JSON, ".csv": ViewKind.METRICS_CSV}
_WHAT = {ViewKind.SAFETENSORS: "safetensors", ViewKind.ONNX: "an ONNX model",
         ViewKind.METRICS_JSON: "metrics JSON", ViewKind.METRICS_CSV: "metrics CSV"}


class _Budget:
    """Elements left to read for statistics in this file."""

    def __init__(self, per_tensor: int, total: int) -> None:
        self.per_tensor, self.left, self.spent_out = per_tensor, total, False

    def take(self, count: int) -> int:
        granted = min(count, self.per_tensor, self.left)
        self.left -= granted
        if granted < min(count, self.per_tensor):
            self.spent_out = True
        return granted


def render_file(path: Path, suffix: str, *, max_elements: int = 1_000_000) -> FileView:
    """The rendered view of one file, by its (lower-case, dotted) suffix. Never raises for a
    bad file: a file that does not parse gets a view saying so."""
    if max_elements < 1:
        raise ValueError("max_elements must be positive")
    try:
        size = os.stat(path).st_size
    except OSError:
        return FileView(ViewKind.UNREADABLE, 0, error="The stored copy of this file cannot be "
                        "read.")
    kind = _VIEWS.get(suffix.lower(), ViewKind.NONE)
    if kind == ViewKind.NONE:
        return FileView(kind, size, notes=["There is no rendered view for this type of file; "
                                           "only its size and hash are shown."])
    budget = _Budget(max_elements, max_elements * FILE_BUDGET_TENSORS)
    try:
        if kind == ViewKind.SAFETENSORS:
            view = _safetensors(path, size, budget)
        elif kind == ViewKind.ONNX:
            view = _onnx(path, size, budget)
        elif kind == ViewKind.METRICS_JSON:
            view = _metrics_json(path, size)
        else:
            view = _metrics_csv(path, size)
    except GateError as exc:
        return FileView(ViewKind.UNREADABLE, size, error=f"This file could not be read as "
                        f"{_WHAT[kind]}: it {exc.user_message}.")
    except (_Unreadable, OSError, ValueError, MemoryError) as exc:
        reason = str(exc) if isinstance(exc, _Unreadable) else "its structure could not be parsed"
        return FileView(ViewKind.UNREADABLE, size, error=f"This file could not be read as "
                        f"{_WHAT[kind]}: {reason}.")
    except Exception:  # a bug in a view must not take the review page down with it
        log.exception("building the %s view of %s failed", kind, path)
        return FileView(ViewKind.UNREADABLE, size, error=f"The console could not build a view "
                        f"of this file as {_WHAT[kind]}.")
    if budget.spent_out:
        view.notes.append(f"Statistics stop after {budget.per_tensor * FILE_BUDGET_TENSORS:,} "
                          "elements read in this file; later tensors show none.")
    return view


class _Unreadable(Exception):
    """A file of a viewable type whose structure the view cannot follow (message: ours)."""


def _sample_note(max_elements: int) -> str:
    return (f"Statistics read at most {max_elements:,} elements of each tensor: all of a "
            "smaller tensor, else evenly spaced runs of consecutive elements across it (the "
            "sampled count says which). min, max, mean and std are over finite values; NaN "
            "and inf are counted in the sample.")


def _overflow(total: int, shown: int, what: str) -> list[str]:
    return [f"Only the first {shown:,} of {total:,} {what} are listed."] if total > shown else []


# --- safetensors --------------------------------------------------------------------------

#: safetensors dtype -> numpy dtype the bytes are read as, and how to widen them for stats.
_ST_NUMPY: dict[str, str] = {
    "BOOL": "|b1", "U8": "|u1", "I8": "|i1", "U16": "<u2", "I16": "<i2", "U32": "<u4",
    "I32": "<i4", "U64": "<u8", "I64": "<i8", "F16": "<f2", "F32": "<f4", "F64": "<f8",
    "BF16": "<u2",  # widened to float32 by shifting into the high half
}
_ST_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4,
             "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


def _bf16_to_f32(raw: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _safetensors(path: Path, size: int, budget: _Budget) -> FileView:
    header, header_bytes, _ = _safetensors_header(path)
    metadata = header.pop("__metadata__", None)
    entries: list[Entry] = []
    notes = [_sample_note(budget.per_tensor)]
    if isinstance(metadata, dict):
        entries = [Entry(visible(str(k)), visible(v if isinstance(v, str) else _json(v)))
                   for k, v in metadata.items()]
    elif metadata is not None:
        notes.append("__metadata__ is not a map; its value is shown as one entry.")
        entries = [Entry("(whole __metadata__)", visible(_json(metadata)))]
    data_start = 8 + header_bytes
    tensors = []
    for index, (name, entry) in enumerate(header.items(), start=1):
        if index > MAX_ROWS:
            break
        tensors.append(_safetensors_tensor(path, index, name, entry, data_start, size, budget))
    notes.extend(_overflow(len(header), MAX_ROWS, "tensors"))
    return FileView(ViewKind.SAFETENSORS, size, notes=notes, safetensors=SafetensorsView(
        header_bytes=header_bytes, data_bytes=size - data_start, tensors=tensors,
        tensors_total=len(header), metadata=entries))


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def _safetensors_tensor(path: Path, index: int, name: str, entry: Any, data_start: int,
                        size: int, budget: _Budget) -> TensorView:
    if not isinstance(entry, dict):
        return TensorView(index, visible(name), "?", [], None,
                          "Its header entry is not an object; nothing more is known.")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    shown_dtype = visible(dtype) if isinstance(dtype, str) else "?"
    dims: list[int | str] = [d if _is_count(d) else "?" for d in shape] \
        if isinstance(shape, list) else ["?"]

    def bare(note: str) -> TensorView:
        return TensorView(index, visible(name), shown_dtype, dims, None, note)

    if not isinstance(dtype, str) or dtype not in _ST_BYTES:
        return bare("No statistics for this dtype.")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        return bare("Its shape is not a list of sizes; no statistics.")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        return bare("Its data_offsets are not [begin, end]; no statistics.")
    count = math.prod(shape)
    begin, end = offsets
    if end - begin != count * _ST_BYTES[dtype] or data_start + end > size:
        return bare("Its declared layout does not match its data; no statistics.")
    granted = budget.take(count)
    if count == 0:
        return bare("It has no elements.")
    if granted == 0:
        return bare("Not sampled: the statistics budget for this file is spent.")
    # A memory map reads only the pages the sample touches, never the whole tensor.
    values = np.memmap(path, dtype=np.dtype(_ST_NUMPY[dtype]), mode="r",
                       offset=data_start + begin, shape=(count,))
    try:
        sample, runs = _sample(values, granted)
        if dtype == "BF16":
            sample = _bf16_to_f32(sample)
        stats = tensor_stats(sample, granted)
    finally:
        del values
    stats = TensorStats(count=count, sampled=stats.sampled, runs=runs, min=stats.min,
                        max=stats.max, mean=stats.mean, std=stats.std, nan=stats.nan,
                        inf=stats.inf)
    return TensorView(index, visible(name), dtype, dims, stats)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --- ONNX ---------------------------------------------------------------------------------


def _onnx(path: Path, size: int, budget: _Budget) -> FileView:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise _Unreadable("the console has no ONNX support installed") from exc
    try:
        # External data is never loaded: the view reads this one file only.
        model = onnx.load_model_from_string(path.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise _Unreadable("its protobuf does not parse") from exc
    strings, strings_total, unknown = _onnx_strings(model)
    nodes: list[NodeView] = []
    operators: Counter[str] = Counter()
    nodes_total = 0
    for where, graph_nodes in _onnx_node_lists(model):
        for index, node in enumerate(graph_nodes):
            op = visible(f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx")
                         else node.op_type)
            operators[op] += 1
            nodes_total += 1
            if len(nodes) < MAX_ROWS:
                nodes.append(NodeView(where, index, op, visible(node.name),
                                      [visible(i) for i in node.input],
                                      [visible(o) for o in node.output],
                                      [_attribute(a) for a in node.attribute]))
    initializers: list[TensorView] = []
    tensors = list(_onnx_tensors(model))
    for index, (where, tensor) in enumerate(tensors[:MAX_ROWS], start=1):
        initializers.append(_onnx_tensor(onnx, numpy_helper, index, where, tensor, budget))
    notes = [_sample_note(budget.per_tensor),
             "Strings: every text field of the model (names, doc strings, metadata, string "
             "attributes and string tensors, producer, domains), with its protobuf path."]
    notes.extend(_overflow(nodes_total, MAX_ROWS, "nodes"))
    notes.extend(_overflow(len(tensors), MAX_ROWS, "tensors"))
    notes.extend(_overflow(strings_total, MAX_ROWS, "strings"))
    if unknown:
        notes.append(f"The model carries {unknown:,} protobuf fields that are not part of ONNX; "
                     "they cannot be shown by name.")
    if any(t.note.startswith("Its data is kept in an external") for t in initializers):
        notes.append("Some tensors keep their data in external files, which the view does not "
                     "open.")
    return FileView(ViewKind.ONNX, size, notes=notes, onnx=OnnxView(
        ir_version=int(model.ir_version),
        opsets=[f"{visible(o.domain) or 'ai.onnx'} {o.version}" for o in model.opset_import],
        operators=sorted(operators.items(), key=lambda item: (-item[1], item[0])),
        nodes=nodes, nodes_total=nodes_total,
        inputs=[_value_info(onnx, v) for v in model.graph.input[:MAX_ROWS]],
        outputs=[_value_info(onnx, v) for v in model.graph.output[:MAX_ROWS]],
        initializers=initializers, initializers_total=len(tensors),
        strings=strings, strings_total=strings_total, unknown_fields=unknown))


def _onnx_node_lists(model: Any) -> Iterator[tuple[str, Any]]:
    """(where, nodes) for the main graph, every subgraph in node attributes, and every
    model-local function, in file order."""
    pending: list[tuple[str, Any]] = [("graph", model.graph)]
    pending += [(f"functions[{i}]", f) for i, f in enumerate(model.functions)]
    while pending:
        where, graph = pending.pop(0)
        yield where, graph.node
        for n, node in enumerate(graph.node):
            for a, attribute in enumerate(node.attribute):
                base = f"{where}.node[{n}].attribute[{a}]"
                if attribute.HasField("g"):
                    pending.append((f"{base}.g", attribute.g))
                pending += [(f"{base}.graphs[{g}]", sub) for g, sub in enumerate(attribute.graphs)]


#: Numbers of one list attribute shown; the rest are counted.
SHOWN_ATTRIBUTE_VALUES = 16


def _attribute(attribute: Any) -> str:
    name = visible(attribute.name)
    if attribute.HasField("f"):
        return f"{name}={float(attribute.f):.9g}"
    if attribute.HasField("i"):
        return f"{name}={int(attribute.i)}"
    for kind in ("floats", "ints"):
        values = list(getattr(attribute, kind))
        if values:
            shown = ", ".join(f"{v:.9g}" if kind == "floats" else str(v)
                              for v in values[:SHOWN_ATTRIBUTE_VALUES])
            more = f", … {len(values) - SHOWN_ATTRIBUTE_VALUES:,} more" \
                if len(values) > SHOWN_ATTRIBUTE_VALUES else ""
            return f"{name}=[{shown}{more}]"
    if attribute.HasField("s") or len(attribute.strings):
        return f"{name}=(text: see the strings)"
    if attribute.HasField("t") or len(attribute.tensors) or attribute.HasField("sparse_tensor") \
            or len(attribute.sparse_tensors):
        return f"{name}=(tensor: see the tensors)"
    if attribute.HasField("g") or len(attribute.graphs):
        return f"{name}=(subgraph: see the nodes)"
    return f"{name}=(empty)"


def _onnx_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """(where, TensorProto) for every initializer and every tensor-valued node attribute."""
    pending: list[tuple[str, Any]] = [("graph", model.graph)]
    pending += [(f"functions[{i}]", f) for i, f in enumerate(model.functions)]
    while pending:
        where, graph = pending.pop(0)
        for i, tensor in enumerate(getattr(graph, "initializer", ())):
            yield f"{where}.initializer[{i}]", tensor
        for i, sparse in enumerate(getattr(graph, "sparse_initializer", ())):
            yield f"{where}.sparse_initializer[{i}].values", sparse.values
            yield f"{where}.sparse_initializer[{i}].indices", sparse.indices
        for n, node in enumerate(graph.node):
            for a, attribute in enumerate(node.attribute):
                base = f"{where}.node[{n}].attribute[{a}]"
                if attribute.HasField("t"):
                    yield f"{base}.t", attribute.t
                for t, tensor in enumerate(attribute.tensors):
                    yield f"{base}.tensors[{t}]", tensor
                sparse_tensors = [(f"{base}.sparse_tensor", attribute.sparse_tensor)] \
                    if attribute.HasField("sparse_tensor") else []
                sparse_tensors += [(f"{base}.sparse_tensors[{t}]", sparse)
                                   for t, sparse in enumerate(attribute.sparse_tensors)]
                for at, sparse in sparse_tensors:
                    yield f"{at}.values", sparse.values
                    yield f"{at}.indices", sparse.indices
                if attribute.HasField("g"):
                    pending.append((f"{base}.g", attribute.g))
                pending += [(f"{base}.graphs[{g}]", sub) for g, sub in enumerate(attribute.graphs)]


def _onnx_tensor(onnx: Any, numpy_helper: Any, index: int, where: str, tensor: Any,
                 budget: _Budget) -> TensorView:
    try:
        dtype = onnx.TensorProto.DataType.Name(tensor.data_type)
    except ValueError:
        dtype = f"unknown ({int(tensor.data_type)})"
    dims: list[int | str] = [int(d) for d in tensor.dims]

    def bare(note: str) -> TensorView:
        return TensorView(index, visible(tensor.name), dtype, dims, None, note, where)

    if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
        return bare("Its data is kept in an external file, which the view does not open.")
    try:
        np_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError):
        return bare("No statistics for this dtype.")
    if np_dtype.kind not in "fiub" or tensor.data_type == onnx.TensorProto.BFLOAT16:
        return bare("No statistics for this dtype.")
    count = math.prod(tensor.dims)
    if count == 0:
        return bare("It has no elements.")
    granted = budget.take(count)
    if granted == 0:
        return bare("Not sampled: the statistics budget for this file is spent.")
    try:
        if tensor.HasField("raw_data"):
            # A view of the bytes already in memory: the cap bounds the copy and the work.
            flat = np.frombuffer(tensor.raw_data, dtype=np_dtype.newbyteorder("<"))
        else:
            flat = numpy_helper.to_array(tensor).reshape(-1)
    except ValueError:
        return bare("Its data does not match its dtype and shape; no statistics.")
    if flat.shape[0] != count:
        return bare("Its data does not match its dtype and shape; no statistics.")
    return TensorView(index, visible(tensor.name), dtype, dims, tensor_stats(flat, granted),
                      "", where)


def _value_info(onnx: Any, value: Any) -> ValueInfo:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return ValueInfo(visible(value.name), f"not a tensor ({kind or 'no type'})", [])
    tensor_type = value.type.tensor_type
    try:
        elem = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
    except ValueError:
        elem = f"unknown ({int(tensor_type.elem_type)})"
    shape: list[int | str] = []
    if tensor_type.HasField("shape"):
        for dim in tensor_type.shape.dim:
            which = dim.WhichOneof("value")
            shape.append(int(dim.dim_value) if which == "dim_value"
                         else visible(dim.dim_param) if which == "dim_param" else "?")
    return ValueInfo(visible(value.name), elem, shape)


def _onnx_strings(model: Any) -> tuple[list[StringSite], int, int]:
    """Every string and non-numeric bytes field anywhere in the model, by protobuf path (a
    generic walk of the message, so no field is forgotten), its total count, and the number
    of fields unknown to the ONNX schema."""
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.unknown_fields import UnknownFieldSet

    found: list[StringSite] = []
    total = unknown = 0
    pending: list[tuple[str, Any]] = [("model", model)]
    while pending:
        where, message = pending.pop()
        unknown += len(UnknownFieldSet(message))
        children: list[tuple[str, Any]] = []
        for descriptor, value in message.ListFields():
            path = f"{where}.{descriptor.name}" if where != "model" else descriptor.name
            repeated = descriptor.is_repeated
            items = list(enumerate(value)) if repeated else [(None, value)]
            for position, item in items:
                at = path if position is None else f"{path}[{position}]"
                if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
                    children.append((at, item))
                elif descriptor.type == FieldDescriptor.TYPE_STRING:
                    total += 1
                    if len(found) < MAX_ROWS:
                        found.append(StringSite(at, visible(item)))
                elif descriptor.type == FieldDescriptor.TYPE_BYTES and descriptor.name != \
                        "raw_data":  # raw_data is numbers: summarised in the tensor table
                    total += 1
                    if len(found) < MAX_ROWS:
                        found.append(StringSite(at, visible_bytes(item)))
        pending.extend(reversed(children))  # depth first, in file order
    return found, total, unknown


# --- metrics ------------------------------------------------------------------------------


def _key_path(path: list[str | int]) -> str:
    parts = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + visible(part))
    return "".join(parts) or "(the whole document)"


def _metrics_json(path: Path, size: int) -> FileView:
    document = parse_json(path.read_bytes(), "metrics JSON", parse_number=str)
    entries: list[Entry] = []
    total = 0
    pending: list[tuple[list[str | int], Any]] = [([], document)]
    while pending:
        key, value = pending.pop()
        if isinstance(value, dict) and value:
            pending.extend(reversed([([*key, k], v) for k, v in value.items()]))
            continue
        if isinstance(value, list) and value:
            pending.extend(reversed([([*key, i], v) for i, v in enumerate(value)]))
            continue
        total += 1
        if len(entries) < MAX_ROWS:
            entries.append(Entry(_key_path(key), _metric_value(value)))
    notes = ["Each row is one value and the path of keys (and [list positions]) to it; "
             "numbers are shown as written in the file."]
    notes.extend(_overflow(total, MAX_ROWS, "values"))
    return FileView(ViewKind.METRICS_JSON, size, notes=notes,
                    metrics=MetricsView(entries=entries, entries_total=total))


def _metric_value(value: Any) -> str:
    if isinstance(value, str):  # numbers arrive as their literal text (parse_number=str)
        return visible(value)
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    return _json(value)


def _metrics_csv(path: Path, size: int) -> FileView:
    rows = parse_csv(path.read_bytes())
    header, data = rows[0], rows[1:]
    columns = []
    for position, name in enumerate(header[:MAX_ROWS]):
        numbers = []
        other = 0
        for row in data:
            try:
                number = float(row[position])
            except ValueError:
                other += 1
                continue
            if math.isfinite(number):
                numbers.append(number)
            else:
                other += 1
        column = np.asarray(numbers, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            columns.append(ColumnView(
                visible(name), len(numbers), other,
                _float(column.min()) if numbers else None,
                _float(column.max()) if numbers else None,
                _float(column.mean()) if numbers else None))
    notes = ["The header and the number of data rows; for each column, min, max and mean of "
             "the cells that are finite numbers. No cell is shown."]
    notes.extend(_overflow(len(header), MAX_ROWS, "columns"))
    return FileView(ViewKind.METRICS_CSV, size, notes=notes, csv=CsvView(
        header=[visible(h) for h in header], rows=len(data), columns=columns))


def _float(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None
