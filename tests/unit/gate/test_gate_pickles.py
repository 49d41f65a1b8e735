"""The pickle scan: torch.save of a state_dict passes with only allowlisted reconstructors;
anything that would import or call something else is refused, naming the global."""

from __future__ import annotations

import base64
import io
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from sandbox.gate.errors import InvalidFormat, UnsafePickle
from sandbox.gate.pickles import (
    TORCH_STATE_DICT_GLOBALS,
    read_pickle_streams,
    scan_pickle,
    scan_pickle_file,
)

# torch.save(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).state_dict()), recorded with
# torch 2.13.0 (zlib + base64) so this file needs no torch; the live tests below regenerate it.
RECORDED_STATE_DICT = zlib.decompress(base64.b64decode(
    "eNrFlk9s21Qcx1+SNknDmv5jtCtQYPxLoUvjJHbSdWuHGb4Yaa0nJmsXy3FMbDV19rNfOm1SxyTUSRNCQuLCaRcuXC"
    "dN4sCoBEKTdgQJMSQkDrsMLiBx4Yifn5v5eeqfZRJ7khU58ef7/T7n937vrcipAYSyWfTIGEXjSHcNy94w55s61osX"
    "1tqSmEfnmXE1aRiddts0sN1xvNwZt2m6ZvO0beAcoFkFEgWVaJeKF027ZWFIGrjjixa1LrbbXk5zzUbXbjc1bDpex9"
    "U2yjlIFQpqxmc8/0m9ZcIARXJSu6Pjs/TLHAyqCaILaTXlfxoXupCR0xiyqzKSk3LqGgzJKTlxDXLXLZLjGQyHFBhW"
    "00GYhq17kLd8J2vAokocjFgZOYlhNFDYgjE5sQXjlJ7A8KwCh4OpcDtTeY7hyzBJ+amQP0L4aco/j+EFBV4M3DnqPs"
    "PQFXiJ0i+H9CuEPkrpVzG8psDraj6g3a7j2E5LWzd1B95gVKrwJlUphCqzROUtqvI2hjkFjqnDjMqG7kKREeFhnoqU"
    "QhGOiJSpSAVDVQFePRyION11raFjwzI9Dbu6sWY2QaBi4X/2fsdp9f6yWqAvQN3XT2BY8PVnZ6nucQyLCpzobsJJdc"
    "h/yJ8d1knVwVLw+3JBJTUJpzbhnaA4NkzX8ysORDnhhZXw7iactnr3HLy3CZJ/n/S6XqO4ImeyQ2e2fvgqiRC5Vnat"
    "+0k00av74ocdd13HWugmiSOx8j/PEeGv//rtY+JJrt2Fp1HtoXBY3JretlvOuulgSazEtQ8yhCoJsHwR/vAnhZJ7Bh"
    "hDy70AjUvY7JDFKomL/fjujLaNcdskGbZO3j9C6ju9Z4Y8WmK6ynxJEo8/QYAHX376zcTnN5auyP9s3/3k1+2bt4zt"
    "s9dnlkii735p3ZnyPaf2STTHJuIksXDgRKfWFm9f1v8M/L7/+/45YpDdx+8E61eWxHrfbwChq8vkIv6fraZ/7sO/8m"
    "T+dBB/+/ejZh/+1afszz/l9y/8v/MfQYs9/15fq/UboJIjzj/eaH2wf/+ZQeWHDTCYume6tt8BL+vk9KDZTUksPmaQ"
    "klBf4MsLvFCt1flySeD5Wp2rlkr+bU2ocZWFqv8bVw665EdfjH9b8HMUgpQJEraXM7o3jD6SPH4OitPRDWCSIf9Not"
    "12k7hItIlPMyKrKbTHzhHXiTbiMUbnp4hObwOI49GumWfwcwMo1rvjbLQDsuyDOMvF2ejqYVl1MMaW42y08ln2Xpyt"
    "HJwlxzW2Ux088704yz+GbybGCnE2ut5GWN8Iu0udRZfBDAMrWbTPAl2R0+m5neWcOtYjh2OftVRY/tmd9pQmpzY0f4"
    "je05PSYJoyw8Hz9Nn/AEIsy4M="))


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo owned",))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def replace_member(archive: bytes, member: str, data: bytes,
                   extra: dict[str, bytes] | None = None) -> bytes:
    """The same torch zip with one entry's bytes replaced (and entries added), still stored."""
    source = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            target.writestr(info.filename, data if info.filename == member
                            else source.read(info))
        for name, content in (extra or {}).items():
            target.writestr(name, content)
    return out.getvalue()


def data_pkl(archive: bytes) -> str:
    return next(n for n in zipfile.ZipFile(io.BytesIO(archive)).namelist()
                if n.endswith("/data.pkl"))


# --- what torch.save really writes ------------------------------------------------------------


