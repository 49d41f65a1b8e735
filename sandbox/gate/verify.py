"""Offline verification of a released bundle: the OpenSSF model signature, the signed SLSA
provenance with the lineage of earlier sandboxes it records, and every file's hash, as a
flat list of named steps that each raise their own error. Needs only the bundle and the
gate's public key, never the server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric import ec
from model_signing import hashing as ms_hashing
from model_signing import verifying as ms_verifying

from sandbox.gate.errors import GateError
from sandbox.gate.keys import keyid_of, load_public_key
from sandbox.gate.provenance import (
    BUILD_TYPE,
    PROVENANCE_FILE,
    Lineage,
    ProvenanceError,
    lineage_of,
    read_envelope,
    statement_subjects,
    verify_envelope,
)

MODEL_SIGNATURE_FILE = "model.sig"
#: Files of the bundle that are not released content; both sit at the bundle's root.
SIGNATURE_FILES = (MODEL_SIGNATURE_FILE, PROVENANCE_FILE)
#: Root paths `model_signing` leaves out by default (its `--ignore-git-paths`); a release
#: may not use them, or the stock `model_signing verify key` would not see those files.
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
MODEL_SIGNING_PREDICATE = "https://model_signing/signature/v1.0"


def model_signing_hashing() -> ms_hashing.Config:
    """The hashing both sealing and verification use: exactly what `model_signing verify
    key` does by default (one SHA-256 per file, git paths and the signature left out).

    The provenance file is *not* left out: the model signature covers it, so the stock
    `model_signing verify key` also fails on an edited provenance."""
    return (ms_hashing.Config()  # type: ignore[no-untyped-call]  # unannotated upstream
            .use_file_serialization(hashing_algorithm="sha256")
            .set_ignored_paths(paths=[MODEL_SIGNATURE_FILE], ignore_git_paths=True))


class BundleVerificationError(GateError):
    """A bundle that does not verify; `step` names the check that failed."""

    status = 422
    step: ClassVar[str] = "bundle"


class ModelSignatureInvalid(BundleVerificationError):
    step = "model_signature"


class ProvenanceSignatureInvalid(BundleVerificationError):
    step = "provenance_signature"


class ProvenanceStatementInvalid(BundleVerificationError):
    step = "provenance_statement"


class ProvenanceLineageInvalid(BundleVerificationError):
    """The signed lineage of earlier sandboxes is not a well-formed DAG, or disagrees with
    the resolved dependencies."""

    step = "provenance_lineage"


class ProvenanceSubjectsMismatch(BundleVerificationError):
    step = "provenance_subjects"


class FileHashMismatch(BundleVerificationError):
    step = "file_hashes"


@dataclass(frozen=True)
class BundleVerification:
    """What a verified bundle vouches for, ready to print."""

    bundle: Path
    keyid: str
    release_id: str
    requester: str
    approvers: list[str]
    policy_version: int | str
    image_digest: str
    code_digest: str
    datasets: list[tuple[str, str]]
    files: list[tuple[str, str]]
    checks: dict[str, Any]
    builder_id: str
    started_on: str
    finished_on: str
    steps: list[str] = field(default_factory=list)
    #: The sandbox the released files came from (as its spec names it).
    sandbox_id: str = ""
    #: The earlier sandboxes the release builds on; empty when it built on none.
    lineage: Lineage = field(default_factory=Lineage)


@dataclass
class _Evidence:
    """What the steps learn, in order; a later step only reads what an earlier one proved."""

    bundle: Path
    public_pem: bytes
    public_key: ec.EllipticCurvePublicKey
    signed_files: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    provenance_files: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    lineage: Lineage = field(default_factory=Lineage)


# --- the steps ----------------------------------------------------------------------------


def _model_signature(evidence: _Evidence) -> None:
    """model.sig is a model-signing v1.0 signature by this key over the bundle's files."""
    try:
        signature = (evidence.bundle / MODEL_SIGNATURE_FILE).read_bytes()
    except OSError as exc:
        raise ModelSignatureInvalid(f"the bundle has no readable {MODEL_SIGNATURE_FILE}",
                                    detail=str(exc)) from exc
    # model_signing reads the key and signature from paths; hand it private copies of the
    # very bytes parsed below, so what is parsed is what was verified.
    with tempfile.TemporaryDirectory(prefix="sealroom-verify-") as scratch:
        sig_path, key_path = Path(scratch) / "model.sig", Path(scratch) / "key.pem"
        sig_path.write_bytes(signature)
        key_path.write_bytes(evidence.public_pem)
        try:
            (ms_verifying.Config()  # type: ignore[no-untyped-call]  # unannotated upstream
             .use_elliptic_key_verifier(public_key=key_path)
             .set_hashing_config(model_signing_hashing())
             .verify(evidence.bundle, sig_path))
        except Exception as exc:  # model_signing signals every failure with plain errors
            raise ModelSignatureInvalid(_model_signing_failure(str(exc)),
                                        detail=f"{type(exc).__name__}: {exc}") from exc
    try:
        envelope = json.loads(signature)["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"], validate=True))
        if statement["predicateType"] != MODEL_SIGNING_PREDICATE:
            raise ValueError(f"predicate type {statement['predicateType']!r}")
        predicate = statement["predicate"]
        serialization = predicate["serialization"]
        if serialization["method"] != "files" or serialization["hash_type"] != "sha256":
            raise ValueError(f"serialization {serialization!r}, not sha256 per file")
        for resource in predicate["resources"]:
            if resource["algorithm"] != "sha256" or resource["name"] in evidence.signed_files:
                raise ValueError(f"resource {resource['name']!r} repeated or not sha256")
            evidence.signed_files[resource["name"]] = resource["digest"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ModelSignatureInvalid("the model signature is not a Sealroom release signature",
                                    detail=f"{type(exc).__name__}: {exc}") from exc
    if evidence.signed_files.pop(PROVENANCE_FILE, None) is None:
        raise ModelSignatureInvalid(f"the model signature does not cover {PROVENANCE_FILE}")
    if not evidence.signed_files:
        raise ModelSignatureInvalid("the model signature covers no files")


def _provenance_signature(evidence: _Evidence) -> None:
    """provenance.intoto.jsonl is a DSSE envelope signed by this key."""
    try:
        raw = (evidence.bundle / PROVENANCE_FILE).read_bytes()
    except OSError as exc:
        raise ProvenanceSignatureInvalid(f"the bundle has no readable {PROVENANCE_FILE}",
                                         detail=str(exc)) from exc
    try:
        evidence.provenance = verify_envelope(read_envelope(raw), evidence.public_key)
    except ProvenanceError as exc:
        raise ProvenanceSignatureInvalid(exc.user_message, detail=exc.detail) from exc


def _provenance_statement(evidence: _Evidence) -> None:
    """The signed statement is Sealroom release provenance whose facts can be read."""
    try:
        evidence.provenance_files = statement_subjects(evidence.provenance)
        evidence.facts = _facts(evidence.provenance)
    except ProvenanceError as exc:
        raise ProvenanceStatementInvalid(exc.user_message, detail=exc.detail) from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProvenanceStatementInvalid("the provenance lacks a Sealroom release's facts",
                                         detail=f"{type(exc).__name__}: {exc}") from exc


def _provenance_lineage(evidence: _Evidence) -> None:
    """The lineage it records is a DAG of earlier sandboxes, every parent present, each
    digest well-formed, and the resolved dependencies name exactly its digests."""
    try:
        evidence.lineage = lineage_of(evidence.provenance)
    except ProvenanceError as exc:
        raise ProvenanceLineageInvalid(f"the provenance's lineage is malformed: "
                                       f"{exc.user_message}", detail=exc.detail) from exc


def _provenance_subjects(evidence: _Evidence) -> None:
    """Both statements name the same files with the same digests."""
    if evidence.provenance_files != evidence.signed_files:
        raise ProvenanceSubjectsMismatch(
            "the provenance and the model signature name different files",
            detail=_difference(evidence.signed_files, evidence.provenance_files,
                               "model signature", "provenance"))


def _file_hashes(evidence: _Evidence) -> None:
    """Every file on disk, re-hashed here, is exactly what both statements name."""
    on_disk = _bundle_files(evidence.bundle)
    for expected, label in ((evidence.signed_files, "model signature"),
                            (evidence.provenance_files, "provenance")):
        extra, missing = sorted(on_disk - expected.keys()), sorted(expected.keys() - on_disk)
        if extra or missing:
            raise FileHashMismatch(
                f"the bundle's files differ from what the {label} names",
                detail=f"not signed: {extra[:10]}; missing: {missing[:10]}")
    wrong = []
    for name in sorted(on_disk):
        with (evidence.bundle / name).open("rb") as stream:
            digest = hashlib.file_digest(stream, "sha256").hexdigest()
        if digest != evidence.signed_files[name] or digest != evidence.provenance_files[name]:
            wrong.append(name)
    if wrong:
        raise FileHashMismatch(f"{len(wrong)} file(s) changed since sealing: "
                               f"{', '.join(wrong[:5])}")


#: Run in this order: signatures before anything they cover is read or believed.
STEPS: tuple[tuple[str, Callable[[_Evidence], None]], ...] = (
    ("model_signature", _model_signature),
    ("provenance_signature", _provenance_signature),
    ("provenance_statement", _provenance_statement),
    ("provenance_lineage", _provenance_lineage),
    ("provenance_subjects", _provenance_subjects),
    ("file_hashes", _file_hashes),
)
STEP_NAMES = tuple(name for name, _ in STEPS)


def verify_bundle(bundle: Path, public_key_pem: bytes, *,
                  on_step: Callable[[str], None] | None = None) -> BundleVerification:
    """Run every step; the first that fails raises its `BundleVerificationError`.

    `on_step(name)` is called after each step that holds (the CLI prints progress with
    it). A key that is not ECDSA P-256 PEM raises `UnsupportedKey` before any step runs.
    """
    public_key = load_public_key(public_key_pem)
    if not bundle.is_dir():
        raise BundleVerificationError(f"{bundle} is not a bundle directory")
    evidence = _Evidence(bundle=bundle, public_pem=public_key_pem, public_key=public_key)
    for name, step in STEPS:
        step(evidence)
        if on_step is not None:
            on_step(name)
    facts = evidence.facts
    return BundleVerification(
        bundle=bundle, keyid=keyid_of(public_key),
        files=sorted(evidence.signed_files.items()), steps=list(STEP_NAMES),
        lineage=evidence.lineage, **facts)


# --- helpers ------------------------------------------------------------------------------


def _facts(statement: Mapping[str, Any]) -> dict[str, Any]:
    predicate = statement["predicate"]
    build, run = predicate["buildDefinition"], predicate["runDetails"]
    if build["buildType"] != BUILD_TYPE:
        raise ProvenanceError(f"build type {build['buildType']!r} is not {BUILD_TYPE}")
    external, internal = build["externalParameters"], build["internalParameters"]
    release_id = run["metadata"]["invocationId"]
    if external["releaseRequest"] != release_id:
        raise ProvenanceError("the provenance names two different release requests")
    dependencies: dict[str, str] = {}
    datasets: list[tuple[str, str]] = []
    for dependency in build["resolvedDependencies"]:
        if dependency["name"].startswith(("input:", "ancestor:")):
            continue  # the lineage step reads these
        algorithm, value = next(iter(sorted(dependency["digest"].items())))
        digest = f"{algorithm}:{value}"
        if dependency["name"].startswith("dataset:"):
            datasets.append((dependency["name"].removeprefix("dataset:"), digest))
        else:
            dependencies[dependency["name"]] = digest
    approvers = internal["approvers"]
    if not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers):
        raise ProvenanceError("the provenance's approvers are malformed")
    return {
        "release_id": str(release_id),
        "requester": str(external["requester"]),
        "approvers": approvers,
        "policy_version": internal["policyVersion"],
        "image_digest": dependencies["image"],
        "code_digest": dependencies["code"],
        "datasets": datasets,
        "checks": dict(internal["checks"]),
        "builder_id": str(run["builder"]["id"]),
        "started_on": str(run["metadata"]["startedOn"]),
        "finished_on": str(run["metadata"]["finishedOn"]),
        "sandbox_id": str((external.get("sandboxSpec") or {}).get("sandbox_id", "")),
    }


