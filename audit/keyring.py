"""Signing key rings: one active ECDSA P-256 key, encrypted at rest, and the public key of
every key the ring ever had, so what was signed before a rotation stays verifiable; and where
the passphrase that encrypts the active keys comes from.

The audit log's checkpoint key (`audit.keys`) and the release gate's key
(`sandbox.gate.keys`) are this machinery in their own directories. It lives at the bottom of
the layers so both may use it; its errors are `audit.errors.KeyRingError`s, which the gate
turns into its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audit.errors import KeyPassphraseError, KeyRingCorrupt, KeyRingError, UnsupportedKey
from audit.files import fsync_dir, write_atomically

PASSPHRASE_ENV = "SEALROOM_KEY_PASSPHRASE"
PASSPHRASE_FILE_ENV = "SEALROOM_KEY_PASSPHRASE_FILE"

_INDEX = "keyring.json"
_LOCK = ".lock"
_INDEX_VERSION = 1


@dataclass(frozen=True)
class SigningKey:
    """A ring's active key. `private_pem` is PKCS#8 PEM, encrypted with the passphrase."""

    keyid: str
    private_pem: bytes
    public_pem: bytes
    created_at: datetime


@dataclass(frozen=True)
class PublicKeyInfo:
    """A public key a ring has signed with; `pem` is text, ready to show or serve."""

    keyid: str
    pem: str
    created_at: datetime
    active: bool
    retired_at: datetime | None = None


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """Parse a PEM SubjectPublicKeyInfo; refuse anything but an ECDSA P-256 key."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise UnsupportedKey("the key is not a PEM public key", detail=str(exc)) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1):
        raise UnsupportedKey("the key is not an ECDSA P-256 public key")
    return key


def keyid_of(public_key: bytes | ec.EllipticCurvePublicKey) -> str:
    """SHA-256 (hex) of the key's DER SubjectPublicKeyInfo: stable across PEM formatting."""
    key = load_public_key(public_key) if isinstance(public_key, bytes) else public_key
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def load_private_key(private_pem: bytes, passphrase: bytes) -> ec.EllipticCurvePrivateKey:
    """Decrypt a ring's private key; a wrong or missing passphrase is a `KeyPassphraseError`."""
    try:
        key = serialization.load_pem_private_key(private_pem, passphrase or None)
    except (ValueError, TypeError) as exc:
        raise KeyPassphraseError("the gate's private key cannot be opened with this passphrase",
                                 detail=str(exc)) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1):
        raise UnsupportedKey("the private key is not an ECDSA P-256 key")
    return key


def passphrase_from_env(env: Mapping[str, str], home: Path) -> bytes:
    """The passphrase that encrypts the installation's private keys (the gate's and the
    audit log's).

    `SEALROOM_KEY_PASSPHRASE`, else the file named by `SEALROOM_KEY_PASSPHRASE_FILE` (one
    trailing newline dropped), else `home/keys/passphrase`, generated (256 random bits, mode
    0600) on first use. That default keeps a copied key file useless on its own, but anyone
    who can read `home` as root on the host has both files: for more, supply the passphrase
    from outside (a secret manager filling the variable or a file on another mount).
    """
    if value := env.get(PASSPHRASE_ENV):
        return value.encode("utf-8")
    if named := env.get(PASSPHRASE_FILE_ENV):
        try:
            secret = Path(named).read_bytes()
        except OSError as exc:
            raise KeyPassphraseError(f"{PASSPHRASE_FILE_ENV} names a file that cannot be read",
                                     detail=f"{named}: {exc}") from exc
        secret = secret.removesuffix(b"\n").removesuffix(b"\r")
        if not secret:
            raise KeyPassphraseError(f"the file named by {PASSPHRASE_FILE_ENV} is empty")
        return secret
    return _default_passphrase(home / "keys" / "passphrase")


def _default_passphrase(path: Path) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        # Written in full beside it, then linked in: a second process racing us either wins
        # (our link fails, we read theirs) or finds the complete file, never a partial one.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".passphrase-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_urlsafe(32).encode("ascii"))
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
        fsync_dir(path.parent)
    mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise KeyPassphraseError("the gate's passphrase file is readable by other users",
                                 detail=f"{path} has mode {stat.S_IMODE(mode):o}; "
                                        "chmod 600 it")
    secret = path.read_bytes()
    if not secret:
        raise KeyPassphraseError("the gate's passphrase file is empty", detail=str(path))
    return secret


