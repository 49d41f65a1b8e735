"""Sealing an approved release: the files, an OpenSSF model signature (`model.sig`) and the
signed SLSA provenance (`provenance.intoto.jsonl`) are assembled in a directory beside the
destination and renamed into place whole, so a crash never leaves a half-released bundle.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives import serialization
from model_signing import signing as ms_signing

from audit.files import fsync_dir
from sandbox.gate.errors import GateError
from sandbox.gate.keys import keyid_of, load_private_key
from sandbox.gate.provenance import (
    PROVENANCE_FILE,
    envelope_line,
    sign_statement,
    statement_subjects,
)
from sandbox.gate.verify import (
    GIT_PATHS,
    MODEL_SIGNATURE_FILE,
    SIGNATURE_FILES,
    BundleVerificationError,
    model_signing_hashing,
    verify_bundle,
)

PARTIAL_INFIX = ".partial-"
_MAX_COMPONENT_BYTES = 255


class SealingError(GateError):
    """A release that could not be sealed; nothing was published."""

    status = 500


class InvalidReleaseName(SealingError):
    """A release file name that cannot be a path inside a bundle."""

    status = 400


class DigestMismatch(SealingError):
    """A source file's content is not the digest it was reviewed and approved under."""

    status = 409


class ProvenanceMismatch(SealingError):
    """The provenance's subjects are not the files being sealed."""

    status = 409


class BundleConflict(SealingError):
    """The destination already holds a bundle that does not verify or holds other files."""

    status = 409


@dataclass(frozen=True)
class SealedBundle:
    path: Path
    files: list[tuple[str, str]]
    keyid: str


def check_release_name(name: str) -> str:
    """A relative POSIX path of printable components, clear of the bundle's own files."""
    if not isinstance(name, str) or not name:
        raise InvalidReleaseName("a release file needs a name")
    path = PurePosixPath(name)
    parts = name.split("/")
    if (path.is_absolute() or any(p in ("", ".", "..") for p in parts)
            or any(not c.isprintable() or c == "\\" for c in name)):
        raise InvalidReleaseName(f"{name!r} is not a plain relative file name")
    try:
        too_long = any(len(p.encode("utf-8")) > _MAX_COMPONENT_BYTES for p in parts)
    except UnicodeEncodeError as exc:
        raise InvalidReleaseName(f"{name!r} is not valid UTF-8") from exc
    if too_long:
        raise InvalidReleaseName(f"{name!r} has a path component over 255 bytes")
    if name in SIGNATURE_FILES or parts[0] in GIT_PATHS:
        raise InvalidReleaseName(f"{name!r} is reserved in a release bundle")
    return name


def seal_bundle(
    *,
    files: Sequence[tuple[str, Path, str]],
    destination: Path,
    private_key_pem: bytes,
    passphrase: bytes,
    provenance: Mapping[str, Any],
    previous_public_keys: Sequence[bytes] = (),
) -> SealedBundle:
    """Seal (release name, content-addressed source, sha256 hex) files into `destination`.

    Idempotent: if `destination` already holds a bundle of exactly these files that verifies
    with this key (or one of `previous_public_keys`, for a bundle sealed before a rotation),
    it is returned untouched; any other existing destination is a `BundleConflict`.
    """
    expected = _expected_files(files)
    if statement_subjects(provenance) != expected:
        raise ProvenanceMismatch("the provenance does not name exactly the files being sealed")
    private_key = load_private_key(private_key_pem, passphrase)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with _sealing_lock(destination.parent):
            _remove_stale_partials(destination)
            if destination.exists() or destination.is_symlink():
                return _existing(destination, expected, [public_pem, *previous_public_keys])
            partial = Path(tempfile.mkdtemp(dir=destination.parent,
                                            prefix=f"{destination.name}{PARTIAL_INFIX}"))
            try:
                # The bundle is built under its final name one level down, so the name
                # model_signing records in model.sig is the bundle's, not the temp dir's.
                staging = partial / destination.name
                staging.mkdir()
                _place_files(files, staging)
                # The provenance goes in first so that the model signature covers it too.
                envelope = envelope_line(sign_statement(provenance, private_key))
                _write_durably(staging / PROVENANCE_FILE, envelope)
                signed = _sign_model(staging, partial, private_key_pem, passphrase)
                if signed.pop(PROVENANCE_FILE, None) != hashlib.sha256(envelope).hexdigest():
                    raise SealingError("the model signature does not cover the provenance")
                if signed != expected:
                    changed = [n for n in sorted(expected) if signed.get(n) != expected[n]]
                    raise DigestMismatch(
                        "a file to be released is not the content that was approved",
                        detail=", ".join(changed))
                _fsync_tree(staging)
                _publish(staging, destination)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
    except OSError as exc:
        raise SealingError("the bundle could not be written",
                           detail=f"{destination}: {type(exc).__name__}: {exc}") from exc
    return SealedBundle(path=destination, files=sorted(expected.items()),
                        keyid=keyid_of(private_key.public_key()))


