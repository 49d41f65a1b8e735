"""Pickle scan: which callables a pickle would import and call if it were ever loaded.

Owns the allowlist of torch reconstructors that `torch.save(state_dict)` really emits, the
check of torch's zip layout, and a symbolic walk over the opcodes; nothing is unpickled here.
Reasons name entries and globals by position; their names (text from the file) go to the log.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sandbox.gate.errors import InvalidFormat, UnsafePickle

#: Every global that torch 2.13's `torch.save(module.state_dict())` emits for dense tensors of
#: the classic dtypes, found by saving real state_dicts (see tests/unit/gate/test_gate_pickles.py).
#: Deliberately absent: `torch._utils._rebuild_parameter` (only for nn.Parameter objects, not a
#: state_dict), `_rebuild_tensor_v3` + `torch.storage.UntypedStorage` (float8/uint16+ dtypes),
#: sparse and quantized reconstructors; such weights should leave as safetensors.
TORCH_STATE_DICT_GLOBALS = frozenset({
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    *(f"torch.{kind}Storage" for kind in (
        "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
        "ComplexFloat", "ComplexDouble")),
})

#: Largest pickle stream read into memory; a state_dict's pickle is kilobytes to a few MB.
MAX_PICKLE_BYTES = 256 << 20

_STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
                         "SHORT_BINUNICODE", "BINUNICODE8"})
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
_EXTENSIONS = frozenset({"EXT1", "EXT2", "EXT4"})


@dataclass(frozen=True)
class PickleStream:
    """One pickle found in a file: where it lives ("" for a plain pickle) and its bytes."""

    member: str
    data: bytes
    #: The stream's position, for reasons ("entry 3 of the archive"); its name is file text.
    where: str = "the file"


@dataclass(frozen=True)
class PickleScan:
    """What a clean scan saw: the allowlisted globals used, over how many streams."""

    streams: int
    globals_used: frozenset[str]


class _Mark:
    """The MARK opcode's stack sentinel."""


class _Global:
    """A callable imported by GLOBAL/STACK_GLOBAL/INST (only allowlisted ones get this far)."""

    def __init__(self, name: str) -> None:
        self.name = name


_MARK = _Mark()
_Value = str | _Global | _Mark | None  # None: a value the walk does not need to know


def read_pickle_streams(path: Path, *, max_pickle_bytes: int = MAX_PICKLE_BYTES
                        ) -> list[PickleStream]:
    """The pickles torch.load would unpickle from this file, after checking the container.

    A torch zip (`<name>/data.pkl` + raw storages) must be plain: stored (not compressed, so
    the leak scan sees every byte), unencrypted, no duplicate names, nothing before the first
    entry, no comment. Anything else must be exactly one pickle with nothing after its STOP
    (torch's pre-1.6 format, several pickles back to back, is refused).
    """
    with path.open("rb") as handle:
        head = handle.read(4)
    if head == b"PK\x03\x04":
        return list(_zip_streams(path, max_pickle_bytes))
    if path.stat().st_size > max_pickle_bytes:
        raise InvalidFormat(f"is a pickle larger than {max_pickle_bytes:,} bytes")
    data = path.read_bytes()
    _pickle_length(data, "the file")
    return [PickleStream("", data)]


def _zip_streams(path: Path, max_pickle_bytes: int) -> Iterator[PickleStream]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidFormat("starts like a zip archive but is not a readable one") from exc
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise InvalidFormat("is a zip archive with duplicate entry names")
        if archive.comment:
            raise InvalidFormat("is a zip archive with a comment (torch writes none)")
        if not infos or min(info.header_offset for info in infos) != 0:
            raise InvalidFormat("is a zip archive with data before its first entry")
        for info in infos:
            if info.flag_bits & 0x1:
                raise InvalidFormat("is a zip archive with an encrypted entry")
            if info.compress_type != zipfile.ZIP_STORED:
                raise InvalidFormat("is a zip archive with a compressed entry (torch stores "
                                    "entries uncompressed; compression would hide content "
                                    "from the leak scan)")
        pickles = [info for info in infos if info.filename.endswith(".pkl")]
        if not any(name == "data.pkl" or name.endswith("/data.pkl")
                   for name in (info.filename for info in pickles)):
            raise InvalidFormat("is a zip archive without the data.pkl that torch.save writes")
        position = {id(info): index for index, info in enumerate(infos, start=1)}
        for info in pickles:
            where = f"entry {position[id(info)]} of the archive"
            if info.file_size > max_pickle_bytes:
                raise InvalidFormat(f"holds a pickle larger than {max_pickle_bytes:,} bytes")
            try:
                data = archive.read(info)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise InvalidFormat("is a zip archive with an unreadable entry") from exc
            _pickle_length(data, where)
            yield PickleStream(info.filename, data, where)


def _pickle_length(data: bytes, where: str) -> int:
    """Walk the opcodes to STOP; the stream must end exactly there."""
    stream = io.BytesIO(data)
    try:
        for _ in pickletools.genops(stream):
            pass
    except (ValueError, EOFError, IndexError, UnicodeDecodeError) as exc:
        raise InvalidFormat(f"{where} is not a well-formed pickle") from exc
    if stream.tell() != len(data):
        raise InvalidFormat(f"{where} has {len(data) - stream.tell():,} bytes after the end "
                            "of its pickle")
    return len(data)


