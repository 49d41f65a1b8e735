"""Users, passwords and API tokens: creation, login checks, token look-up, expiry and
revocation, deactivation and password changes, all audited.

A console session carries its user's `session_epoch`; changing a password or deactivating a
user raises the epoch, which ends every session begun before (`console.guards`). A token
works until it expires or is revoked, and only while its user is active.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Session, col, func, select

from audit.chain import append, utc_now
from audit.events import AuditAction, EventDraft, Outcome
from audit.models import AuditEvent
from console.core import Caller, Sealroom
from console.models import ApiToken, Role, User
from console.services.auditing import refusals
from console.services.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    ServiceError,
    Unauthorized,
)

_hasher = PasswordHasher()
_USER_NAME = re.compile(r"^[a-z][a-z0-9_.-]{1,31}$")
_TOKEN_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
TOKEN_PREFIX = "sr_"
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
#: A token's last use is written at most this often (the API would otherwise write per call).
LAST_USED_GRAIN = timedelta(minutes=1)
# Verifying against this keeps a login for an unknown user as slow as for a known one.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


#: Wrong current passwords allowed per user in `PASSWORD_GUESS_WINDOW` on the password form:
#: a stolen session must not become a way to guess the password.
PASSWORD_GUESSES = 5
PASSWORD_GUESS_WINDOW = timedelta(minutes=15)
WRONG_CURRENT_PASSWORD = "the current password is wrong"


class TooManyGuesses(ServiceError):
    status, code = 429, "rate_limited"


class TokenRefused(Unauthorized):
    """A bearer token that does not (or no longer) open the API; `code` says why."""

    def __init__(self, code: str, message: str, *, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.code = code


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise BadRequest(f"passwords must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise BadRequest(f"passwords must be at most {MAX_PASSWORD} characters")


def _user_named(session: Session, name: str) -> User:
    user = session.exec(select(User).where(User.name == name)).first()
    if user is None:
        raise NotFound(f"no user {name!r}")
    return user


# --- users ----------------------------------------------------------------------------------


def create_user(core: Sealroom, caller: Caller, name: str, role: str, password: str) -> User:
    with refusals(core, caller, AuditAction.USER_CREATE, f"user:{name[:64]}"):
        try:
            role = Role(role).value
        except ValueError:
            raise BadRequest(f"unknown role {role!r}; one of: "
                             f"{', '.join(r.value for r in Role)}") from None
        if not _USER_NAME.match(name):
            raise BadRequest("user names are 2-32 characters: lower-case letters, digits, . _ -")
        _check_password(password)
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
    """Set `name`'s password (an admin's reset, or the operator's): every session of theirs
    ends."""
    with refusals(core, caller, AuditAction.USER_PASSWORD_SET, f"user:{name[:64]}"):
        _check_password(password)
        if name == caller.name and caller.user_id is not None:
            raise Forbidden("change your own password on your account page: it asks for the "
                            "current one")
        with core.transaction() as session:
            user = _user_named(session, name)
            user.password_hash = _hasher.hash(password)
            user.session_epoch += 1
            session.add(user)
            append(session, EventDraft(caller.actor, AuditAction.USER_PASSWORD_SET,
                                       f"user:{name}", request_id=caller.request_id,
                                       details={"by": "reset", "sessions_ended": True}))


def change_own_password(core: Sealroom, caller: Caller, current: str, new: str) -> User:
    """The caller changes their own password, proving the current one. Every other session
    of theirs ends; the returned row carries the new epoch for the session that asked."""
    target = f"user:{caller.name}"
    with refusals(core, caller, AuditAction.USER_PASSWORD_SET, target):
        if caller.user_id is None:
            raise Forbidden("only a logged-in user changes their own password")
        _check_password(new)
        if new == current:
            raise BadRequest("the new password is the same as the current one")
        with core.read() as session:
            user = session.get(User, caller.user_id)
            guesses = _wrong_guesses(session, target)
        if guesses >= PASSWORD_GUESSES:
            raise TooManyGuesses(f"{guesses} wrong current passwords in the last "
                                 f"{PASSWORD_GUESS_WINDOW.seconds // 60} minutes; wait and "
                                 "try again")
        if user is None or not _verify(user.password_hash, current):
            raise Forbidden(WRONG_CURRENT_PASSWORD)
        with core.transaction() as session:
            row = session.get(User, caller.user_id)
            if row is None or row.password_hash != user.password_hash:
                raise Conflict("the password changed meanwhile; try again")
            row.password_hash = _hasher.hash(new)
            row.session_epoch += 1
            session.add(row)
            append(session, EventDraft(caller.actor, AuditAction.USER_PASSWORD_SET, target,
                                       request_id=caller.request_id,
                                       details={"by": "self", "other_sessions_ended": True}))
    return row


def _wrong_guesses(session: Session, target: str) -> int:
    """Wrong current passwords for `target` lately, counted in the audit log (where each is
    recorded anyway): the count holds across processes and restarts."""
    since = _iso(datetime.now(UTC) - PASSWORD_GUESS_WINDOW)
    return int(session.exec(
        select(func.count()).select_from(AuditEvent)
        .where(AuditEvent.target == target)
        .where(AuditEvent.action == AuditAction.USER_PASSWORD_SET.value)
        .where(AuditEvent.outcome == Outcome.DENIED.value)
        .where(AuditEvent.reason == WRONG_CURRENT_PASSWORD)
        .where(AuditEvent.time >= since)).one())


def set_active(core: Sealroom, caller: Caller, name: str, active: bool) -> User:
    """Deactivate a user (their sessions end and their tokens are revoked, at once) or let
    them log in again (their old sessions and tokens stay dead)."""
    action = AuditAction.USER_ACTIVATE if active else AuditAction.USER_DEACTIVATE
    with refusals(core, caller, action, f"user:{name[:64]}"), core.transaction() as session:
        user = _user_named(session, name)
        if user.active == active:
            raise Conflict(f"user {name!r} is already {'active' if active else 'deactivated'}")
        if not active and name == caller.name:
            raise Forbidden("you cannot deactivate yourself")
        if not active and user.role == Role.ADMIN and _active_admins(session) <= 1:
            raise Conflict(f"{name!r} is the last active admin")
        user.active = active
        revoked: list[int] = []
        if not active:
            user.session_epoch += 1
            revoked = _revoke_all(session, caller, user, "the user was deactivated")
        session.add(user)
        append(session, EventDraft(caller.actor, action, f"user:{name}",
                                   request_id=caller.request_id,
                                   details={"tokens_revoked": revoked} if not active else {}))
    return user


def _active_admins(session: Session) -> int:
    return int(session.exec(select(func.count()).select_from(User)
                            .where(User.role == Role.ADMIN.value)
                            .where(col(User.active).is_(True))).one())


def _revoke_all(session: Session, caller: Caller, user: User, reason: str) -> list[int]:
    now = utc_now()
    revoked = []
    for token in session.exec(select(ApiToken).where(ApiToken.user_id == user.id)
                              .where(col(ApiToken.revoked_at).is_(None))):
        assert token.id is not None
        token.revoked_at, token.revoked_by = now, caller.name
        session.add(token)
        revoked.append(token.id)
        append(session, EventDraft(caller.actor, AuditAction.TOKEN_REVOKE, f"token:{token.id}",
                                   reason=reason, request_id=caller.request_id,
                                   details={"owner": user.name, "prefix": token.prefix}))
    return revoked


def _verify(password_hash: str, password: str) -> bool:
    try:
        return bool(_hasher.verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


def authenticate(core: Sealroom, caller: Caller, name: str, password: str) -> User | None:
    """Check a password login; audit the success or the failure either way."""
    with core.transaction() as session:
        user = session.exec(select(User).where(User.name == name)).first()
        ok = _verify(user.password_hash if user else _DUMMY_HASH, password)
        ok = ok and user is not None and user.active
        actor = caller.actor
        if user is not None:
            actor = type(actor)(user.name, user.role, "password", actor.source)
        append(session, EventDraft(
            actor, AuditAction.LOGIN, f"user:{name[:64]}",
            Outcome.OK if ok else Outcome.DENIED,
            "" if ok else "wrong user name or password", caller.request_id))
    return user if ok else None


def get_user(core: Sealroom, user_id: int) -> User | None:
    with core.read() as session:
        return session.get(User, user_id)


@dataclass(frozen=True)
class UserSummary:
    user: User
    live_tokens: int


def list_users(core: Sealroom) -> list[UserSummary]:
    """Every user, by name, with how many of their tokens still work."""
    now = utc_now()
    with core.read() as session:
        users = session.exec(select(User).order_by(col(User.name))).all()
        tokens = session.exec(select(ApiToken).where(col(ApiToken.revoked_at).is_(None))).all()
    live: dict[int, int] = {}
    for token in tokens:
        if _when(token.expires_at) > _when(now):
            live[token.user_id] = live.get(token.user_id, 0) + 1
    return [UserSummary(u, live.get(u.id or 0, 0)) for u in users]


# --- API tokens -----------------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    """A token as its owner and admins see it (never the token itself)."""

    id: int
    owner: str
    name: str
    prefix: str
    created_at: str
    expires_at: str
    last_used_at: str | None
    revoked_at: str | None
    revoked_by: str
    state: str  # "active", "expired" or "revoked"

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "owner": self.owner, "name": self.name, "prefix": self.prefix,
                "created_at": self.created_at, "expires_at": self.expires_at,
                "last_used_at": self.last_used_at, "revoked_at": self.revoked_at,
                "revoked_by": self.revoked_by, "state": self.state}


def _info(token: ApiToken, owner: str, now: datetime) -> TokenInfo:
    assert token.id is not None
    state = "revoked" if token.revoked_at else \
        "expired" if _when(token.expires_at) <= now else "active"
    return TokenInfo(token.id, owner, token.name, token.prefix, token.created_at,
                     token.expires_at, token.last_used_at, token.revoked_at, token.revoked_by,
                     state)


@dataclass(frozen=True)
class NewToken:
    """A token just made: `secret` is shown once and never stored."""

    secret: str
    info: TokenInfo


def issue_token(core: Sealroom, caller: Caller, user_name: str, *, name: str = "",
                expires_in_days: int | None = None, not_after: str | None = None) -> NewToken:
    """Make an API token for `user_name` that expires in `expires_in_days` (default
    `SEALROOM_TOKEN_TTL_DAYS`, at most `SEALROOM_TOKEN_MAX_DAYS`), and never after
    `not_after` (a token made with a token cannot outlive it). Only its hash is stored."""
    settings = core.settings
    with refusals(core, caller, AuditAction.TOKEN_CREATE, f"user:{user_name[:64]}"):
        name = name.strip() or "unnamed"
        if not _TOKEN_NAME.match(name):
            raise BadRequest("token names are 1-64 characters, no control characters")
        days = settings.token_ttl_days if expires_in_days is None else expires_in_days
        if isinstance(days, bool) or not isinstance(days, int) \
                or not 1 <= days <= settings.token_max_days:
            raise BadRequest(f"expires_in_days must be a whole number from 1 to "
                             f"{settings.token_max_days}")
        now = datetime.now(UTC)
        expires = now + timedelta(days=days)
        if not_after is not None and _when(not_after) < expires:
            expires = _when(not_after)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with core.transaction() as session:
            user = _user_named(session, user_name)
            if not user.active:
                raise Conflict(f"user {user_name!r} is deactivated")
            row = ApiToken(user_id=user.id or 0, prefix=secret[:10], token_hash=_digest(secret),
                           created_at=_iso(now), name=name, expires_at=_iso(expires))
            session.add(row)
            session.flush()
            append(session, EventDraft(caller.actor, AuditAction.TOKEN_CREATE,
                                       f"user:{user_name}", request_id=caller.request_id,
                                       details={"token": row.id, "prefix": row.prefix,
                                                "name": name, "expires_at": row.expires_at}))
    return NewToken(secret, _info(row, user_name, now))


def create_token(core: Sealroom, caller: Caller, user_name: str, *, name: str = "",
                 expires_in_days: int | None = None) -> str:
    """Make an API token for `user_name` and return it (it is shown only once)."""
    return issue_token(core, caller, user_name, name=name,
                       expires_in_days=expires_in_days).secret


def list_tokens(core: Sealroom, owner: str | None = None) -> list[TokenInfo]:
    """The tokens of `owner` (every user's if None), newest first, revoked ones included."""
    query = select(ApiToken, User.name).join(User, col(User.id) == ApiToken.user_id) \
        .order_by(col(ApiToken.id).desc())
    if owner is not None:
        query = query.where(User.name == owner)
    with core.read() as session:
        rows = session.exec(query).all()
    now = datetime.now(UTC)
    return [_info(token, name, now) for token, name in rows]


def revoke_token(core: Sealroom, caller: Caller, token_id: int, *,
                 any_owner: bool = False) -> TokenInfo:
    """Revoke a token of the caller's (or, with `any_owner`, anyone's): it is refused from
    the next request on. Someone else's token is "not found" to a caller who may not see it."""
    with refusals(core, caller, AuditAction.TOKEN_REVOKE, f"token:{token_id}"), \
            core.transaction() as session:
        token = session.get(ApiToken, token_id)
        owner = session.get(User, token.user_id) if token is not None else None
        if token is None or owner is None or (not any_owner and owner.id != caller.user_id):
            raise NotFound(f"no token {token_id}")
        if token.revoked_at is not None:
            raise Conflict(f"token {token_id} was already revoked at {token.revoked_at}")
        token.revoked_at, token.revoked_by = utc_now(), caller.name
        session.add(token)
        append(session, EventDraft(caller.actor, AuditAction.TOKEN_REVOKE, f"token:{token_id}",
                                   request_id=caller.request_id,
                                   details={"owner": owner.name, "prefix": token.prefix,
                                            "name": token.name}))
    return _info(token, owner.name, datetime.now(UTC))


def authenticate_token(core: Sealroom, token: str) -> tuple[User, ApiToken]:
    """The user a bearer token stands for, or `TokenRefused` saying why not (unknown,
    revoked, expired, or its user deactivated). Notes the token's use, to the minute."""
    if not token.startswith(TOKEN_PREFIX):
        raise TokenRefused("unauthorized", "a valid API token is required "
                           "(Authorization: Bearer <token>)")
    found: tuple[User, ApiToken] | None = None
    with core.read() as session:
        for candidate in session.exec(select(ApiToken).where(ApiToken.prefix == token[:10])):
            if hmac.compare_digest(candidate.token_hash, _digest(token)):
                user = session.get(User, candidate.user_id)
                if user is not None:
                    found = (user, candidate)
                break
    if found is None:
        raise TokenRefused("unauthorized", "a valid API token is required "
                           "(Authorization: Bearer <token>)")
    user, row = found
    about = f"API token {row.id} ({row.name!r}, {row.prefix}…) of {user.name}"
    if row.revoked_at is not None:
        raise TokenRefused("token_revoked", f"this API token was revoked at {row.revoked_at}; "
                           "make a new one", detail=f"{about}: revoked at {row.revoked_at}")
    now = datetime.now(UTC)
    if _when(row.expires_at) <= now:
        raise TokenRefused("token_expired", f"this API token expired at {row.expires_at}; "
                           "make a new one", detail=f"{about}: expired at {row.expires_at}")
    if not user.active:
        raise TokenRefused("account_inactive", "this account is deactivated",
                           detail=f"{about}: the user is deactivated")
    if row.last_used_at is None or _when(row.last_used_at) + LAST_USED_GRAIN <= now:
        with core.transaction() as session:
            fresh = session.get(ApiToken, row.id)
            if fresh is not None:
                fresh.last_used_at = _iso(now)
                session.add(fresh)
    return user, row


def user_for_token(core: Sealroom, token: str) -> User | None:
    """The user a working token stands for, or None."""
    try:
        return authenticate_token(core, token)[0]
    except TokenRefused:
        return None
