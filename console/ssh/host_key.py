"""The gateway's host key: one Ed25519 key per installation, made on first use and kept
(private) in the data directory, and its fingerprint as OpenSSH prints it."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.files import write_atomically


def load_or_create(path: Path) -> paramiko.Ed25519Key:
    if not path.exists():
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        write_atomically(draft, pem, 0o600)
        try:
            os.link(draft, path)  # never replaces: a key another process made first wins
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return paramiko.Ed25519Key(filename=str(path))


def fingerprint(key: paramiko.PKey) -> str:
    """"SHA256:" and the unpadded base64 of the key blob's hash, as `ssh-keygen -l` says."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
