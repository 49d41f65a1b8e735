"""Sealing a release: the bundle verifies with Sealroom's verifier, its CLI and the stock
`model_signing verify key`; a crash (exception or kill -9) publishes nothing and a retry
succeeds; resealing is idempotent; names and digests that do not match are refused."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from console.cli_release import release
from sandbox.gate import sealing
from sandbox.gate.keys import GateKey, GateKeyRing, KeyPassphraseError
from sandbox.gate.provenance import build_provenance
from sandbox.gate.sealing import (
    BundleConflict,
    DigestMismatch,
    InvalidReleaseName,
    ProvenanceMismatch,
    SealingError,
    seal_bundle,
)
from sandbox.gate.store import BlobStore
from sandbox.gate.verify import verify_bundle
from tests.helpers import UNTIMED_HEALTH_CHECKS

PASS = b"sealing-test-passphrase"
MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> GateKey:
    return GateKeyRing(tmp_path_factory.mktemp("keys")).ensure(PASS)


def _provenance(files: dict[str, str]) -> dict[str, Any]:
    now = datetime.now(UTC)
    return build_provenance(
        sorted(files.items()), release_id="rel-1", sandbox_spec={"example": "mlp"},
        image_digest="sha256:" + "a" * 64,
        datasets=[{"name": "demo", "digest": "sha256:" + "b" * 64}],
        code_digest="sha256:" + "c" * 64, policy_version=3, requester="alice",
        approvers=["bob", "carol"], checks={"leakscan": "passed"}, started_on=now,
        finished_on=now, builder_id="https://sealroom.dev/gate/test")


def _stored(root: Path, contents: dict[str, bytes]) -> list[tuple[str, Path, str]]:
    """Put the contents in a content-addressed store, as the gate does before review."""
    store = BlobStore(root / "store")
    triples = []
    for name, data in contents.items():
        source = root / "outbox-file"
        source.write_bytes(data)
        sha, _ = store.put(source)
        triples.append((name, store.path(sha), sha))
    return triples


def _seal(tmp_path: Path, key: GateKey, contents: dict[str, bytes],
          destination: Path | None = None) -> sealing.SealedBundle:
    files = _stored(tmp_path, contents)
    return seal_bundle(files=files, destination=destination or tmp_path / "rel" / "bundle",
                       private_key_pem=key.private_pem, passphrase=PASS,
                       provenance=_provenance({n: s for n, _, s in files}))


def _model_signing_verify(bundle: Path, pem_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MODEL_SIGNING), "verify", "key", "--signature", str(bundle / "model.sig"),
         "--public_key", str(pem_path), str(bundle)],
        capture_output=True, text=True, timeout=120)


CONTENTS = {"model.safetensors": os.urandom(300_000), "metrics.json": b'{"acc": 0.9}\n',
            "tokenizer/vocab.txt": b"a\nb\n"}


def test_sealed_bundle_verifies_three_ways(tmp_path: Path, key: GateKey) -> None:
    sealed = _seal(tmp_path, key, CONTENTS)
    bundle = tmp_path / "rel" / "bundle"
    assert sealed.path == bundle and sealed.keyid == key.keyid
    assert sealed.files == sorted((n, hashlib.sha256(d).hexdigest())
                                  for n, d in CONTENTS.items())
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()) \
        == sorted([*CONTENTS, "model.sig", "provenance.intoto.jsonl"])
    assert os.listdir(tmp_path / "rel") == ["bundle"]  # no partial left behind

    result = verify_bundle(bundle, key.public_pem)
    assert result.files == sealed.files
    assert (result.requester, result.approvers, result.release_id) == ("alice", ["bob", "carol"],
                                                                       "rel-1")
    assert result.datasets == [("demo", "sha256:" + "b" * 64)]
    assert result.image_digest == "sha256:" + "a" * 64 and result.policy_version == 3

    pem = tmp_path / "release.pem"
    pem.write_bytes(key.public_pem)
    out = CliRunner().invoke(release, ["verify", str(bundle), "--key", str(pem)])
    assert out.exit_code == 0, out.output
    assert "alice" in out.output and "bob, carol" in out.output and "demo" in out.output
    assert out.output.count("✓") == 6 and "VERIFIED" in out.output

    stock = _model_signing_verify(bundle, pem)
    assert stock.returncode == 0, stock.stderr
    assert "Verification succeeded" in stock.stdout


def test_model_sig_records_the_bundle_name_and_covers_the_provenance(
        tmp_path: Path, key: GateKey) -> None:
    import base64

    sealed = _seal(tmp_path, key, {"w.bin": b"w"})
    bundle_json = json.loads((sealed.path / "model.sig").read_text())
    statement = json.loads(base64.b64decode(bundle_json["dsseEnvelope"]["payload"]))
    assert statement["subject"][0]["name"] == "bundle"
    serialization = statement["predicate"]["serialization"]
    assert serialization["method"] == "files" and serialization["hash_type"] == "sha256"
    assert "model.sig" in serialization["ignore_paths"]
    assert "provenance.intoto.jsonl" not in serialization["ignore_paths"]
    covered = {r["name"] for r in statement["predicate"]["resources"]}
    assert covered == {"w.bin", "provenance.intoto.jsonl"}


def test_store_blobs_are_hard_linked_not_copied(tmp_path: Path, key: GateKey) -> None:
    files = _stored(tmp_path, {"w.bin": b"weights"})
    sealed = seal_bundle(files=files, destination=tmp_path / "b", private_key_pem=key.private_pem,
                         passphrase=PASS, provenance=_provenance({"w.bin": files[0][2]}))
    assert (sealed.path / "w.bin").stat().st_ino == files[0][1].stat().st_ino


def test_copy_fallback_across_devices(tmp_path: Path, key: GateKey,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def cross_device(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(sealing.os, "link", cross_device)
    files = _stored(tmp_path, {"w.bin": b"weights"})
    sealed = seal_bundle(files=files, destination=tmp_path / "b", private_key_pem=key.private_pem,
                         passphrase=PASS, provenance=_provenance({"w.bin": files[0][2]}))
    assert (sealed.path / "w.bin").stat().st_ino != files[0][1].stat().st_ino
    verify_bundle(sealed.path, key.public_pem)


def test_content_not_matching_the_approved_digest_is_refused(tmp_path: Path,
                                                             key: GateKey) -> None:
    source = tmp_path / "changed"
    source.write_bytes(b"not what was reviewed")
    approved = hashlib.sha256(b"what was reviewed").hexdigest()
    with pytest.raises(DigestMismatch):
        seal_bundle(files=[("w.bin", source, approved)], destination=tmp_path / "b",
                    private_key_pem=key.private_pem, passphrase=PASS,
                    provenance=_provenance({"w.bin": approved}))
    assert os.listdir(tmp_path) == ["changed"]


def test_provenance_must_name_the_sealed_files(tmp_path: Path, key: GateKey) -> None:
    files = _stored(tmp_path, {"w.bin": b"w", "x.bin": b"x"})
    with pytest.raises(ProvenanceMismatch):
        seal_bundle(files=files, destination=tmp_path / "b", private_key_pem=key.private_pem,
                    passphrase=PASS, provenance=_provenance({"w.bin": files[0][2]}))
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("names", [
    ["../escape"], ["/abs"], ["a//b"], ["a/./b"], ["model.sig"], ["provenance.intoto.jsonl"],
    [".gitignore"], [".git/config"], [".github/x"], ["back\\slash"], ["new\nline"],
    ["dup", "dup"], ["a", "a/b"], ["x" * 256],
])
def test_unsafe_or_reserved_names_are_refused(tmp_path: Path, key: GateKey,
                                              names: list[str]) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"x")
    sha = hashlib.sha256(b"x").hexdigest()
    with pytest.raises(InvalidReleaseName):
        seal_bundle(files=[(n, blob, sha) for n in names], destination=tmp_path / "b",
                    private_key_pem=key.private_pem, passphrase=PASS,
                    provenance={"subject": []})
    assert not (tmp_path / "b").exists()


def test_wrong_passphrase_is_refused(tmp_path: Path, key: GateKey) -> None:
    files = _stored(tmp_path, {"w.bin": b"w"})
    with pytest.raises(KeyPassphraseError):
        seal_bundle(files=files, destination=tmp_path / "b", private_key_pem=key.private_pem,
                    passphrase=b"wrong", provenance=_provenance({"w.bin": files[0][2]}))


def test_failure_before_publishing_leaves_nothing_and_retry_succeeds(
        tmp_path: Path, key: GateKey, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(staging: Path, destination: Path) -> None:
        assert (staging / "model.sig").exists() and (staging / "provenance.intoto.jsonl").exists()
        raise OSError("disk vanished")

    monkeypatch.setattr(sealing, "_publish", crash)
    with pytest.raises(SealingError, match="could not be written"):
        _seal(tmp_path, key, CONTENTS)
    assert not (tmp_path / "rel" / "bundle").exists()
    assert os.listdir(tmp_path / "rel") == []
    monkeypatch.undo()
    sealed = _seal(tmp_path, key, CONTENTS)
    verify_bundle(sealed.path, key.public_pem)


def test_kill_9_while_sealing_publishes_nothing_and_retry_succeeds(
        tmp_path: Path, key: GateKey) -> None:
    files = _stored(tmp_path, CONTENTS)
    destination = tmp_path / "rel" / "bundle"
    job = tmp_path / "job.json"
    job.write_text(json.dumps({
        "files": [[n, str(p), s] for n, p, s in files], "destination": str(destination),
        "key": key.private_pem.decode(), "passphrase": PASS.decode(),
        "provenance": _provenance({n: s for n, _, s in files})}))
    script = textwrap.dedent("""
        import json, os, signal, sys
        from pathlib import Path
        from sandbox.gate import sealing
        job = json.loads(Path(sys.argv[1]).read_text())
        # Die the hard way at the last moment: everything is written, nothing published.
        sealing._publish = lambda staging, destination: os.kill(os.getpid(), signal.SIGKILL)
        sealing.seal_bundle(files=[(n, Path(p), s) for n, p, s in job["files"]],
                            destination=Path(job["destination"]),
                            private_key_pem=job["key"].encode(),
                            passphrase=job["passphrase"].encode(),
                            provenance=job["provenance"])
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(job)], cwd=Path.cwd(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not destination.exists()
    leftovers = os.listdir(destination.parent)
    assert len(leftovers) == 1 and leftovers[0].startswith("bundle.partial-")

    sealed = seal_bundle(files=files, destination=destination, private_key_pem=key.private_pem,
                         passphrase=PASS, provenance=_provenance({n: s for n, _, s in files}))
    verify_bundle(sealed.path, key.public_pem)
    assert os.listdir(destination.parent) == ["bundle"]


def test_sealing_twice_is_idempotent(tmp_path: Path, key: GateKey) -> None:
    first = _seal(tmp_path, key, CONTENTS)
    signature = (first.path / "model.sig").read_bytes()
    provenance = (first.path / "provenance.intoto.jsonl").read_bytes()
    second = _seal(tmp_path, key, CONTENTS)
    assert second == first
    assert (second.path / "model.sig").read_bytes() == signature
    assert (second.path / "provenance.intoto.jsonl").read_bytes() == provenance


def test_existing_bundle_of_other_files_is_a_conflict(tmp_path: Path, key: GateKey) -> None:
    _seal(tmp_path, key, {"w.bin": b"one"})
    with pytest.raises(BundleConflict):
        _seal(tmp_path, key, {"w.bin": b"two"})
    (tmp_path / "other").mkdir()
    with pytest.raises(BundleConflict):
        _seal(tmp_path, key, {"w.bin": b"one"}, destination=tmp_path / "other")


_component = st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N"],
                                             include_characters="-_. "),
                     min_size=1, max_size=12).filter(
    lambda c: c not in (".", "..") and c.strip() == c)
_names = st.lists(_component, min_size=1, max_size=3).map("/".join).filter(
    lambda n: n not in ("model.sig", "provenance.intoto.jsonl")
    and n.split("/")[0] not in (".git", ".github", ".gitignore", ".gitattributes"))


def _no_file_dir_clash(files: dict[str, bytes]) -> bool:
    return not any(other.startswith(name + "/") for name in files for other in files)


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[*UNTIMED_HEALTH_CHECKS, HealthCheck.function_scoped_fixture])
@given(st.dictionaries(_names, st.binary(max_size=2048), min_size=1, max_size=6)
       .filter(_no_file_dir_clash))
def test_random_file_sets_seal_and_verify(tmp_path_factory: pytest.TempPathFactory,
                                          key: GateKey, files: dict[str, bytes]) -> None:
    root = tmp_path_factory.mktemp("h")
    sealed = _seal(root, key, files)
    result = verify_bundle(sealed.path, key.public_pem)
    assert result.files == sorted((n, hashlib.sha256(d).hexdigest()) for n, d in files.items())
