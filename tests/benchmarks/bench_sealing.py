"""Sealing throughput: sealing a 1 GiB released file against `sha256sum` of the same file.

Both sides are timed in the same run, interleaved, on a warm page cache (the file was just
written). The number is the throughput ratio sha256sum_time / seal_time (1.0 = as fast as
hashing the file once); the aim is >= 0.8. coreutils' sha256sum on Debian 12 does not use
the CPU's SHA instructions, so a stricter baseline is reported too: one SHA-256 pass with
OpenSSL (hashlib), the floor for anything that must hash the file. For information: sealing
when the store is on another filesystem (a copy instead of a hard link), and verification.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

from sandbox.gate.keys import GateKey, GateKeyRing
from sandbox.gate.provenance import build_provenance
from sandbox.gate.sealing import seal_bundle
from sandbox.gate.verify import verify_bundle

NAME = "sealing"
SIZE = 1 << 30
RUNS = 3
AIM = 0.8
_PASSPHRASE = b"benchmark-only-passphrase"
_CHUNK = 16 << 20


def _write_blob(directory: Path) -> tuple[Path, str]:
    """1 GiB of incompressible bytes, stored read-only the way the blob store keeps them."""
    digest = hashlib.sha256()
    tmp = directory / "incoming"
    with tmp.open("wb") as out:
        for _ in range(SIZE // _CHUNK):
            chunk = os.urandom(_CHUNK)
            digest.update(chunk)
            out.write(chunk)
    sha = digest.hexdigest()
    blob = directory / "store" / "sha256" / sha[:2] / sha
    blob.parent.mkdir(parents=True)
    os.chmod(tmp, 0o444)
    os.replace(tmp, blob)
    return blob, sha


def _sha256sum(blob: Path, sha: str) -> float:
    began = time.perf_counter()
    out = subprocess.run(["sha256sum", str(blob)], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - began
    if out.stdout.split()[0] != sha:
        raise RuntimeError("sha256sum disagrees with the digest the file was written with")
    return seconds


def _one_pass(blob: Path, sha: str) -> float:
    began = time.perf_counter()
    with blob.open("rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
    seconds = time.perf_counter() - began
    if digest != sha:
        raise RuntimeError("hashlib disagrees with the digest the file was written with")
    return seconds


def _seal(key: GateKey, blob: Path, sha: str, destination: Path) -> float:
    now = datetime.now(UTC)
    provenance = build_provenance(
        [("model.safetensors", sha)], release_id="bench", sandbox_spec={},
        image_digest="sha256:" + "0" * 64, datasets=[], code_digest="sha256:" + "0" * 64,
        policy_version=1, requester="bench", approvers=["bench"], checks={},
        started_on=now, finished_on=now, builder_id="https://sealroom.dev/gate/bench")
    began = time.perf_counter()
    seal_bundle(files=[("model.safetensors", blob, sha)], destination=destination,
                private_key_pem=key.private_pem, passphrase=_PASSPHRASE, provenance=provenance)
    seconds = time.perf_counter() - began
    return seconds


def _cross_device(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.EXDEV, "cross-device link (simulated)")


def run(runs: int = RUNS) -> dict[str, Any]:
    if shutil.which("sha256sum") is None:
        raise RuntimeError("sha256sum (coreutils) is not installed")
    baseline: list[float] = []
    one_pass: list[float] = []
    linked: list[float] = []
    copied: list[float] = []
    verified: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sealroom-bench-sealing-") as tmp:
        root = Path(tmp)
        key = GateKeyRing(root / "keys").ensure(_PASSPHRASE)
        blob, sha = _write_blob(root)
        _sha256sum(blob, sha)  # warm-up: the same page-cache state for both sides
        for i in range(runs):
            destination = root / "releases" / f"r{i}" / "bundle"
            # Alternate who goes first so neither side always follows the other.
            if i % 2:
                linked.append(_seal(key, blob, sha, destination))
                one_pass.append(_one_pass(blob, sha))
                baseline.append(_sha256sum(blob, sha))
            else:
                baseline.append(_sha256sum(blob, sha))
                one_pass.append(_one_pass(blob, sha))
                linked.append(_seal(key, blob, sha, destination))
            if i == 0:
                began = time.perf_counter()
                verify_bundle(destination, key.public_pem)
                verified.append(time.perf_counter() - began)
            shutil.rmtree(destination.parent)
        with mock.patch.object(os, "link", _cross_device):
            destination = root / "releases" / "copied" / "bundle"
            copied.append(_seal(key, blob, sha, destination))
            shutil.rmtree(destination.parent)

    base = statistics.median(baseline)
    ratio = base / statistics.median(linked)
    ratio_one_pass = statistics.median(one_pass) / statistics.median(linked)
    copy_ratio = base / statistics.median(copied)
    verify_ratio = base / statistics.median(verified)
    mib = SIZE / (1 << 20)
    verdict = "PASS" if ratio >= AIM else "BELOW AIM"
    print(f"1 GiB file, warm page cache, N={runs} interleaved; seconds (median) and MiB/s")
    print(f"{'':<34}{'seconds':>9}{'MiB/s':>9}{'ratio':>8}")
    rows = [("sha256sum (baseline)", base),
            ("sha256 one pass, OpenSSL", statistics.median(one_pass)),
            ("seal (hard link from store)", statistics.median(linked)),
            ("seal (copy, other filesystem)", statistics.median(copied)),
            ("verify_bundle (offline)", statistics.median(verified))]
    for label, seconds in rows:
        print(f"{label:<34}{seconds:>9.3f}{mib / seconds:>9.0f}{base / seconds:>8.2f}")
    print(f"{'throughput ratio seal/sha256sum':<34}{ratio:>26.2f}   aim >= {AIM}: {verdict}")
    print(f"{'throughput ratio seal/OpenSSL pass':<34}{ratio_one_pass:>26.2f}")
    return {
        "benchmark": NAME,
        "bytes": SIZE,
        "runs": runs,
        "sha256sum_s": baseline,
        "sha256_one_pass_s": one_pass,
        "seal_linked_s": linked,
        "seal_copied_s": copied,
        "verify_s": verified,
        "ratio": ratio,
        "ratio_one_pass": ratio_one_pass,
        "ratio_copied": copy_ratio,
        "ratio_verify": verify_ratio,
        "aim": AIM,
        "verdict": verdict,
    }
