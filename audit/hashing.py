"""The bytes each audit event's hash covers: the canonical JSON of its fields, the field list,
the genesis link and the time format. Shared by appending (`audit.chain`), export and
verification, which is why it stands apart from both.

`schema_version` selects how an event's `details` were encoded (v1: sorted `json.dumps`; v2:
RFC 8785); the record around them is a flat object of strings and integers in both, encoded
per RFC 8785.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import rfc8785

from audit.models import SCHEMA_VERSION

GENESIS = "0" * 64
SCHEMA_VERSIONS = (1, 2)

#: The fields an event's hash covers: every column but `hash`.
HASHED_FIELDS = (
    "id",
    "schema_version",
    "time",
    "actor",
    "actor_role",
    "auth_method",
    "source",
    "action",
    "target",
    "outcome",
    "reason",
    "request_id",
    "details",
    "prev_hash",
)

def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JSON Canonicalization Scheme) bytes: what gets hashed and signed."""
    return rfc8785.dumps(value)


def canonical_json_v1(value: Any) -> bytes:
    """Schema v1's encoding: sorted keys, no white space, UTF-8 (equal to RFC 8785 for
    strings and integers, not for floats)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_details(details: Mapping[str, Any], schema_version: int = SCHEMA_VERSION) -> str:
    if schema_version == 1:
        return canonical_json_v1(dict(details)).decode()
    return canonical_json(dict(details)).decode()


def event_body(fields: Mapping[str, Any]) -> bytes:
    """The canonical bytes an event's hash covers.

    The record is a flat object of strings and integers (`details` is stored, and hashed, as
    its JSON text). For such an object `json.dumps` with sorted keys and no ASCII escaping is
    byte-for-byte RFC 8785 (a property test holds this), and runs in C: verification of a
    large log stays fast. Anything else goes through the reference encoder.
    """
    version = fields["schema_version"]
    if version not in SCHEMA_VERSIONS:
        raise ValueError(f"unknown audit schema version {version!r}")
    body = {name: fields[name] for name in HASHED_FIELDS}
    if all(type(v) is str or (type(v) is int and abs(v) < 1 << 53) for v in body.values()):
        return canonical_json_v1(body)
    return canonical_json(body)


def event_hash(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(event_body(fields)).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
