"""The release's SLSA provenance: an in-toto Statement v1 saying which files came out of which
sandbox, image, datasets and code, under which policy, asked for by whom and approved by
whom; and its DSSE envelope, signed with the gate's key, as `provenance.intoto.jsonl`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox.gate.errors import GateError
from sandbox.gate.keys import keyid_of

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://sealroom.dev/release/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PROVENANCE_FILE = "provenance.intoto.jsonl"

_HEX = re.compile(r"[0-9a-f]+")
_DIGEST_BITS = {"sha256": 256, "sha384": 384, "sha512": 512}


class ProvenanceError(GateError):
    """Provenance that cannot be built, parsed, or whose signature does not hold."""

    status = 500


class ProvenanceSignatureError(ProvenanceError):
    """The DSSE envelope is not signed by the given key."""


def build_provenance(
    subjects: Sequence[tuple[str, str]],
    *,
    release_id: str,
    sandbox_spec: Mapping[str, Any],
    image_digest: str,
    datasets: Sequence[Mapping[str, str]],
    code_digest: str,
    policy_version: int | str,
    requester: str,
    approvers: Sequence[str],
    checks: Mapping[str, Any],
    started_on: datetime | str,
    finished_on: datetime | str,
    builder_id: str,
) -> dict[str, Any]:
    """An in-toto Statement v1 with a SLSA provenance v1 predicate for these released files.

    `subjects` are (release name, sha256 hex); digests elsewhere are `algorithm:hex` (a bare
    64-hex value is taken as sha256). Timestamps are aware datetimes or RFC 3339 text. What
    the requester chose goes in externalParameters; what the gate decided (policy,
    approvers, checks) in internalParameters.
    """
    names = [name for name, _ in subjects]
    if not names:
        raise ProvenanceError("a release needs at least one file")
    if len(set(names)) != len(names):
        raise ProvenanceError("a release names the same file twice")
    dependencies: list[dict[str, Any]] = [
        {"name": "image", "uri": "sealroom:image", "digest": digest_set(image_digest)},
    ]
    for dataset in datasets:
        dependencies.append({"name": f"dataset:{dataset['name']}",
                             "uri": f"sealroom:dataset/{dataset['name']}",
                             "digest": digest_set(dataset["digest"])})
    dependencies.append({"name": "code", "uri": "sealroom:code",
                         "digest": digest_set(code_digest)})
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": _hex(sha256, 256)}}
                    for name, sha256 in sorted(subjects)],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "releaseRequest": release_id,
                    "requester": requester,
                    "files": sorted(names),
                    "sandboxSpec": dict(sandbox_spec),
                },
                "internalParameters": {
                    "policyVersion": policy_version,
                    "approvers": list(approvers),
                    "checks": dict(checks),
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": builder_id},
                "metadata": {
                    "invocationId": release_id,
                    "startedOn": _rfc3339(started_on),
                    "finishedOn": _rfc3339(finished_on),
                },
            },
        },
    }


def digest_set(digest: str) -> dict[str, str]:
    """`sha256:ab…` (or bare sha256 hex) as an in-toto DigestSet `{"sha256": "ab…"}`."""
    algorithm, _, value = digest.rpartition(":")
    algorithm = algorithm or "sha256"
    if algorithm not in _DIGEST_BITS:
        raise ProvenanceError(f"unsupported digest algorithm in {digest!r}")
    return {algorithm: _hex(value, _DIGEST_BITS[algorithm])}


def statement_subjects(statement: Mapping[str, Any]) -> dict[str, str]:
    """The statement's subjects as {name: sha256 hex}; refuses duplicates and odd entries."""
    try:
        subjects: dict[str, str] = {}
        for subject in statement["subject"]:
            name, sha256 = subject["name"], subject["digest"]["sha256"]
            if not isinstance(name, str) or name in subjects:
                raise ProvenanceError(f"subject {name!r} is malformed or repeated")
            subjects[name] = _hex(sha256, 256)
        return subjects
    except (KeyError, TypeError) as exc:
        raise ProvenanceError("the statement's subjects are malformed",
                              detail=repr(exc)) from exc


# --- DSSE ---------------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def sign_statement(statement: Mapping[str, Any],
                   private_key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """A DSSE envelope over the statement (ECDSA P-256, SHA-256, DER signature)."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False).encode("utf-8")
    signature = private_key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    return {
        "payload": base64.b64encode(payload).decode("ascii"),
        "payloadType": PAYLOAD_TYPE,
        "signatures": [{"keyid": keyid_of(private_key.public_key()),
                        "sig": base64.b64encode(signature).decode("ascii")}],
    }


def envelope_line(envelope: Mapping[str, Any]) -> bytes:
    """The envelope as one JSON line, the `.intoto.jsonl` form."""
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"


def read_envelope(data: bytes) -> dict[str, Any]:
    """The one DSSE envelope in a `.intoto.jsonl` file."""
    lines = [line for line in data.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ProvenanceError(f"{PROVENANCE_FILE} holds {len(lines)} envelopes, not one")
    try:
        envelope = json.loads(lines[0])
    except ValueError as exc:
        raise ProvenanceError(f"{PROVENANCE_FILE} is not JSON", detail=str(exc)) from exc
    if not isinstance(envelope, dict):
        raise ProvenanceError(f"{PROVENANCE_FILE} does not hold a DSSE envelope")
    return envelope


def verify_envelope(envelope: Mapping[str, Any],
                    public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """The statement inside, once one of the envelope's signatures holds for this key."""
    try:
        payload_type = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = [base64.b64decode(s["sig"], validate=True)
                      for s in envelope["signatures"]]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ProvenanceSignatureError("the provenance envelope is malformed",
                                       detail=repr(exc)) from exc
    if payload_type != PAYLOAD_TYPE:
        raise ProvenanceSignatureError(f"the provenance payload type is {payload_type!r}, "
                                       f"not {PAYLOAD_TYPE}")
    message = pae(payload_type, payload)
    for signature in signatures:
        try:
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            break
        except InvalidSignature:
            continue
    else:
        raise ProvenanceSignatureError("the provenance is not signed by this key")
    # Only parsed once the signature holds: nothing unsigned is ever interpreted.
    try:
        statement = json.loads(payload)
    except ValueError as exc:
        raise ProvenanceError("the signed provenance is not JSON", detail=str(exc)) from exc
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise ProvenanceError("the signed provenance is not an in-toto Statement v1")
    if statement.get("predicateType") != SLSA_PROVENANCE_V1:
        raise ProvenanceError("the signed provenance is not SLSA provenance v1")
    return statement


def _hex(value: object, bits: int) -> str:
    if not isinstance(value, str) or len(value) != bits // 4 or not _HEX.fullmatch(value):
        raise ProvenanceError(f"{value!r} is not a lowercase {bits}-bit hex digest")
    return value


def _rfc3339(moment: datetime | str) -> str:
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError as exc:
            raise ProvenanceError(f"{moment!r} is not an RFC 3339 timestamp") from exc
    if moment.tzinfo is None:
        raise ProvenanceError("provenance timestamps must carry a time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