class KeyRing:
    """The keys in one directory (`$SEALROOM_HOME/keys/release/`, or `keys/audit/` for the
    audit log's key: `label` names whose keys they are in messages).

    Layout: `keyring.json` (which keys exist, which is active, when each was made and
    retired), `<keyid>.pub.pem` for every key, `<keyid>.key.pem` (encrypted) for the active
    key only. A rotated-out private key is deleted, not kept: nothing legitimate ever signs
    with it again (old bundles need only its public key), and rotation is often done because
    a key or its passphrase is suspect, so keeping it would keep that risk.
    """

    def __init__(self, directory: Path, *, label: str) -> None:
        self.directory = directory
        self.label = label

    # --- reading ------------------------------------------------------------------------

    def public_keys(self) -> list[PublicKeyInfo]:
        """Every key the ring has had: the active key first, then retired ones, newest first."""
        index = self._read_index()
        infos = []
        for entry in index["keys"]:
            pem = self._read_public(entry["keyid"])
            infos.append(PublicKeyInfo(
                keyid=entry["keyid"], pem=pem.decode("ascii"),
                created_at=_parse_time(entry["created_at"]),
                active=entry["keyid"] == index["active"],
                retired_at=_parse_time(entry["retired_at"]) if entry.get("retired_at") else None))
        return sorted(infos, key=lambda k: (not k.active, -k.created_at.timestamp()))

    def active_public_pem(self) -> bytes:
        index = self._read_index()
        if not index["active"]:
            raise KeyRingError(f"the {self.label} has no signing key yet")
        return self._read_public(index["active"])

    def public_pem(self, keyid: str) -> bytes:
        """The public key with this keyid, active or retired."""
        if keyid not in {entry["keyid"] for entry in self._read_index()["keys"]}:
            raise KeyRingError(f"the {self.label} never had a key {keyid[:16]}…")
        return self._read_public(keyid)

    # --- changing -----------------------------------------------------------------------

    def ensure(self, passphrase: bytes) -> SigningKey:
        """The active key, generated on first use; proves the passphrase opens it."""
        with self._locked():
            index = self._read_index()
            if index["active"]:
                key = self._load_active(index, passphrase)
                self._drop_retired_private_keys(index)
                return key
            return self._add_key(index, passphrase)

    def rotate(self, passphrase: bytes) -> SigningKey:
        """Make a new active key; the old one is retired (public kept, private deleted)."""
        with self._locked():
            return self._add_key(self._read_index(), passphrase)

    # --- internals ----------------------------------------------------------------------

    def _add_key(self, index: dict[str, Any], passphrase: bytes) -> SigningKey:
        if not passphrase:
            raise KeyPassphraseError(f"the {self.label} key needs a non-empty passphrase")
        private = ec.generate_private_key(ec.SECP256R1())
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        private_pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase))
        keyid = keyid_of(private.public_key())
        now = datetime.now(UTC)
        # Order matters for a crash: key files first (unreferenced files are harmless), then
        # the index that makes the new key active, then the old private key goes.
        write_atomically(self.directory / f"{keyid}.key.pem", private_pem, 0o600)
        write_atomically(self.directory / f"{keyid}.pub.pem", public_pem, 0o600)
        for entry in index["keys"]:
            if entry["keyid"] == index["active"]:
                entry["retired_at"] = now.isoformat()
        index["keys"].append({"keyid": keyid, "created_at": now.isoformat(),
                              "retired_at": None})
        index["active"] = keyid
        write_atomically(self.directory / _INDEX,
                          json.dumps(index, indent=2, sort_keys=True).encode() + b"\n", 0o600)
        self._drop_retired_private_keys(index)
        return SigningKey(keyid=keyid, private_pem=private_pem, public_pem=public_pem,
                       created_at=now)

    def _load_active(self, index: dict[str, Any], passphrase: bytes) -> SigningKey:
        keyid = index["active"]
        entry = next(e for e in index["keys"] if e["keyid"] == keyid)
        try:
            private_pem = (self.directory / f"{keyid}.key.pem").read_bytes()
        except OSError as exc:
            raise KeyRingCorrupt(f"the active {self.label} key has no private key file",
                                 detail=f"{self.directory}: {exc}") from exc
        public_pem = self._read_public(keyid)
        private = load_private_key(private_pem, passphrase)
        if keyid_of(private.public_key()) != keyid:
            raise KeyRingCorrupt(f"the {self.label} private key file does not match its keyid",
                                 detail=f"{self.directory}/{keyid}.key.pem")
        return SigningKey(keyid=keyid, private_pem=private_pem, public_pem=public_pem,
                       created_at=_parse_time(entry["created_at"]))

    def _drop_retired_private_keys(self, index: dict[str, Any]) -> None:
        for entry in index["keys"]:
            if entry["keyid"] != index["active"]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.directory / f"{entry['keyid']}.key.pem")

    def _read_public(self, keyid: str) -> bytes:
        try:
            pem = (self.directory / f"{keyid}.pub.pem").read_bytes()
        except OSError as exc:
            raise KeyRingCorrupt(f"a {self.label} public key file is missing",
                                 detail=f"{self.directory}/{keyid}.pub.pem: {exc}") from exc
        if keyid_of(pem) != keyid:
            raise KeyRingCorrupt(f"a {self.label} public key file does not match its keyid",
                                 detail=f"{self.directory}/{keyid}.pub.pem")
        return pem

    def _read_index(self) -> dict[str, Any]:
        try:
            raw = (self.directory / _INDEX).read_bytes()
        except FileNotFoundError:
            return {"version": _INDEX_VERSION, "active": None, "keys": []}
        try:
            index: dict[str, Any] = json.loads(raw)
            keyids = {entry["keyid"] for entry in index["keys"]}
            valid = index.get("version") == _INDEX_VERSION and (
                index["active"] is None or index["active"] in keyids)
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyRingCorrupt(f"the {self.label} key ring index cannot be read",
                                 detail=f"{self.directory / _INDEX}: {exc}") from exc
        if not valid:
            raise KeyRingCorrupt(f"the {self.label} key ring index is inconsistent",
                                 detail=str(self.directory / _INDEX))
        return index

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two consoles starting at once must not both generate "the first" key.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)

