"""Red team, inside a sandbox: an insider tries to carry dataset rows out before any approval.

Stdlib only, run as uid 10001 by tests/security/test_insider.py. It reads the rows it was
granted, hides them in outbox names, in files made to make the gate's reasons echo them, under
encodings and compressed streams, in 160 MiB of rotating log, and races the outbox listing.

Phases, paced by marker files the test drops in /workspace (the sandbox has no network):
  1. a short log, the outbox files, then /workspace/ready.json (what was made, for the test);
  2. swap /outbox/swap between a directory and a symlink to /etc (and a file and a FIFO)
     until `race-done` appears,
     then remove the sparse file (a 10 TiB outbox is over the hashing cap as a whole, which
     would keep every other file from the gate: `{"mode": "sparse"}` leaves one in place);
  3. write the log flood, reporting bytes written in /workspace/progress, then wait for
     `log-done` and exit, leaving /outbox/swap a symlink to /etc.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import gzip
import io
import json
import lzma
import os
import random
import struct
import sys
import threading
import time
import urllib.parse
import zipfile
import zlib
from typing import Any

OUTBOX = "/outbox"
WORKSPACE = "/workspace"
DEFAULTS: dict[str, Any] = {"mode": "insider", "dataset": "patients", "log_mib": 160,
                            "wait_s": 300}
TiB = 1 << 40

_report: dict[str, Any] = {"files": {}, "errors": [], "race_swaps": 0}


def read_rows(dataset: str) -> list[str]:
    """Every patient row of every CSV in the dataset, in file order."""
    root = f"/data/{dataset}"
    rows: list[str] = []
    for name in sorted(os.listdir(root)):
        if name.endswith(".csv"):
            with open(os.path.join(root, name), encoding="utf-8") as handle:
                rows.extend(line.rstrip("\n") for line in handle if line.startswith("P"))
    return rows


def put(name: str, data: bytes, kind: str) -> None:
    """Write an outbox file and note what it is: `encoded` files must fail the gate."""
    path = os.path.join(OUTBOX, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    _report["files"][name] = kind


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


# --- file formats, built by hand ------------------------------------------------------------


def safetensors(tensors: dict[str, tuple[str, list[int], bytes]],
                metadata: dict[str, str] | None = None) -> bytes:
    """8-byte little-endian header length, the JSON header, then the tensors' data."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata is not None else {}
    payload = b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(payload), len(payload) + len(data)]}
        payload += data
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + payload


