"""Users' SSH public keys for the gateway: adding one (only modern types, RSA of 3072 bits or
more), listing and removing one's own, an admin revoking anyone's, and the look-up the
gateway authenticates with. Fingerprints are OpenSSH's: "SHA256:" and unpadded base64.

A removed key keeps its row (terminal sessions name its fingerprint) and stops working at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from audit.chain import append, utc_now
from audit.events import AuditAction, EventDraft, Outcome
from audit.models import AuditEvent
from console.core import Caller, Sealroom
from console.models import SshKey, User
from console.permissions import Permission, role_has
from console.services.accounts import LAST_USED_GRAIN
from console.services.auditing import refusals
from console.services.errors import BadRequest, Conflict, Forbidden, NotFound

#: The key types the gateway accepts, and the curve each ECDSA type names.
ACCEPTED = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521", "ssh-rsa")
_CURVES = {"ecdsa-sha2-nistp256": "secp256r1", "ecdsa-sha2-nistp384": "secp384r1",
           "ecdsa-sha2-nistp521": "secp521r1"}
MIN_RSA_BITS = 3072
#: OpenSSH's own ceiling (SSH_RSA_MAXIMUM_MODULUS_SIZE): larger keys only cost time.
MAX_RSA_BITS = 16384
#: A 16384-bit RSA line is under 3 KB; anything much longer is not one public key.
MAX_TEXT = 16 * 1024
MAX_NAME = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
#: What a key type looks like ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"), to tell a
#: type we refuse from text that is not a key line at all.
_KEY_TYPE = re.compile(r"^[a-z0-9]+(-[a-z0-9.]+)+(@[a-z0-9.-]+)?$")
_NOT_A_KEY = "this is not an OpenSSH public key: expected \"TYPE BASE64 [COMMENT]\", the line " \
    "of a .pub file"


class ParsedKey:
    """One OpenSSH public key line, checked: what is stored of it."""

    __slots__ = ("algorithm", "bits", "blob", "comment")

    def __init__(self, algorithm: str, bits: int, blob: bytes, comment: str) -> None:
        self.algorithm, self.bits, self.blob, self.comment = algorithm, bits, blob, comment

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    @property
    def public_key(self) -> str:
        return f"{self.algorithm} {base64.b64encode(self.blob).decode()}"


def fingerprint(blob: bytes) -> str:
    """The key's fingerprint as `ssh-keygen -lf` prints it, from its wire-format blob (what
    paramiko's `PKey.asbytes()` gives the gateway)."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _blob_type(blob: bytes) -> str | None:
    """The type string a key blob starts with (an SSH `string`), or None if it has none."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if not 0 < length <= 64 or len(blob) < 4 + length:
        return None
    try:
        return blob[4:4 + length].decode("ascii")
    except UnicodeDecodeError:
        return None


def _refuse_type(algorithm: str) -> None:
    if algorithm.startswith("sk-"):
        raise BadRequest(f"{algorithm} is a security-key (FIDO) key, which the gateway cannot "
                         "check (paramiko does not support them); add an ed25519, ecdsa or "
                         f"RSA (at least {MIN_RSA_BITS} bits) key")
    if algorithm == "ssh-dss":
        raise BadRequest("DSA keys are not accepted (they are broken and OpenSSH dropped "
                         "them); make an ed25519 key: ssh-keygen -t ed25519")
    if "-cert-v01@openssh.com" in algorithm:
        raise BadRequest("certificates are not accepted; paste the plain public key "
                         "(the .pub file, not the -cert.pub file)")
    if algorithm not in ACCEPTED:
        if not _KEY_TYPE.match(algorithm):
            raise BadRequest(_NOT_A_KEY)
        raise BadRequest(f"{algorithm} is not a key type the gateway accepts; one of: "
                         f"{', '.join(ACCEPTED)}")


def parse(text: str) -> ParsedKey:
    """Check one OpenSSH public key line ("type base64 [comment]"); `BadRequest` says what
    is wrong with anything else."""
    if "PRIVATE KEY" in text:
        raise BadRequest("this is a PRIVATE key; paste the .pub file (and keep the private "
                         "key to yourself: if it was shared, make a new one)")
    if len(text) > MAX_TEXT:
        raise BadRequest(f"that is {len(text)} characters: one public key is a single line "
                         "of a few hundred")
    if "BEGIN SSH2 PUBLIC KEY" in text:
        raise BadRequest("this is an RFC 4716 (SSH2) public key; convert it with "
                         "ssh-keygen -i -f FILE and paste the line that prints")
    # A byte-order mark is what some Windows editors put before the line they save.
    lines = [line for line in text.replace("\ufeff", "").strip().splitlines() if line.strip()]
    if not lines:
        raise BadRequest("paste a public key: the one line of your .pub file")
    if len(lines) > 1:
        raise BadRequest(f"one key at a time: this has {len(lines)} lines; paste a single "
                         "line of a .pub file")
    parts = lines[0].split(None, 2)
    if len(parts) < 2:
        raise BadRequest(_NOT_A_KEY)
    algorithm, encoded = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    _refuse_type(algorithm)
    garbled = BadRequest(f"this is not a valid {algorithm} public key: its data is "
                         "damaged or incomplete (copy the whole line of the .pub file)")
    if not _BASE64.match(encoded):
        raise garbled
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise garbled from None
    inner = _blob_type(blob)
    if inner is None:
        raise garbled
    if inner != algorithm:
        raise BadRequest(f"the line says {algorithm}, but the key itself is "
                         f"{inner if inner.isprintable() else 'something else'}: copy the "
                         "line unchanged from the .pub file")
    try:
        key = serialization.load_ssh_public_key(f"{algorithm} {encoded}".encode())
    except (ValueError, UnsupportedAlgorithm):
        raise garbled from None
    return ParsedKey(algorithm, _bits(algorithm, key), blob, comment)


def _bits(algorithm: str, key: Any) -> int:
    if algorithm == "ssh-ed25519" and isinstance(key, ed25519.Ed25519PublicKey):
        return 256
    if algorithm in _CURVES and isinstance(key, ec.EllipticCurvePublicKey) \
            and key.curve.name == _CURVES[algorithm]:
        return int(key.curve.key_size)
    if algorithm == "ssh-rsa" and isinstance(key, rsa.RSAPublicKey):
        bits = int(key.key_size)
        if bits < MIN_RSA_BITS:
            raise BadRequest(f"RSA keys must have at least {MIN_RSA_BITS} bits; this one has "
                             f"{bits} (make a new one: ssh-keygen -t ed25519)")
        if bits > MAX_RSA_BITS:
            raise BadRequest(f"RSA keys may have at most {MAX_RSA_BITS} bits; this one has "
                             f"{bits}")
        return bits
    raise BadRequest(f"this is not a valid {algorithm} public key")


def _name(given: str, comment: str, count: int) -> str:
    name = given.strip()
    if name:
        if _CONTROL.search(name):
            raise BadRequest("key names may not contain control characters")
        if len(name) > MAX_NAME:
            raise BadRequest(f"key names are at most {MAX_NAME} characters")
        return name
    if comment and not _CONTROL.search(comment) and len(comment) <= MAX_NAME:
        return comment
    return f"key {count + 1}"


def to_dict(key: SshKey) -> dict[str, Any]:
    """A key as its owner sees it."""
    return {"id": key.id, "name": key.name, "algorithm": key.algorithm, "bits": key.bits,
            "fingerprint": key.fingerprint, "created_at": key.created_at,
            "last_used_at": key.last_used_at}


def add(core: Sealroom, caller: Caller, text: str, name: str = "") -> dict[str, Any]:
    """Register one public key for the caller. Refused (400, audited, nothing stored): any
    type but ed25519, ecdsa and RSA of at least 3072 bits, a private key, anything but one
    line; 409 if the key is already registered, by anyone (not saying whose). A key its
    owner removed may be added again by them; one an admin removed may not."""
    target = f"user:{caller.name}"
    with refusals(core, caller, AuditAction.SSH_KEY_ADD, target):
        if caller.user_id is None:
            raise Forbidden("only a logged-in user adds SSH keys, for themselves")
        parsed = parse(text)
        taken = Conflict("this key is already registered; each key may belong to one "
                         "account only (make another with ssh-keygen -t ed25519)")
        try:
            with core.transaction() as session:
                owner = session.get(User, caller.user_id)
                if owner is None or not owner.active:
                    raise Forbidden("this account is deactivated")
                existing = session.exec(select(SshKey).where(
                    SshKey.fingerprint == parsed.fingerprint)).first()
                if existing is not None and (existing.user_id != caller.user_id
                                             or existing.removed_at is None):
                    holder = session.get(User, existing.user_id)
                    taken.detail = (f"{parsed.fingerprint} is key {existing.id} of "
                                    f"{holder.name if holder else existing.user_id}"
                                    f"{' (removed)' if existing.removed_at else ''}")
                    raise taken
                if existing is not None and _removed_by_admin(session, existing):
                    raise Conflict("an administrator removed this key; it cannot be added "
                                   "again (make a new one: ssh-keygen -t ed25519)")
                count = int(session.exec(select(func.count()).select_from(SshKey)
                                         .where(SshKey.user_id == caller.user_id)).one())
                label = _name(name, parsed.comment, count)
                now = utc_now()
                if existing is not None:  # their own removed key, back again
                    row = existing
                    row.name, row.created_at, row.removed_at = label, now, None
                else:
                    row = SshKey(user_id=caller.user_id, name=label,
                                 algorithm=parsed.algorithm, bits=parsed.bits,
                                 fingerprint=parsed.fingerprint,
                                 public_key=parsed.public_key, created_at=now)
                session.add(row)
                session.flush()
                append(session, EventDraft(
                    caller.actor, AuditAction.SSH_KEY_ADD, target,
                    request_id=caller.request_id,
                    details={"key": row.id, "name": label, "algorithm": row.algorithm,
                             "bits": row.bits, "fingerprint": row.fingerprint,
                             "added_again": existing is not None}))
        except IntegrityError:  # the same key added at the same moment by someone else
            taken.detail = f"{parsed.fingerprint} was added concurrently"
            raise taken from None
    return to_dict(row)


def _removed_by_admin(session: Session, key: SshKey) -> bool:
    """Whether the key's last removal was an admin's (read from the audit log, where every
    removal is recorded anyway): a key revoked as leaked must not come back."""
    event = session.exec(select(AuditEvent)
                         .where(AuditEvent.action == AuditAction.SSH_KEY_REMOVE.value)
                         .where(AuditEvent.target == f"ssh_key:{key.id}")
                         .where(AuditEvent.outcome == Outcome.OK.value)
                         .order_by(col(AuditEvent.id).desc())).first()
    return event is not None and json.loads(event.details).get("by") == "admin"


def list_mine(core: Sealroom, caller: Caller) -> list[dict[str, Any]]:
    """The caller's keys that work (removed ones are gone from their view), oldest first."""
    if caller.user_id is None:
        return []
    with core.read() as session:
        rows = session.exec(select(SshKey).where(SshKey.user_id == caller.user_id)
                            .where(col(SshKey.removed_at).is_(None))
                            .order_by(col(SshKey.id))).all()
    return [to_dict(row) for row in rows]