class _Machine:
    """The unpickler's stack and memo, holding only what the scan needs to know."""

    def __init__(self) -> None:
        self.stack: list[_Value] = []
        self.memo: dict[int, _Value] = {}

    def push(self, value: _Value) -> None:
        self.stack.append(value)

    def top(self) -> _Value:
        if not self.stack:
            raise UnsafePickle("is not a well-formed pickle (it reads an empty stack)")
        return self.stack[-1]

    def pop(self) -> _Value:
        value = self.top()
        self.stack.pop()
        return value

    def pop_to_mark(self) -> list[_Value]:
        items: list[_Value] = []
        while (item := self.pop()) is not _MARK:
            items.append(item)
        return items[::-1]

    def data_op(self, opcode: pickletools.OpcodeInfo) -> None:
        """Stack effect of an opcode that imports and calls nothing, from pickletools' own
        description of it (values it builds are unknown to the scan)."""
        before = opcode.stack_before
        if pickletools.markobject in before:
            self.pop_to_mark()
            for _ in range(before.index(pickletools.markobject)):
                self.pop()
        else:
            for _ in before:
                self.pop()
        for item in opcode.stack_after:
            self.push(_MARK if item is pickletools.markobject else None)


def scan_pickle(data: bytes, allowed: Iterable[str] = TORCH_STATE_DICT_GLOBALS) -> frozenset[str]:
    """The allowlisted globals a pickle uses; `UnsafePickle` on anything else.

    A symbolic stack machine follows GLOBAL, STACK_GLOBAL (whose names must be plain strings
    pushed earlier, possibly via the memo), INST, OBJ, REDUCE, NEWOBJ and NEWOBJ_EX: every
    import must be allowlisted, and every call must be of such an import (never of a value
    computed at load time). The copyreg extension registry (EXT1/2/4) is refused outright.
    """
    allow = frozenset(allowed)
    machine = _Machine()
    used: set[str] = set()
    imports = 0

    def imported(module: str, name: str) -> _Global:
        nonlocal imports
        imports += 1
        full = f"{module}.{name}"
        if full not in allow:
            raise UnsafePickle(f"imports a callable outside the allowlist of torch tensor "
                               f"reconstructors (global {imports} of the stream); loading it "
                               "could run code", global_name=full,
                               detail=f"global {imports} is {full[:200]!r}")
        used.add(full)
        return _Global(full)

    def call(opcode: str, args: int) -> None:
        for _ in range(args):
            machine.pop()
        if not isinstance(machine.pop(), _Global):
            raise UnsafePickle(f"calls something other than an allowlisted import ({opcode})")
        machine.push(None)

    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            if name in _STRING_OPS:
                text = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
                machine.push(text)
            elif name in _MEMO_PUT:
                machine.memo[_memo_key(arg)] = machine.top()
            elif name == "MEMOIZE":
                machine.memo[len(machine.memo)] = machine.top()
            elif name in _MEMO_GET:
                if _memo_key(arg) not in machine.memo:
                    raise UnsafePickle("is not a well-formed pickle (it reads a memo slot "
                                       "never written)")
                machine.push(machine.memo[_memo_key(arg)])
            elif name == "DUP":
                machine.push(machine.top())
            elif name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                callable_ = imported(module, attr)
                if name == "INST":  # imports and calls at once
                    machine.pop_to_mark()
                    machine.push(None)
                else:
                    machine.push(callable_)
            elif name == "STACK_GLOBAL":
                attr_value, module_value = machine.pop(), machine.pop()
                if not (isinstance(module_value, str) and isinstance(attr_value, str)):
                    raise UnsafePickle("imports a global whose name is computed while loading")
                machine.push(imported(module_value, attr_value))
            elif name == "OBJ":
                items = machine.pop_to_mark()
                if not (items and isinstance(items[0], _Global)):
                    raise UnsafePickle("calls something other than an allowlisted import (OBJ)")
                machine.push(None)
            elif name in ("REDUCE", "NEWOBJ"):
                call(name, 1)
            elif name == "NEWOBJ_EX":
                call(name, 2)
            elif name in _EXTENSIONS:
                raise UnsafePickle(f"uses the copyreg extension registry ({name}), which can "
                                   "import any callable", global_name=f"copyreg extension {arg}")
            else:
                machine.data_op(opcode)
    except (ValueError, EOFError, IndexError, UnicodeDecodeError) as exc:
        raise UnsafePickle("is not a well-formed pickle") from exc
    return frozenset(used)


def _memo_key(arg: object) -> int:
    if not isinstance(arg, int):
        raise UnsafePickle("is not a well-formed pickle (a memo index is not a number)")
    return arg


def scan_pickle_file(path: Path, allowed: Iterable[str] = TORCH_STATE_DICT_GLOBALS
                     ) -> PickleScan:
    """Every pickle in the file (each .pkl of a torch zip, or the plain pickle) is clean."""
    streams = read_pickle_streams(path)
    used: set[str] = set()
    for stream in streams:
        try:
            used |= scan_pickle(stream.data, allowed)
        except UnsafePickle as exc:
            if not stream.member:
                raise
            raise UnsafePickle(f"{stream.where} {exc.user_message}", global_name=exc.global_name,
                               detail=f"{stream.member[:200]!r}: {exc.detail}") from exc
    return PickleScan(streams=len(streams), globals_used=frozenset(used))