def _model_signing_failure(message: str) -> str:
    """model_signing's failure in a line a person can act on (its detail goes to the log)."""
    changed = re.findall(r"Hash mismatch for '([^']*)'", message)
    extra = re.search(r"Extra files found in model '[^']*': ([^\]\"]*)", message)
    missing = re.search(r"Missing files in model '[^']*': ([^\]\"]*)", message)
    parts = []
    if changed:
        parts.append(f"changed since sealing: {', '.join(changed[:5])}")
    if extra:
        parts.append(f"not signed: {extra.group(1).rstrip(chr(39))[:200]}")
    if missing:
        parts.append(f"missing: {missing.group(1).rstrip(chr(39))[:200]}")
    if parts:
        return "the files do not match the model signature (" + "; ".join(parts) + ")"
    if "Key mismatch" in message or "InvalidSignature" in message or not message:
        return "the model signature is not made by this key"
    return "the model signature does not hold for this key"


def _bundle_files(bundle: Path) -> set[str]:
    """Release names of the regular files in the bundle; anything else is refused."""
    names: set[str] = set()
    pending = [bundle]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                path = Path(entry.path)
                mode = entry.stat(follow_symlinks=False).st_mode
                name = path.relative_to(bundle).as_posix()
                if stat.S_ISDIR(mode):
                    pending.append(path)
                elif not stat.S_ISREG(mode):
                    raise FileHashMismatch(f"{name} in the bundle is not a regular file")
                elif not (directory == bundle and entry.name in SIGNATURE_FILES):
                    names.add(name)
    return names


def _difference(left: Mapping[str, str], right: Mapping[str, str], left_label: str,
                right_label: str) -> str:
    only_left = sorted(left.keys() - right.keys())
    only_right = sorted(right.keys() - left.keys())
    differ = sorted(n for n in left.keys() & right.keys() if left[n] != right[n])
    return (f"only in {left_label}: {only_left[:10]}; only in {right_label}: "
            f"{only_right[:10]}; different digests: {differ[:10]}")