def list_all(core: Sealroom) -> list[dict[str, Any]]:
    """Every user's working keys with their owner, by owner then age: what an admin
    revokes from."""
    with core.read() as session:
        rows = session.exec(select(SshKey, User.name).join(User, col(User.id) == SshKey.user_id)
                            .where(col(SshKey.removed_at).is_(None))
                            .order_by(col(User.name), col(SshKey.id))).all()
    return [{**to_dict(key), "owner": owner} for key, owner in rows]


def _remove(core: Sealroom, caller: Caller, key_id: int, *, any_owner: bool) -> dict[str, Any]:
    with refusals(core, caller, AuditAction.SSH_KEY_REMOVE, f"ssh_key:{key_id}"), \
            core.transaction() as session:
        key = session.get(SshKey, key_id)
        owner = session.get(User, key.user_id) if key is not None else None
        if key is None or owner is None or key.removed_at is not None \
                or (not any_owner and key.user_id != caller.user_id):
            raise NotFound(f"no SSH key {key_id}")
        key.removed_at = utc_now()
        session.add(key)
        append(session, EventDraft(caller.actor, AuditAction.SSH_KEY_REMOVE,
                                   f"ssh_key:{key_id}", request_id=caller.request_id,
                                   details={"owner": owner.name, "name": key.name,
                                            "fingerprint": key.fingerprint,
                                            "by": "owner" if owner.id == caller.user_id
                                            else "admin"}))
    return to_dict(key)


