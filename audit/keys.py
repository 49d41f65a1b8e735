"""The audit log's signing key: ECDSA P-256, encrypted at rest, with every retired public key
kept so checkpoints signed before a rotation still verify.

The key ring is `audit.keyring.KeyRing` in its own directory; its errors are
`AuditKeyError`s.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from audit.keyring import (
    KeyRing,
    PublicKeyInfo,
    SigningKey,
    keyid_of,
    load_private_key,
    load_public_key,
)

__all__ = ["AuditKey", "AuditKeyRing", "PublicKeyInfo", "PublicKeys", "keyid_of"]

#: The active audit key as stored: `private_pem` is PKCS#8, encrypted with the passphrase.
AuditKey = SigningKey


class AuditKeyRing:
    """The audit key ring in one directory (`$SEALROOM_HOME/keys/audit/`)."""

    def __init__(self, directory: Path) -> None:
        self._ring = KeyRing(directory, label="audit log")

    @property
    def directory(self) -> Path:
        return self._ring.directory

    def ensure(self, passphrase: bytes) -> AuditKey:
        """The active key, made on first use; proves the passphrase opens it."""
        return self._ring.ensure(passphrase)

    def rotate(self, passphrase: bytes) -> AuditKey:
        """A new active key; the old one's public key is kept, its private key deleted."""
        return self._ring.rotate(passphrase)

    def private_key(self, passphrase: bytes) -> tuple[str, ec.EllipticCurvePrivateKey]:
        """The active key opened for signing, with its keyid."""
        key = self._ring.ensure(passphrase)
        return key.keyid, load_private_key(key.private_pem, passphrase)

    def public_keys(self) -> list[PublicKeyInfo]:
        """Every audit key there has been: the active one first, then retired, newest first."""
        return self._ring.public_keys()

    def active_public_pem(self) -> bytes:
        return self._ring.active_public_pem()


class PublicKeys:
    """The public keys a verifier trusts, by keyid: active and retired alike."""

    def __init__(self, pems: Iterable[bytes | str] = ()) -> None:
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for pem in pems:
            self.add(pem)

    def add(self, pem: bytes | str) -> str:
        raw = pem.encode("ascii") if isinstance(pem, str) else pem
        key = load_public_key(raw)
        keyid = keyid_of(key)
        self._keys[keyid] = key
        return keyid

    @property
    def keyids(self) -> list[str]:
        return sorted(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def verifies(self, keyid: str, signature_b64: str, payload: bytes) -> bool:
        """Whether `signature_b64` (base64 of a DER ECDSA signature) signs `payload` under
        the key with `keyid`; an unknown keyid never verifies."""
        key = self._keys.get(keyid)
        if key is None:
            return False
        try:
            signature = base64.b64decode(signature_b64, validate=True)
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True
