"""Offline verification of a bundle: each tampering fails its own named step, in Sealroom's
verifier, in `sealroom release verify` (exit 1) and, where it can see it, in the stock
`model_signing verify key`; usage mistakes exit 2."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from model_signing import signing as ms_signing

from console.cli_release import release
from sandbox.gate.keys import GateKey, GateKeyRing, UnsupportedKey, load_private_key
from sandbox.gate.provenance import build_provenance, envelope_line, sign_statement
from sandbox.gate.sealing import SealedBundle, seal_bundle
from sandbox.gate.verify import (
    STEP_NAMES,
    BundleVerificationError,
    FileHashMismatch,
    ModelSignatureInvalid,
    ProvenanceSignatureInvalid,
    ProvenanceStatementInvalid,
    ProvenanceSubjectsMismatch,
    model_signing_hashing,
    verify_bundle,
)

PASS = b"verify-test-passphrase"
MODEL_SIGNING = Path(sys.executable).with_name("model_signing")
CONTENTS = {"model.safetensors": b"\x00" * 5000 + b"weights", "config.json": b"{}",
            "extra/notes.txt": b"trained for 3 epochs\n"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[GateKey, GateKey]:
    """The gate's key and a stranger's key."""
    return (GateKeyRing(tmp_path_factory.mktemp("gate")).ensure(PASS),
            GateKeyRing(tmp_path_factory.mktemp("other")).ensure(PASS))


@pytest.fixture
def sealed(tmp_path: Path, keys: tuple[GateKey, GateKey]) -> SealedBundle:
    files = []
    for name, data in CONTENTS.items():
        blob = tmp_path / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        files.append((name, blob, hashlib.sha256(data).hexdigest()))
    return seal_bundle(files=files, destination=tmp_path / "bundle",
                       private_key_pem=keys[0].private_pem, passphrase=PASS,
                       provenance=_provenance({n: s for n, _, s in files}))


def _provenance(files: dict[str, str], **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    fields: dict[str, Any] = dict(
        release_id="rel-7", sandbox_spec={"example": "mlp"}, image_digest="sha256:" + "1" * 64,
        datasets=[{"name": "demo", "digest": "sha256:" + "2" * 64},
                  {"name": "extra", "digest": "sha256:" + "3" * 64}],
        code_digest="sha256:" + "4" * 64, policy_version=5, requester="alice",
        approvers=["bob", "carol"], checks={"leakscan": {"status": "passed"}}, started_on=now,
        finished_on=now, builder_id="https://sealroom.dev/gate/test")
    fields.update(overrides)
    return build_provenance(sorted(files.items()), **fields)


def _pem_file(tmp_path: Path, key: GateKey) -> Path:
    path = tmp_path / f"{key.keyid[:8]}.pem"
    path.write_bytes(key.public_pem)
    return path


def _cli(bundle: Path, pem: Path) -> Any:
    return CliRunner().invoke(release, ["verify", str(bundle), "--key", str(pem)])


def _stock(bundle: Path, pem: Path) -> int:
    return subprocess.run(
        [str(MODEL_SIGNING), "verify", "key", "--signature", str(bundle / "model.sig"),
         "--public_key", str(pem), str(bundle)],
        capture_output=True, timeout=120).returncode


def _resign_provenance(bundle: Path, key: GateKey, edit: Callable[[dict[str, Any]], None],
                       *, model_key: GateKey | None = None) -> None:
    """Forge with real keys: what only a key holder could do, to reach the later steps.

    The model signature covers the provenance file, so it is re-made too, with `model_key`
    (default: the same key)."""
    envelope = json.loads((bundle / "provenance.intoto.jsonl").read_bytes())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    edit(statement)
    (bundle / "provenance.intoto.jsonl").write_bytes(envelope_line(
        sign_statement(statement, load_private_key(key.private_pem, PASS))))
    _resign_model(bundle, model_key or key)


def _resign_model(bundle: Path, key: GateKey) -> None:
    key_path = bundle.parent / "forger.pem"
    key_path.write_bytes(key.private_pem)
    (bundle / "model.sig").unlink()
    (ms_signing.Config()  # type: ignore[no-untyped-call]
     .use_elliptic_key_signer(private_key=key_path, password=PASS)  # type: ignore[arg-type]
     .set_hashing_config(model_signing_hashing())
     .sign(bundle, bundle / "model.sig"))


def test_a_good_bundle_passes_every_step_and_prints_its_facts(
        tmp_path: Path, sealed: SealedBundle, keys: tuple[GateKey, GateKey]) -> None:
    seen: list[str] = []
    result = verify_bundle(sealed.path, keys[0].public_pem, on_step=seen.append)
    assert seen == list(STEP_NAMES) == result.steps
    assert result.keyid == keys[0].keyid
    assert result.datasets == [("demo", "sha256:" + "2" * 64), ("extra", "sha256:" + "3" * 64)]
    assert (result.code_digest, result.policy_version) == ("sha256:" + "4" * 64, 5)
    out = _cli(sealed.path, _pem_file(tmp_path, keys[0]))
    assert out.exit_code == 0, out.output
    for fact in ("rel-7", "alice", "bob, carol", "demo", "sha256:" + "1" * 64,
                 "extra/notes.txt", keys[0].keyid, "version 5"):
        assert fact in out.output


def test_one_changed_byte_fails_everywhere(tmp_path: Path, sealed: SealedBundle,
                                           keys: tuple[GateKey, GateKey]) -> None:
    target = sealed.path / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[100] ^= 1
    # The bundle's files are hard links to read-only blobs: replace, never edit in place.
    target.unlink()
    target.write_bytes(bytes(data))
    with pytest.raises(ModelSignatureInvalid):
        verify_bundle(sealed.path, keys[0].public_pem)
    pem = _pem_file(tmp_path, keys[0])
    out = _cli(sealed.path, pem)
    assert out.exit_code == 1 and "✗ model_signature" in out.output
    assert "NOT VERIFIED" in out.output and "not checked" in out.output
    assert _stock(sealed.path, pem) == 1


def test_another_keys_pem_fails_everywhere(tmp_path: Path, sealed: SealedBundle,
                                           keys: tuple[GateKey, GateKey]) -> None:
    with pytest.raises(ModelSignatureInvalid):
        verify_bundle(sealed.path, keys[1].public_pem)
    pem = _pem_file(tmp_path, keys[1])
    assert _cli(sealed.path, pem).exit_code == 1
    assert _stock(sealed.path, pem) == 1


def test_another_key_signing_the_provenance_fails(sealed: SealedBundle,
                                                  keys: tuple[GateKey, GateKey]) -> None:
    _resign_provenance(sealed.path, keys[1], lambda statement: None, model_key=keys[0])
    with pytest.raises(ProvenanceSignatureInvalid):
        verify_bundle(sealed.path, keys[0].public_pem)


def test_edited_provenance_fails_everywhere(
        tmp_path: Path, sealed: SealedBundle, keys: tuple[GateKey, GateKey]) -> None:
    path = sealed.path / "provenance.intoto.jsonl"
    envelope = json.loads(path.read_bytes())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["buildDefinition"]["internalParameters"]["approvers"] = ["mallory"]
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_bytes(envelope_line(envelope))
    # The model signature covers the provenance file, so it is the first step to fail...
    with pytest.raises(ModelSignatureInvalid):
        verify_bundle(sealed.path, keys[0].public_pem)
    pem = _pem_file(tmp_path, keys[0])
    out = _cli(sealed.path, pem)
    assert out.exit_code == 1 and "✗ model_signature" in out.output
    # ...and the stock tool, which knows nothing of Sealroom's provenance, refuses it too.
    assert _stock(sealed.path, pem) != 0


def test_missing_provenance_or_signature_fails(sealed: SealedBundle,
                                               keys: tuple[GateKey, GateKey]) -> None:
    (sealed.path / "provenance.intoto.jsonl").unlink()
    with pytest.raises(ModelSignatureInvalid, match="provenance"):
        verify_bundle(sealed.path, keys[0].public_pem)
    _resign_model(sealed.path, keys[0])  # a key holder signing a bundle without provenance
    with pytest.raises(ModelSignatureInvalid, match="does not cover"):
        verify_bundle(sealed.path, keys[0].public_pem)
    (sealed.path / "model.sig").unlink()
    with pytest.raises(ModelSignatureInvalid):
        verify_bundle(sealed.path, keys[0].public_pem)


def test_added_or_removed_file_fails(tmp_path: Path, sealed: SealedBundle,
                                     keys: tuple[GateKey, GateKey]) -> None:
    pem = _pem_file(tmp_path, keys[0])
    (sealed.path / "extra" / "smuggled.bin").write_bytes(b"data")
    with pytest.raises(ModelSignatureInvalid):
        verify_bundle(sealed.path, keys[0].public_pem)
    assert _stock(sealed.path, pem) == 1
    (sealed.path / "extra" / "smuggled.bin").unlink()
    (sealed.path / "config.json").unlink()
    with pytest.raises(ModelSignatureInvalid):
        verify_bundle(sealed.path, keys[0].public_pem)
    assert _stock(sealed.path, pem) == 1


def test_file_in_a_path_model_signing_ignores_is_still_caught(
        tmp_path: Path, sealed: SealedBundle, keys: tuple[GateKey, GateKey]) -> None:
    (sealed.path / ".gitattributes").write_bytes(b"* filter=smuggle\n")
    assert _stock(sealed.path, _pem_file(tmp_path, keys[0])) == 0
    with pytest.raises(FileHashMismatch):
        verify_bundle(sealed.path, keys[0].public_pem)


def test_symlink_in_bundle_fails(sealed: SealedBundle, keys: tuple[GateKey, GateKey]) -> None:
    os.symlink("/etc/passwd", sealed.path / "passwd")
    with pytest.raises(BundleVerificationError):
        verify_bundle(sealed.path, keys[0].public_pem)


def test_provenance_naming_other_files_fails_its_step(sealed: SealedBundle,
                                                      keys: tuple[GateKey, GateKey]) -> None:
    def swap_digest(statement: dict[str, Any]) -> None:
        statement["subject"][0]["digest"]["sha256"] = "f" * 64

    _resign_provenance(sealed.path, keys[0], swap_digest)
    with pytest.raises(ProvenanceSubjectsMismatch):
        verify_bundle(sealed.path, keys[0].public_pem)


def test_provenance_that_is_not_sealroom_release_fails_its_step(
        sealed: SealedBundle, keys: tuple[GateKey, GateKey]) -> None:
    def other_build(statement: dict[str, Any]) -> None:
        statement["predicate"]["buildDefinition"]["buildType"] = "https://example.com/ci"

    _resign_provenance(sealed.path, keys[0], other_build)
    with pytest.raises(ProvenanceStatementInvalid):
        verify_bundle(sealed.path, keys[0].public_pem)


def test_a_dependency_without_a_name_fails_the_statement_step(
        sealed: SealedBundle, keys: tuple[GateKey, GateKey]) -> None:
    def unnamed(statement: dict[str, Any]) -> None:
        statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]["name"] = 7

    _resign_provenance(sealed.path, keys[0], unnamed)
    with pytest.raises(ProvenanceStatementInvalid):
        verify_bundle(sealed.path, keys[0].public_pem)


def test_usage_mistakes_exit_2(tmp_path: Path, sealed: SealedBundle) -> None:
    runner = CliRunner()
    assert runner.invoke(release, ["verify", str(sealed.path)]).exit_code == 2
    not_a_key = tmp_path / "garbage.pem"
    not_a_key.write_bytes(b"hello")
    out = runner.invoke(release, ["verify", str(sealed.path), "--key", str(not_a_key)])
    assert out.exit_code == 2 and "PEM" in out.output
    assert runner.invoke(release, ["verify", str(tmp_path / "absent"), "--key",
                                   str(not_a_key)]).exit_code == 2


def test_non_p256_key_is_unsupported(sealed: SealedBundle) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(UnsupportedKey):
        verify_bundle(sealed.path, pem)
