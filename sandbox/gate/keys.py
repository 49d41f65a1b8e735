"""The release gate's signing keys: the key ring of `audit.keyring` in the gate's directory
(`$SEALROOM_HOME/keys/release/`), with its failures raised as the gate's own errors.

The machinery lives in `audit` because the audit log's checkpoint key is the same kind of
ring, and `audit` imports nothing of ours; the gate may import it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from audit import errors as ring_errors
from audit import keyring
from audit.keyring import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, PublicKeyInfo, SigningKey
from sandbox.gate.errors import GateError

__all__ = [
    "PASSPHRASE_ENV", "PASSPHRASE_FILE_ENV", "GateKey", "GateKeyRing", "KeyPassphraseError",
    "KeyRingCorrupt", "KeyRingError", "PublicKeyInfo", "UnsupportedKey", "keyid_of",
    "load_private_key", "load_public_key", "passphrase_from_env",
]

#: The gate's active key as stored: `private_pem` is PKCS#8, encrypted with the passphrase.
GateKey = SigningKey


class KeyRingError(GateError):
    """The gate's key ring cannot be read or changed."""

    status = 500


class KeyPassphraseError(KeyRingError):
    """No usable passphrase, or the passphrase does not open the active private key."""


class KeyRingCorrupt(KeyRingError):
    """A key file is missing or does not match the key ring's index."""


class UnsupportedKey(GateError):
    """A PEM that is not an ECDSA P-256 public key (the only kind the gate signs with)."""

    status = 400


# Most specific first: the first match wins.
_AS_GATE_ERROR: tuple[tuple[type[ring_errors.KeyRingError], type[GateError]], ...] = (
    (ring_errors.UnsupportedKey, UnsupportedKey),
    (ring_errors.KeyPassphraseError, KeyPassphraseError),
    (ring_errors.KeyRingCorrupt, KeyRingCorrupt),
    (ring_errors.KeyRingError, KeyRingError),
)


@contextmanager
def _as_gate_errors() -> Iterator[None]:
    try:
        yield
    except ring_errors.KeyRingError as exc:
        gate_error = next(ours for theirs, ours in _AS_GATE_ERROR if isinstance(exc, theirs))
        raise gate_error(exc.user_message, detail=exc.detail) from exc


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """Parse a PEM SubjectPublicKeyInfo; refuse anything but an ECDSA P-256 key."""
    with _as_gate_errors():
        return keyring.load_public_key(pem)


def keyid_of(public_key: bytes | ec.EllipticCurvePublicKey) -> str:
    """SHA-256 (hex) of the key's DER SubjectPublicKeyInfo: stable across PEM formatting."""
    with _as_gate_errors():
        return keyring.keyid_of(public_key)


def load_private_key(private_pem: bytes, passphrase: bytes) -> ec.EllipticCurvePrivateKey:
    """Decrypt a gate private key; a wrong or missing passphrase is a `KeyPassphraseError`."""
    with _as_gate_errors():
        return keyring.load_private_key(private_pem, passphrase)


def passphrase_from_env(env: Mapping[str, str], home: Path) -> bytes:
    """The passphrase that encrypts the installation's keys: see
    `audit.keyring.passphrase_from_env` for where it comes from."""
    with _as_gate_errors():
        return keyring.passphrase_from_env(env, home)


class GateKeyRing:
    """The keys in one directory (`$SEALROOM_HOME/keys/release/`): see `audit.keyring.KeyRing`
    for the layout and why a rotated-out private key is deleted."""

    def __init__(self, directory: Path, *, label: str = "release gate") -> None:
        self._ring = keyring.KeyRing(directory, label=label)

    @property
    def directory(self) -> Path:
        return self._ring.directory

    @property
    def label(self) -> str:
        return self._ring.label

    def public_keys(self) -> list[PublicKeyInfo]:
        """Every key the gate has had: the active key first, then retired ones, newest first."""
        with _as_gate_errors():
            return self._ring.public_keys()

    def active_public_pem(self) -> bytes:
        with _as_gate_errors():
            return self._ring.active_public_pem()

    def public_pem(self, keyid: str) -> bytes:
        """The public key with this keyid, active or retired."""
        with _as_gate_errors():
            return self._ring.public_pem(keyid)

    def ensure(self, passphrase: bytes) -> GateKey:
        """The active key, generated on first use; proves the passphrase opens it."""
        with _as_gate_errors():
            return self._ring.ensure(passphrase)

    def rotate(self, passphrase: bytes) -> GateKey:
        """Make a new active key; the old one is retired (public kept, private deleted)."""
        with _as_gate_errors():
            return self._ring.rotate(passphrase)