def remove(core: Sealroom, caller: Caller, key_id: int) -> dict[str, Any]:
    """Remove one of the caller's keys: the gateway refuses it from the next login on.
    Someone else's key, a removed one or an unknown id is "not found" (404)."""
    return _remove(core, caller, key_id, any_owner=False)


def revoke(core: Sealroom, caller: Caller, key_id: int) -> dict[str, Any]:
    """An admin (`admin:token:manage`) removes anyone's key, say one that leaked: it cannot
    be added again."""
    if not role_has(caller.role, Permission.TOKEN_ADMIN):
        with refusals(core, caller, AuditAction.SSH_KEY_REMOVE, f"ssh_key:{key_id}"):
            raise Forbidden("only admins remove other users' SSH keys")
    return _remove(core, caller, key_id, any_owner=True)


def key_for_login(core: Sealroom, fingerprint: str) -> tuple[User, SshKey] | None:
    """The active user and their working key with this fingerprint, for the gateway; None
    if no such key, it was removed, or its user is deactivated."""
    with core.read() as session:
        key = session.exec(select(SshKey).where(SshKey.fingerprint == fingerprint)
                           .where(col(SshKey.removed_at).is_(None))).first()
        user = session.get(User, key.user_id) if key is not None else None
    if key is None or user is None or not user.active:
        return None
    return user, key


def touch(core: Sealroom, key_id: int) -> None:
    """Note a key's use (a gateway login), to the minute: at most one write a minute."""
    now = datetime.now(UTC)
    with core.read() as session:
        key = session.get(SshKey, key_id)
    if key is None or (key.last_used_at is not None
                       and _when(key.last_used_at) + LAST_USED_GRAIN > now):
        return
    with core.transaction() as session:
        fresh = session.get(SshKey, key_id)
        if fresh is not None:
            fresh.last_used_at = utc_now()
            session.add(fresh)


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def host_key_fingerprint(path: Path) -> str | None:
    """The SHA256 fingerprint of the gateway's host key (an OpenSSH private key file), to
    show engineers what their first `ssh` should print; None if there is none (yet) or it
    cannot be read."""
    try:
        data = path.read_bytes()
        key = serialization.load_ssh_private_key(data, None).public_key()
        blob = key.public_bytes(serialization.Encoding.OpenSSH,
                                serialization.PublicFormat.OpenSSH).split()[1]
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm, IndexError):
        return None
    return fingerprint(base64.b64decode(blob))
