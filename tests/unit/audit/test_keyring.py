"""The key ring shared by the audit record and the gate raises each package's own errors: the
audit key ring `AuditKeyError`s, the gate's key ring `GateError`s (never `SandboxError`s), each
keeping the message apart from the detail."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.errors import AuditError, AuditKeyError, KeyPassphraseError
from audit.keyring import KeyRing, load_private_key
from audit.keys import AuditKeyRing, PublicKeys
from sandbox.errors import SandboxError
from sandbox.gate import keys as gate_keys
from sandbox.gate.errors import BlobRefused, GateError
from sandbox.gate.store import BlobStore

PASS = b"correct horse battery staple"


def test_audit_key_ring_refuses_with_audit_key_errors(tmp_path: Path) -> None:
    ring = AuditKeyRing(tmp_path / "audit")
    ring.ensure(PASS)
    with pytest.raises(AuditKeyError) as caught:
        ring.private_key(b"wrong")
    assert isinstance(caught.value, KeyPassphraseError)
    # The text is the message and the library's detail, as it was before the ring moved.
    assert str(caught.value).startswith(caught.value.user_message + " (")
    with pytest.raises(AuditKeyError):
        PublicKeys([b"not a key"])


def test_gate_key_ring_refuses_with_gate_errors(tmp_path: Path) -> None:
    key = KeyRing(tmp_path / "release", label="release gate").ensure(PASS)
    with pytest.raises(gate_keys.KeyPassphraseError) as caught:
        gate_keys.load_private_key(key.private_pem, b"wrong")
    error = caught.value
    assert isinstance(error, GateError) and error.status == 500
    assert not isinstance(error, AuditError | SandboxError)
    assert error.user_message == "the gate's private key cannot be opened with this passphrase"
    assert error.detail != error.user_message  # the library's words go to the log only
    with pytest.raises(gate_keys.UnsupportedKey) as unsupported:
        gate_keys.keyid_of(b"not a key")
    assert unsupported.value.status == 400
    (tmp_path / "release" / "keyring.json").write_text("{}")
    with pytest.raises(gate_keys.KeyRingCorrupt):
        gate_keys.GateKeyRing(tmp_path / "release").public_keys()


def test_gate_and_audit_rings_are_the_same_machinery(tmp_path: Path) -> None:
    key = gate_keys.GateKeyRing(tmp_path / "release").ensure(PASS)
    assert load_private_key(key.private_pem, PASS).curve.name == "secp256r1"
    assert KeyRing(tmp_path / "release", label="x").public_keys()[0].keyid == key.keyid


def test_blob_store_refuses_with_a_gate_error(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(b"x" * 10)
    with pytest.raises(BlobRefused) as caught:
        BlobStore(tmp_path / "blobs").put(source, max_bytes=4)
    assert isinstance(caught.value, GateError) and not isinstance(caught.value, SandboxError)
    assert caught.value.status == 400
