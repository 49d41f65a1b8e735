"""Users, passwords and API tokens: creation, login checks and token look-up, all audited."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import select

from audit.chain import append, utc_now
from audit.events import AuditAction, EventDraft, Outcome
from console.core import Caller, Sealroom
from console.models import ApiToken, Role, User
from console.services.errors import BadRequest, Conflict, NotFound

_hasher = PasswordHasher()
_USER_NAME = re.compile(r"^[a-z][a-z0-9_.-]{1,31}$")
TOKEN_PREFIX = "sr_"
MIN_PASSWORD = 10
# Verifying against this keeps a login for an unknown user as slow as for a known one.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def create_user(core: Sealroom, caller: Caller, name: str, role: str, password: str) -> User:
    try:
        role = Role(role).value
    except ValueError:
        raise BadRequest(f"unknown role {role!r}; one of: {', '.join(r.value for r in Role)}") \
            from None
    if not _USER_NAME.match(name):
        raise BadRequest("user names are 2-32 characters: lower-case letters, digits, . _ -")
    if len(password) < MIN_PASSWORD:
        raise BadRequest(f"passwords must be at least {MIN_PASSWORD} characters")
    with core.transaction() as session:
        if session.exec(select(User).where(User.name == name)).first():
            raise Conflict(f"user {name!r} already exists")
        user = User(name=name, role=role, password_hash=_hasher.hash(password),
                    created_at=utc_now())
        session.add(user)
        append(session, EventDraft(caller.actor, AuditAction.USER_CREATE, f"user:{name}",
                                   request_id=caller.request_id, details={"role": role}))
    return user


def set_password(core: Sealroom, caller: Caller, name: str, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise BadRequest(f"passwords must be at least {MIN_PASSWORD} characters")
    with core.transaction() as session:
        user = session.exec(select(User).where(User.name == name)).first()
        if user is None:
            raise NotFound(f"no user {name!r}")
        user.password_hash = _hasher.hash(password)
        session.add(user)
        append(session, EventDraft(caller.actor, AuditAction.USER_PASSWORD_SET, f"user:{name}",
                                   request_id=caller.request_id))


def authenticate(core: Sealroom, caller: Caller, name: str, password: str) -> User | None:
    """Check a password login; audit the success or the failure either way."""
    with core.transaction() as session:
        user = session.exec(select(User).where(User.name == name)).first()
        ok = False
        try:
            ok = _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            ok = False
        ok = ok and user is not None and user.active
        actor = caller.actor
        if user is not None:
            actor = type(actor)(user.name, user.role, "password", actor.source)
        append(session, EventDraft(
            actor, AuditAction.LOGIN, f"user:{name[:64]}",
            Outcome.OK if ok else Outcome.DENIED,
            "" if ok else "wrong user name or password", caller.request_id))
    return user if ok else None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(core: Sealroom, caller: Caller, user_name: str) -> str:
    """Make an API token for `user_name`; only its hash is stored, the token is shown once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with core.transaction() as session:
        user = session.exec(select(User).where(User.name == user_name)).first()
        if user is None:
            raise NotFound(f"no user {user_name!r}")
        assert user.id is not None
        session.add(ApiToken(user_id=user.id, prefix=token[:10], token_hash=_digest(token),
                             created_at=utc_now()))
        append(session, EventDraft(caller.actor, AuditAction.TOKEN_CREATE, f"user:{user_name}",
                                   request_id=caller.request_id, details={"prefix": token[:10]}))
    return token


def user_for_token(core: Sealroom, token: str) -> User | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    with core.read() as session:
        row = session.exec(select(ApiToken).where(ApiToken.prefix == token[:10])
                           .where(ApiToken.revoked == False)).all()  # noqa: E712
        for candidate in row:
            if hmac.compare_digest(candidate.token_hash, _digest(token)):
                user = session.get(User, candidate.user_id)
                return user if user and user.active else None
    return None


def get_user(core: Sealroom, user_id: int) -> User | None:
    with core.read() as session:
        return session.get(User, user_id)