def test_recorded_torch_state_dict_passes(tmp_path: Path) -> None:
    scan = scan_pickle_file(write(tmp_path, "model.pt", RECORDED_STATE_DICT))
    assert scan.streams == 1
    assert scan.globals_used == {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
                                 "torch.FloatStorage", "torch.LongStorage"}


def test_live_torch_save_of_state_dicts_uses_only_the_allowlist(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(8, 2))
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
              torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
              torch.complex128]
    seen: set[str] = set()
    for index, state in enumerate([
            model.state_dict(),
            model.half().state_dict(),
            {f"t{i}": torch.zeros(2, 3, dtype=d) for i, d in enumerate(dtypes)},
            {"transposed": torch.zeros(3, 4).t(), "view": torch.arange(10.0)[2:7]},
            nn.LSTM(4, 4).state_dict()]):
        path = tmp_path / f"m{index}.pt"
        torch.save(state, path)
        seen |= scan_pickle_file(path).globals_used
    # The allowlist is minimal: every entry is something torch really emitted.
    assert seen == TORCH_STATE_DICT_GLOBALS


def test_live_torch_save_of_parameters_is_refused_naming_rebuild_parameter(
        tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "params.pt"
    torch.save(dict(torch.nn.Linear(2, 2).named_parameters()), path)
    with pytest.raises(UnsafePickle) as caught:
        scan_pickle_file(path)
    assert caught.value.global_name == "torch._utils._rebuild_parameter"


def test_recorded_state_dict_matches_what_torch_writes_today() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).state_dict(), buffer)
    live = zipfile.ZipFile(buffer)
    recorded = zipfile.ZipFile(io.BytesIO(RECORDED_STATE_DICT))
    assert [pickletools.optimize(live.read(data_pkl(buffer.getvalue())))] == [
        pickletools.optimize(recorded.read(data_pkl(RECORDED_STATE_DICT)))]


# --- what an insider might try ----------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_reduce_payload_is_refused_by_position_not_name(tmp_path: Path, protocol: int) -> None:
    path = write(tmp_path, "model.pkl", pickle.dumps(Exploit(), protocol=protocol))
    with pytest.raises(UnsafePickle) as caught:
        scan_pickle_file(path)
    # The global's name is for the log (detail) only: a name is text the sandbox chose.
    assert caught.value.global_name == f"{os.system.__module__}.system"
    assert "system" in caught.value.detail
    assert "global 1 of the stream" in caught.value.user_message
    assert "system" not in caught.value.user_message


def test_payload_inside_a_torch_zip_is_refused(tmp_path: Path) -> None:
    evil = replace_member(RECORDED_STATE_DICT, data_pkl(RECORDED_STATE_DICT),
                          pickle.dumps(Exploit(), protocol=2))
    with pytest.raises(UnsafePickle) as caught:
        scan_pickle_file(write(tmp_path, "model.pt", evil))
    assert caught.value.global_name == f"{os.system.__module__}.system"
    assert caught.value.user_message.startswith("entry 1 of the archive ")
    assert "data.pkl" not in caught.value.user_message and "data.pkl" in caught.value.detail


def test_payload_in_an_extra_pickle_entry_is_refused(tmp_path: Path) -> None:
    evil = replace_member(RECORDED_STATE_DICT, "", b"",
                          extra={"archive/constants.pkl": pickle.dumps(Exploit(), protocol=2)})
    with pytest.raises(UnsafePickle, match=r"^entry \d+ of the archive ") as caught:
        scan_pickle_file(write(tmp_path, "model.pt", evil))
    assert "constants" not in caught.value.user_message


def test_state_dict_with_a_payload_appended_to_its_pickle_is_refused(tmp_path: Path) -> None:
    member = data_pkl(RECORDED_STATE_DICT)
    original = zipfile.ZipFile(io.BytesIO(RECORDED_STATE_DICT)).read(member)
    evil = replace_member(RECORDED_STATE_DICT, member,
                          original + pickle.dumps(Exploit(), protocol=2))
    with pytest.raises(InvalidFormat, match="after the end"):
        read_pickle_streams(write(tmp_path, "model.pt", evil))


