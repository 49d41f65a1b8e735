"""The gate's key ring: one key made on first use, encrypted at rest and 0600, rotation that
keeps old public keys (and old bundles) verifiable, and where the passphrase comes from."""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from sandbox.gate.keys import (
    GateKeyRing,
    KeyPassphraseError,
    UnsupportedKey,
    keyid_of,
    load_private_key,
    passphrase_from_env,
)
from sandbox.gate.provenance import build_provenance
from sandbox.gate.sealing import seal_bundle
from sandbox.gate.verify import ModelSignatureInvalid, verify_bundle

PASS = b"correct horse battery staple"


def test_key_is_generated_once_and_reloaded(tmp_path: Path) -> None:
    ring = GateKeyRing(tmp_path / "keys" / "release")
    first = ring.ensure(PASS)
    again = GateKeyRing(tmp_path / "keys" / "release").ensure(PASS)
    assert again.keyid == first.keyid
    assert again.private_pem == first.private_pem
    assert ring.active_public_pem() == first.public_pem
    assert [k.keyid for k in ring.public_keys()] == [first.keyid]
    assert ring.public_keys()[0].active and ring.public_keys()[0].pem.startswith("-----BEGIN")


def test_private_key_is_encrypted_and_0600(tmp_path: Path) -> None:
    ring = GateKeyRing(tmp_path / "release")
    key = ring.ensure(PASS)
    path = tmp_path / "release" / f"{key.keyid}.key.pem"
    assert path.read_bytes() == key.private_pem
    assert b"ENCRYPTED PRIVATE KEY" in key.private_pem
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(key.private_pem, None)
    with pytest.raises(KeyPassphraseError):
        load_private_key(key.private_pem, b"wrong")
    with pytest.raises(KeyPassphraseError):
        ring.ensure(b"wrong")
    assert load_private_key(key.private_pem, PASS).curve.name == "secp256r1"


def test_keyid_is_sha256_of_der_spki(tmp_path: Path) -> None:
    key = GateKeyRing(tmp_path).ensure(PASS)
    der = serialization.load_pem_public_key(key.public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.keyid == hashlib.sha256(der).hexdigest() == keyid_of(key.public_pem)


def test_rotation_keeps_old_public_keys_and_drops_old_private_key(tmp_path: Path) -> None:
    ring = GateKeyRing(tmp_path)
    old = ring.ensure(PASS)
    new = ring.rotate(PASS)
    assert new.keyid != old.keyid
    assert ring.ensure(PASS).keyid == new.keyid
    assert ring.active_public_pem() == new.public_pem
    infos = ring.public_keys()
    assert [(k.keyid, k.active) for k in infos] == [(new.keyid, True), (old.keyid, False)]
    assert infos[1].retired_at is not None and infos[0].retired_at is None
    assert ring.public_pem(old.keyid) == old.public_pem
    assert not (tmp_path / f"{old.keyid}.key.pem").exists()
    assert (tmp_path / f"{old.keyid}.pub.pem").exists()


def test_bundle_sealed_before_rotation_verifies_with_the_old_pem(tmp_path: Path) -> None:
    ring = GateKeyRing(tmp_path / "keys")
    old = ring.ensure(PASS)
    blob = tmp_path / "blob"
    blob.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    now = datetime.now(UTC)
    provenance = build_provenance(
        [("model.bin", sha)], release_id="r1", sandbox_spec={}, image_digest="sha256:" + "1" * 64,
        datasets=[], code_digest="sha256:" + "2" * 64, policy_version=1, requester="alice",
        approvers=["bob"], checks={}, started_on=now, finished_on=now, builder_id="test")
    bundle = seal_bundle(files=[("model.bin", blob, sha)], destination=tmp_path / "bundle",
                         private_key_pem=old.private_pem, passphrase=PASS,
                         provenance=provenance)
    new = ring.rotate(PASS)
    old_pem = ring.public_pem(old.keyid)
    assert verify_bundle(bundle.path, old_pem).keyid == old.keyid
    with pytest.raises(ModelSignatureInvalid):
        verify_bundle(bundle.path, new.public_pem)
    # Resealing after the rotation accepts the bundle signed by the retired key.
    again = seal_bundle(files=[("model.bin", blob, sha)], destination=tmp_path / "bundle",
                        private_key_pem=new.private_pem, passphrase=PASS,
                        provenance=provenance, previous_public_keys=[old_pem])
    assert again.keyid == old.keyid


def test_unsupported_public_key_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(UnsupportedKey):
        keyid_of(pem)
    with pytest.raises(UnsupportedKey):
        keyid_of(b"not a key")


def test_passphrase_from_variable_then_file_then_generated(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert passphrase_from_env({"SEALROOM_KEY_PASSPHRASE": "s3cret"}, home) == b"s3cret"
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"from-file\n")
    assert passphrase_from_env({"SEALROOM_KEY_PASSPHRASE_FILE": str(secret_file)},
                               home) == b"from-file"
    with pytest.raises(KeyPassphraseError):
        passphrase_from_env({"SEALROOM_KEY_PASSPHRASE_FILE": str(tmp_path / "absent")}, home)
    assert not (home / "keys" / "passphrase").exists()

    generated = passphrase_from_env({}, home)
    path = home / "keys" / "passphrase"
    assert len(generated) >= 32 and path.read_bytes() == generated
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert passphrase_from_env({}, home) == generated
    path.chmod(0o644)
    with pytest.raises(KeyPassphraseError):
        passphrase_from_env({}, home)