def u8(data: bytes) -> tuple[str, list[int], bytes]:
    return ("U8", [len(data)], data)


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _pb(number: int, value: bytes | str | int) -> bytes:
    """One protobuf field: varint for ints, length-delimited for bytes and strings."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def onnx_model(rows: list[str]) -> bytes:
    """A ModelProto whose op type, node name, strings and doc strings are rows (no onnx
    package needed: the image does not ship it)."""
    attribute = _pb(1, "note") + _pb(4, rows[0]) + _pb(20, 3)  # AttributeProto, STRING
    node = (_pb(1, "x") + _pb(2, "y") + _pb(3, rows[1]) + _pb(4, rows[2])
            + _pb(5, attribute) + _pb(6, rows[3]))
    # TypeProto.tensor_type: elem_type FLOAT, shape [1], so the checker reaches the op
    tensor_type = _pb(1, _pb(1, 1) + _pb(2, _pb(1, _pb(1, 1))))
    graph = (_pb(1, node) + _pb(2, rows[4]) + _pb(10, rows[5])
             + _pb(11, _pb(1, "x") + _pb(2, tensor_type) + _pb(3, rows[6]))
             + _pb(12, _pb(1, "y") + _pb(2, tensor_type)))
    return (_pb(1, 8) + _pb(2, rows[7]) + _pb(6, "\n".join(rows[8:12])) + _pb(7, graph)
            + _pb(8, _pb(1, "") + _pb(2, 17)))


def zip_stream(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("notes.txt", data)
    return buffer.getvalue()


# --- phase 1: the outbox --------------------------------------------------------------------


def make_names(rows: list[str]) -> None:
    """Rows as file names: verbatim (spaces, commas), and disguised inside the name pattern."""
    for i, row in enumerate(rows[:60]):
        put(f"{i:03d} {row}", b"", "row-name")
    for row in rows[60:72]:
        put(f"{b64url(row.encode())}.bin", b"", "encoded-name")
    for row in rows[72:84]:
        # `UDAwMDAwLDE5NDAt.bin`: the first twelve bytes of a row, in standard base64
        put(f"{base64.b64encode(row.encode()[:12]).decode()}.bin", b"", "encoded-name")
    for row in rows[84:96]:
        put(f"{binascii.hexlify(row.encode()[:30]).decode()}.hx", b"", "encoded-name")
    put("deep/a/b/c/d/deep.json", b'{"accuracy": 0.5}', "deep")


def make_check_files(rows: list[str]) -> None:
    rng = random.Random(10)
    text = "\n".join(rows).encode()

    chunks = [base64.b64encode(row.encode()).decode() for row in rows]
    keys = {c[i:i + 16]: 0.5 for c in chunks for i in range(0, len(c), 16)}
    put("metrics_b64keys.json", json.dumps(keys).encode(), "encoded")
    put("metrics_rowkey.json", json.dumps({"accuracy": 0.9, "cohort": {rows[100]: 3}}).encode(),
        "encoded")
    header = ",".join(base64.b64encode(rows[i % len(rows)].encode()).decode()
                      for i in range(326))
    put("header_b64.csv", (header + "\n").encode(), "encoded")

    weights = u8(bytes(rng.randrange(256) for _ in range(64)))
    put("rowname.safetensors", safetensors({rows[101]: ("Q7", [4], b"\0" * 4),
                                            "weight": weights}), "encoded")
    three = "\n".join(rows[110:113]).encode()
    put("meta_b64.safetensors", safetensors(
        {"weight": weights}, {"notes": base64.b64encode(three).decode()}), "encoded")
    put("meta_hex.safetensors", safetensors(
        {"weight": weights}, {"notes": binascii.hexlify(three).decode()}), "encoded")
    put("meta_utf16.safetensors", safetensors(
        {"weight": weights}, {"notes": three.decode().encode("utf-16-le").decode("latin-1")}),
        "encoded")
    put("meta_b32.safetensors", safetensors(
        {"weight": weights}, {"notes": base64.b32encode("\n".join(rows[150:153]).encode())
                              .decode()}), "encoded")
    put("meta_url.safetensors", safetensors(
        {"weight": weights}, {"notes": urllib.parse.quote("\n".join(rows[153:156]))}),
        "encoded")
    # the fields in order, other separators between them: the scan must re-join them
    rejoined = "\n".join(r.replace(",", " | ").replace("-", "/") for r in rows[156:159])
    put("meta_fields.safetensors", safetensors({"weight": weights}, {"notes": rejoined}),
        "encoded")
    # Each field its own value under its own key: letters and digits between the fields.
    # Known residual (the gate's re-joining keeps only letters and digits, so the keys break
    # the row apart); the metadata cap bounds it. Requested and reported, not asserted.
    keyed = {f"c{i}_{j}": value for i, row in enumerate(rows[159:162])
             for j, value in enumerate(row.split(","))}
    put("meta_fields_keyed.safetensors", safetensors({"weight": weights}, keyed), "residual")
    put("tensor_utf16.safetensors", safetensors(
        {"weight": u8(b"\0\0" + "\n".join(rows[113:116]).encode("utf-16-be"))}), "encoded")
    put("meta_big.safetensors", safetensors(
        {"weight": weights}, {"notes": "\n".join(rows[:200])}), "encoded")
    put("meta_b64gz.safetensors", safetensors(
        {"weight": weights},
        {"notes": base64.b64encode(gzip.compress("\n".join(rows[120:150]).encode())).decode()}),
        "encoded")
    streams = {
        "gzip": gzip.compress(text[:2000]),
        "zlib": zlib.compress(text[:2000]),
        "bz2": bz2.compress(text[:2000]),
        "xz": lzma.compress(text[:2000]),
        "zip": zip_stream(text[:2000]),
    }
    for codec, stream in streams.items():
        # at a non-zero, unaligned offset inside the tensor's data
        before = bytes(rng.randrange(256) for _ in range(1013))
        after = bytes(rng.randrange(256) for _ in range(501))
        put(f"stream_{codec}.safetensors",
            safetensors({"weight": weights, "blob": u8(before + stream + after)}), "encoded")
    put("model.onnx", onnx_model(rows[130:142]), "encoded")

    # The control: an honest model and metrics, which must reach review.
    floats = struct.pack("<64f", *(rng.gauss(0.0, 0.1) for _ in range(64)))
    put("clean.safetensors", safetensors({"weight": ("F32", [64], floats)}), "clean")
    put("clean_metrics.json", json.dumps({"accuracy": 0.91, "loss": 0.23}).encode(), "clean")


def make_traps() -> None:
    """Things a listing must not follow, open, block on or read to the end."""
    os.symlink("/etc/passwd", os.path.join(OUTBOX, "link.safetensors"))
    os.symlink("/etc", os.path.join(OUTBOX, "etc"))
    _report["files"]["link.safetensors"] = "trap"
    try:
        os.mkfifo(os.path.join(OUTBOX, "fifo.safetensors"))
        _report["files"]["fifo.safetensors"] = "trap"
    except OSError as exc:
        _report["errors"].append(f"mkfifo: {exc}")
    sparse = os.path.join(OUTBOX, "sparse.safetensors")
    try:
        with open(sparse, "wb"):
            pass
        os.truncate(sparse, 10 * TiB)
        _report["files"]["sparse.safetensors"] = "trap"
    except OSError as exc:
        _report["errors"].append(f"sparse file: {exc}")
    put("swap/model.safetensors", safetensors({"weight": u8(b"\1" * 8)}), "race")
    put("swapfile.safetensors", safetensors({"weight": u8(b"\2" * 8)}), "race")


# --- phase 2: the listing race --------------------------------------------------------------


def race(stop: threading.Event) -> None:
    """Swap /outbox/swap between a directory and a symlink to /etc, and
    /outbox/swapfile.safetensors between a regular file and a FIFO, as fast as possible."""
    real, swap = os.path.join(OUTBOX, ".swap-real"), os.path.join(OUTBOX, "swap")
    file_real = os.path.join(OUTBOX, ".swapfile-real")
    file_swap = os.path.join(OUTBOX, "swapfile.safetensors")
    while not stop.is_set():
        try:
            os.rename(swap, real)
            os.symlink("/etc", swap)
            os.rename(file_swap, file_real)
            os.mkfifo(file_swap)
            os.unlink(swap)
            os.rename(real, swap)
            os.unlink(file_swap)
            os.rename(file_real, file_swap)
        except OSError as exc:
            _report["errors"].append(f"race: {exc}")
            return
        _report["race_swaps"] += 1
    # Leave the link and the FIFO in place: a listing (and the hashing) after the sandbox
    # ended must neither follow the one nor block on the other.
    os.rename(swap, real)
    os.symlink("/etc", swap)
    os.rename(file_swap, file_real)
    os.mkfifo(file_swap)
    _report["files"]["swapfile.safetensors"] = "trap"


def wait_for_marker(name: str, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    path = os.path.join(WORKSPACE, name)
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def write_json(name: str, data: object) -> None:
    tmp = os.path.join(WORKSPACE, f".{name}.tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, os.path.join(WORKSPACE, name))


# --- phase 3: the log flood -----------------------------------------------------------------


def flood(rows: list[str], mib: int) -> tuple[int, int]:
    """Numbered records, 26 rows each (about 1 KiB), until `mib` MiB have been written."""
    bodies = [";".join(rows[(n * 7 + j) % len(rows)] for j in range(26)) for n in
              range(len(rows))]
    out = sys.stdout.buffer
    written, n, target, next_report = 0, 0, mib << 20, 0
    while written < target:
        batch = "".join(f"{k:08d} {bodies[k % len(bodies)]}\n" for k in range(n, n + 256))
        data = batch.encode()
        out.write(data)
        written, n = written + len(data), n + 256
        if written >= next_report:
            out.flush()
            write_json("progress", {"bytes": written, "records": n})
            next_report = written + (4 << 20)
    out.flush()
    write_json("progress", {"bytes": written, "records": n, "done": True})
    return n, written


def main(argv: list[str]) -> int:
    config = dict(DEFAULTS)
    if len(argv) > 1:
        config.update(json.loads(argv[1]))
    if config.get("mode") == "sparse":
        make_traps()
        put("ok.json", b'{"accuracy": 0.5}', "clean")
        write_json("report.json", _report)
        return 0
    rows = read_rows(config["dataset"])
    _report["rows"] = len(rows)
    for i, row in enumerate(rows[:20]):
        print(f"H{i:04d} {row}", flush=True)
    make_names(rows)
    make_check_files(rows)
    make_traps()

    stop = threading.Event()
    racer = threading.Thread(target=race, args=(stop,), daemon=True)
    racer.start()
    write_json("ready.json", _report)
    _report["race_done_seen"] = wait_for_marker("race-done", config["wait_s"])
    stop.set()
    racer.join()
    if os.path.exists(os.path.join(OUTBOX, "sparse.safetensors")):
        os.unlink(os.path.join(OUTBOX, "sparse.safetensors"))
        _report["files"].pop("sparse.safetensors")

    _report["records"], _report["log_bytes"] = flood(rows, int(config["log_mib"]))
    _report["log_done_seen"] = wait_for_marker("log-done", config["wait_s"])
    write_json("report.json", _report)
    # The workspace goes when the sandbox ends: stay until the test has read the report.
    wait_for_marker("report-read", config["wait_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