# --- steps --------------------------------------------------------------------------------


def _expected_files(files: Sequence[tuple[str, Path, str]]) -> dict[str, str]:
    if not files:
        raise SealingError("a release needs at least one file")
    expected: dict[str, str] = {}
    for name, _source, sha256 in files:
        check_release_name(name)
        if name in expected:
            raise InvalidReleaseName(f"{name!r} is named twice")
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise SealingError(f"{sha256!r} is not a sha256 hex digest")
        expected[name] = sha256
    directories = {str(parent) for name in expected
                   for parent in PurePosixPath(name).parents if str(parent) != "."}
    if clash := sorted(directories & expected.keys()):
        raise InvalidReleaseName(f"{clash[0]!r} is both a file and a directory")
    return expected


def _place_files(files: Sequence[tuple[str, Path, str]], staging: Path) -> None:
    """Hard-link each source in (the store's blobs are read-only), or copy across devices.

    Nothing is hashed here: model_signing hashes every placed file once, and that manifest
    is checked against the approved digests before anything is published.
    """
    for name, source, _sha256 in files:
        mode = os.lstat(source).st_mode
        if not stat.S_ISREG(mode):
            raise SealingError(f"the source of {name} is not a regular file",
                               detail=str(source))
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
                raise
            _copy_durably(source, target)


def _sign_model(staging: Path, scratch: Path, private_key_pem: bytes,
                passphrase: bytes) -> dict[str, str]:
    """Write model.sig; return {name: sha256} as model_signing hashed and signed them."""
    # model_signing reads the key from a path: the still-encrypted PEM goes beside the
    # staging directory (so it is never part of the bundle) and is gone with `scratch`.
    key_path = scratch / "gate-key.pem"
    _write_durably(key_path, private_key_pem, mode=0o600)
    try:
        # model_signing's Config() has no annotations (no-untyped-call), and it hands
        # `password` (annotated str) to load_pem_private_key, which wants bytes.
        (ms_signing.Config()  # type: ignore[no-untyped-call]
         .use_elliptic_key_signer(private_key=key_path, password=passphrase)  # type: ignore[arg-type]
         .set_hashing_config(model_signing_hashing())
         .sign(staging, staging / MODEL_SIGNATURE_FILE))
    except Exception as exc:  # model_signing raises plain ValueError/OSError
        raise SealingError("the model signature could not be made",
                           detail=f"{type(exc).__name__}: {exc}") from exc
    finally:
        key_path.unlink(missing_ok=True)
    signature = (staging / MODEL_SIGNATURE_FILE).read_bytes()
    try:
        payload = json.loads(signature)["dsseEnvelope"]["payload"]
        statement = json.loads(base64.b64decode(payload, validate=True))
        return {r["name"]: r["digest"] for r in statement["predicate"]["resources"]
                if r["algorithm"] == "sha256"}
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SealingError("model_signing wrote a signature this gate cannot read",
                           detail=f"{type(exc).__name__}: {exc}") from exc


def _publish(staging: Path, destination: Path) -> None:
    """The one atomic step: the complete bundle appears under its name, or nothing does."""
    os.rename(staging, destination)  # refuses (ENOTEMPTY/EEXIST) rather than replace
    fsync_dir(destination.parent)


def _existing(destination: Path, expected: dict[str, str],
              public_pems: Sequence[bytes]) -> SealedBundle:
    failures = []
    for pem in public_pems:
        try:
            result = verify_bundle(destination, pem)
        except BundleVerificationError as exc:
            failures.append(f"{exc.step}: {exc.user_message}")
            continue
        if dict(result.files) != expected:
            raise BundleConflict("the destination holds a bundle of other files",
                                 detail=str(destination))
        return SealedBundle(path=destination, files=result.files, keyid=result.keyid)
    raise BundleConflict("the destination holds a bundle that does not verify",
                         detail=f"{destination}: {'; '.join(failures)}")


def _remove_stale_partials(destination: Path) -> None:
    # Only a crashed sealing leaves one, and we hold the lock, so none is in use.
    prefix = f"{destination.name}{PARTIAL_INFIX}"
    for stale in destination.parent.iterdir():
        if stale.name.startswith(prefix):
            shutil.rmtree(stale, ignore_errors=True)


# --- durability ---------------------------------------------------------------------------


@contextlib.contextmanager
def _sealing_lock(directory: Path) -> Iterator[None]:
    """One sealing at a time per destination directory (flock on the directory itself)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _copy_durably(source: Path, target: Path) -> None:
    shutil.copyfile(source, target, follow_symlinks=False)
    with target.open("rb") as stream:
        os.fsync(stream.fileno())


def _write_durably(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _fsync_tree(root: Path) -> None:
    """fsync model.sig (model_signing does not) and every directory entry made here."""
    with (root / MODEL_SIGNATURE_FILE).open("rb") as stream:
        os.fsync(stream.fileno())
    for directory, _dirs, _files in os.walk(root, topdown=False):
        fsync_dir(Path(directory))