def test_stack_global_via_the_memo_is_resolved_and_refused() -> None:
    # PROTO 4, 'os' MEMOIZE, 'system' MEMOIZE, BINGET 0, BINGET 1, STACK_GLOBAL, 'id' TUPLE1 REDUCE
    payload = (b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94h\x00h\x01\x93\x8c\x02id\x85R.")
    with pytest.raises(UnsafePickle) as caught:
        scan_pickle(payload)
    assert caught.value.global_name == "os.system"


def test_stack_global_with_a_computed_name_is_refused() -> None:
    # The module name is the result of a call (OrderedDict()), not a string in the pickle.
    payload = (b"\x80\x04\x8c\x0bcollections\x8c\x0bOrderedDict\x93)R\x8c\x06system\x93.")
    with pytest.raises(UnsafePickle, match="computed"):
        scan_pickle(payload)


def test_calling_the_result_of_an_allowed_call_is_refused() -> None:
    # OrderedDict() then calling what it returned: only imports may be called.
    payload = b"\x80\x02ccollections\nOrderedDict\n)R)R."
    with pytest.raises(UnsafePickle, match="REDUCE"):
        scan_pickle(payload)


@pytest.mark.parametrize("payload, fragment", [
    (b"\x80\x02\x82\x01)R.", "extension registry"),  # EXT1 1, call it
    (b"(cos\nsystem\nS'id'\no.", "os.system"),  # MARK GLOBAL args OBJ
    (b"(S'id'\nios\nsystem\n.", "os.system"),  # INST imports and calls at once
    (b"\x80\x04cbuiltins\neval\n.", "builtins.eval"),
    (b"\x80\x04c__builtin__\neval\n.", "__builtin__.eval"),
    (b"\x80\x04ctorch._utils\n_rebuild_tensor_v2.__globals__\n.", "__globals__"),
    (b"\x80\x04ctorch\nload\n.", "torch.load"),
])
def test_other_ways_to_import_or_call_are_refused(payload: bytes, fragment: str) -> None:
    with pytest.raises(UnsafePickle) as caught:
        scan_pickle(payload)
    assert fragment in f"{caught.value.user_message} {caught.value.global_name}"


@pytest.mark.parametrize("payload", [
    b"\x80\x02",  # no STOP
    b"\x80\x02R.",  # REDUCE on an empty stack
    b"\x80\x02h\x05.",  # memo slot never written
    b"\xff.",  # not an opcode
])
def test_malformed_pickles_are_refused(payload: bytes) -> None:
    with pytest.raises(UnsafePickle):
        scan_pickle(payload)


def test_plain_data_pickles_pass() -> None:
    data = {"w": [1.0, 2.0], "t": (1, "a"), "s": {1, 2}, "f": frozenset({3}), "n": None}
    for protocol in range(4, pickle.HIGHEST_PROTOCOL + 1):  # older ones import set()
        assert scan_pickle(pickle.dumps(data, protocol=protocol)) == frozenset()
    assert scan_pickle(pickle.dumps(OrderedDict(a=1), protocol=2)) == {"collections.OrderedDict"}


# --- the container ----------------------------------------------------------------------------


def test_legacy_torch_format_with_several_pickles_is_refused(tmp_path: Path) -> None:
    legacy = pickle.dumps(0x1950A86A20F9469CFC6C) + pickle.dumps(1001) + pickle.dumps({})
    with pytest.raises(InvalidFormat, match="after the end"):
        read_pickle_streams(write(tmp_path, "model.pt", legacy))


def test_compressed_or_odd_torch_zips_are_refused(tmp_path: Path) -> None:
    source = zipfile.ZipFile(io.BytesIO(RECORDED_STATE_DICT))
    deflated = io.BytesIO()
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
    with pytest.raises(InvalidFormat, match="compressed"):
        read_pickle_streams(write(tmp_path, "a.pt", deflated.getvalue()))

    commented = io.BytesIO()
    with zipfile.ZipFile(commented, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
        target.comment = b"hidden rows"
    with pytest.raises(InvalidFormat, match="comment"):
        read_pickle_streams(write(tmp_path, "b.pt", commented.getvalue()))

    no_data = replace_member(RECORDED_STATE_DICT, "", b"")
    no_data_zip = io.BytesIO()
    with zipfile.ZipFile(no_data_zip, "w") as target:
        for info in zipfile.ZipFile(io.BytesIO(no_data)).infolist():
            if not info.filename.endswith("data.pkl"):
                target.writestr(info.filename, b"x")
    with pytest.raises(InvalidFormat, match="data.pkl"):
        read_pickle_streams(write(tmp_path, "c.pt", no_data_zip.getvalue()))

    with pytest.raises(InvalidFormat, match="zip"):
        read_pickle_streams(write(tmp_path, "d.pt", b"PK\x03\x04" + b"\0" * 100))


def test_zip_with_data_before_its_first_entry_is_refused(tmp_path: Path) -> None:
    prefixed = b"PK\x03\x04 a hidden dataset row ..." + RECORDED_STATE_DICT
    # Python's zipfile still reads it (it finds the directory from the end); the gate does not.
    assert len(zipfile.ZipFile(io.BytesIO(prefixed)).namelist()) > 1
    with pytest.raises(InvalidFormat, match="before its first entry"):
        read_pickle_streams(write(tmp_path, "m.pt", prefixed))


def test_plain_pickle_stream_is_one_stream(tmp_path: Path) -> None:
    streams = read_pickle_streams(write(tmp_path, "m.pkl", pickle.dumps({"a": 1})))
    assert [s.member for s in streams] == [""]
    assert struct.unpack("<B", streams[0].data[:1]) == (0x80,)
