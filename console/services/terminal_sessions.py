"""Terminal sessions through the SSH gateway: who may open one in which sandbox member, the
session's record, its output paid for from the disclosure ledger before it is shown, and its
end, which puts the recording's digest into the audit chain.

The gateway (console/ssh) moves the bytes; every decision and every record is made here.
"""

from __future__ import annotations

import json
import re
import secrets
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from audit.chain import append, utc_now
from audit.events import Actor, AuditAction, EventDraft, Outcome
from audit.recordings import RecordingDigest, digest_of
from console.core import Caller, Sealroom
from console.models import DisclosureItem, Sandbox, SandboxStatus, TerminalSession
from console.services import disclosure, ssh_keys
from console.services.auditing import refusals
from console.services.errors import Conflict, NotFound, PolicyDenied
from console.services.lineage import versions_of
from console.services.sandboxes import state_of
from policies.evaluator import PolicyDecision, PolicyEvaluator
from sandbox.backend import BackendState
from sandbox.cluster import member_name
from sandbox.spec import valid_sandbox_id

#: `alice`, `alice+SANDBOX_ID` or `alice+SANDBOX_ID.RANK`: the user name `ssh` sends.
_LOGIN = re.compile(r"^(?P<user>[a-z][a-z0-9_.-]{1,31})"
                    r"(?:\+(?P<sandbox>[A-Za-z0-9][A-Za-z0-9_-]{0,63})(?:\.(?P<rank>\d{1,4}))?)?$")
#: Terminal output is paid for from the ledger in blocks of this size, before it is sent;
#: what the last block did not use is given back when the session ends.
LEDGER_BLOCK = 64 << 10
#: The window the per-minute output limit counts over.
MINUTE_S = 60.0
AUTH_METHOD = "ssh-key"


@dataclass(frozen=True)
class Login:
    """What the SSH user name asks for."""

    user: str
    sandbox_id: str = ""
    rank: int | None = None


def parse_login(text: str) -> Login | None:
    found = _LOGIN.match(text)
    if found is None:
        return None
    sandbox_id = found.group("sandbox") or ""
    if sandbox_id and not valid_sandbox_id(sandbox_id):
        return None
    rank = found.group("rank")
    return Login(found.group("user"), sandbox_id, int(rank) if rank is not None else None)


@dataclass(frozen=True)
class KeyHolder:
    """A user whose registered key signed the connection."""

    user: str
    role: str
    key_id: int
    fingerprint: str
    source: str

    def caller(self) -> Caller:
        return Caller(Actor(self.user, self.role, AUTH_METHOD, self.source))


def holder_of(core: Sealroom, login: Login, fingerprint: str, source: str) -> KeyHolder | None:
    """The key's owner, if the key is registered, not removed, its user active and the one
    the login names; None otherwise (the caller counts the refusal)."""
    found = ssh_keys.key_for_login(core, fingerprint)
    if found is None:
        return None
    user, key = found
    if user.name != login.user or key.id is None:
        return None
    return KeyHolder(user.name, user.role, key.id, fingerprint, source)


def refuse_login(core: Sealroom, *, login_name: str, fingerprints: list[str],
                 source: str, reason: str) -> None:
    """One event for a connection that never authenticated: which keys it offered."""
    login = parse_login(login_name)
    core.record(Actor(login.user if login else "anonymous", "", AUTH_METHOD, source),
                AuditAction.SSH_AUTH, target=f"ssh:{login_name[:80]}", outcome=Outcome.DENIED,
                reason=reason, keys=fingerprints[:10], offered=len(fingerprints))


def record_idle_login(core: Sealroom, holder: KeyHolder) -> None:
    """A connection that logged in and asked for nothing before it ended."""
    core.record(holder.caller().actor, AuditAction.SSH_AUTH, target=f"ssh:{holder.user}",
                reason="logged in with a registered key; no terminal was asked for",
                key=holder.fingerprint)


def refuse_request(core: Sealroom, holder: KeyHolder, *, kind: str, reason: str,
                   session_id: str = "", **details: object) -> None:
    """A request the gateway never grants (forwarding, exec, sftp, env, X11, agent)."""
    with core.transaction() as session:
        append(session, EventDraft(
            holder.caller().actor, AuditAction.SSH_REFUSE,
            f"terminal:{session_id}" if session_id else f"ssh:{holder.user}",
            Outcome.DENIED, reason, details={"request": kind, **details}))


# --- opening -------------------------------------------------------------------------------


@dataclass
class OpenedSession:
    """A session the gateway is running: what it needs without asking the database."""

    id: str
    user: str
    role: str
    sandbox_id: str
    member: str
    backend_state: BackendState
    recording: Path
    policy_version: int
    key_fingerprint: str = ""
    datasets: tuple[str, ...] = ()


def _datasets(record: Sandbox) -> list[str]:
    names = [name for name, _ in versions_of(record.lineage)]
    names += [str(d["name"]) for d in json.loads(record.datasets)]
    return sorted(set(names))


def _choose(core: Sealroom, holder: KeyHolder, login: Login) -> Sandbox:
    with core.read() as session:
        if login.sandbox_id:
            record = session.get(Sandbox, login.sandbox_id)
            # Someone else's sandbox reads exactly as no sandbox: nothing about it leaks.
            if record is None or record.owner != holder.user:
                raise NotFound(f"you have no sandbox {login.sandbox_id}")
            if record.status != SandboxStatus.RUNNING:
                raise Conflict(f"sandbox {record.id} is {record.status}, not running; "
                               "terminals open in running sandboxes only")
            return record
        running = session.exec(select(Sandbox).where(Sandbox.owner == holder.user).where(
            Sandbox.status == SandboxStatus.RUNNING).order_by(col(Sandbox.created_at))).all()
    if not running:
        raise NotFound("you have no running sandbox; launch one first")
    if len(running) > 1:
        port = core.settings.ssh_port
        raise Conflict(f"you have {len(running)} running sandboxes; name one, e.g. "
                       f"ssh -p {port} {holder.user}+{running[-1].id}@HOST "
                       f"(yours: {', '.join(r.id for r in running[:10])})")
    return running[0]


def open_session(core: Sealroom, holder: KeyHolder, login: Login) -> OpenedSession:
    """Check policy and ownership, then record the session (SSH_OPEN) before any byte moves.
    Refusals are audited and raised as `ServiceError`s with the console's own message."""
    caller = holder.caller()
    target = f"ssh:{holder.user}+{login.sandbox_id}" if login.sandbox_id else \
        f"ssh:{holder.user}"
    with refusals(core, caller, AuditAction.SSH_OPEN, target, key=holder.fingerprint):
        record = _choose(core, holder, login)
        evaluator = core.evaluator
        decision = evaluator.may_open_ssh(holder.user, holder.role, _datasets(record))
        if not decision:
            raise PolicyDenied(decision.reason, rule=decision.rule,
                               policy_version=decision.policy_version)
        rank = login.rank or 0
        member = member_name(rank)
        if rank >= max(record.ranks, 1):
            raise NotFound(f"sandbox {record.id} has no rank {rank} "
                           f"(it has {max(record.ranks, 1)})")
        session_id = f"ssh-{secrets.token_hex(8)}"
        recording = core.settings.recordings_dir / f"{session_id}.cast"
        with core.transaction() as session:
            session.add(TerminalSession(
                id=session_id, user=holder.user, sandbox_id=record.id, member=member,
                key_fingerprint=holder.fingerprint, source=holder.source,
                started_at=utc_now(), recording=recording.name))
            append(session, EventDraft(
                caller.actor, AuditAction.SSH_OPEN, f"terminal:{session_id}",
                reason=decision.reason, details={
                    "session": session_id, "sandbox": record.id, "member": member,
                    "recording": recording.name, "key": holder.fingerprint,
                    "rule": decision.rule, "policy_version": decision.policy_version}))
    ssh_keys.touch(core, holder.key_id)
    return OpenedSession(session_id, holder.user, holder.role, record.id, member,
                         state_of(record), recording, decision.policy_version,
                         holder.fingerprint, tuple(_datasets(record)))


def still_allowed(core: Sealroom, opened: OpenedSession,
                  evaluator: PolicyEvaluator) -> Ending | None:
    """Why an open session must end now though nothing in it did: its user was deactivated,
    its key removed, or the active policy no longer lets it open (None: it may go on)."""
    found = ssh_keys.key_for_login(core, opened.key_fingerprint)
    if found is None or found[0].name != opened.user:
        return Ending("the account or its SSH key no longer opens terminals",
                      outcome=Outcome.DENIED)
    decision = evaluator.may_open_ssh(opened.user, found[0].role, opened.datasets)
    if not decision:
        return Ending(decision.reason, decision.rule, Outcome.DENIED)
    return None


def sandbox_running(core: Sealroom, sandbox_id: str) -> bool:
    with core.read() as session:
        record = session.get(Sandbox, sandbox_id)
    return record is not None and record.status == SandboxStatus.RUNNING


# --- output: the ledger and the terminal limits ------------------------------------------


@dataclass
class OutputMeter:
    """Pays for a session's output before it is sent: the disclosure ledger (per sandbox,
    per user and day) in blocks, and the policy's per-session and per-minute limits."""

    core: Sealroom
    opened: OpenedSession
    #: The active policy's evaluator, refreshed by the session about once a second (so an
    #: activation applies to running sessions without a database read per chunk).
    evaluator: PolicyEvaluator = field(init=False)
    sent: int = 0
    _credit: int = 0
    _blocks: int = 0
    _last_block: int = 0  # bytes the last block was charged
    _recent: deque[tuple[float, int]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.evaluator = self.core.evaluator

    def _block_key(self, number: int) -> str:
        return f"{self.opened.id}:{number}"

    def admit(self, wanted: int, now: float) -> tuple[int, PolicyDecision | None]:
        """How many of `wanted` bytes may be sent now, and the decision that ends the
        session when it is fewer (None while everything may go)."""
        while self._recent and self._recent[0][0] <= now - MINUTE_S:
            self._recent.popleft()
        minute = sum(n for _, n in self._recent)
        limits = self.evaluator.policy.interactive
        allowed = min(wanted, (limits.output_per_session_kb << 10) - self.sent,
                      (limits.output_per_minute_kb << 10) - minute)
        stop: PolicyDecision | None = None
        if allowed < wanted:
            stop = self.evaluator.terminal_output(
                session_bytes=self.sent + wanted, minute_bytes=minute + wanted)
        allowed = max(allowed, 0)
        while self._credit < allowed:
            granted, decision = self._reserve()
            if granted == 0:
                allowed, stop = self._credit, decision
                break
        self._credit -= allowed
        self.sent += allowed
        if allowed:
            self._recent.append((now, allowed))
        return allowed, stop

    def _reserve(self) -> tuple[int, PolicyDecision]:
        with self.core.transaction() as session:
            granted, decision = disclosure.reserve(
                session, self.evaluator, sandbox_id=self.opened.sandbox_id,
                user=self.opened.user, channel=disclosure.Channel.TERMINAL,
                key=self._block_key(self._blocks), wanted=LEDGER_BLOCK)
        if granted:
            self._blocks += 1
            self._credit += granted
            self._last_block = granted
        return granted, decision

    def settle(self) -> None:
        """Give back the unused part of the last block paid for."""
        if self._blocks and self._credit:
            with self.core.transaction() as session:
                disclosure.settle(session, sandbox_id=self.opened.sandbox_id,
                                  channel=disclosure.Channel.TERMINAL,
                                  key=self._block_key(self._blocks - 1),
                                  used=self._last_block - self._credit)
            self._credit = 0


# --- the end -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ending:
    """Why a session ended, in the console's words, and the rule that ended it if one did."""

    reason: str
    rule: str = ""
    outcome: Outcome = Outcome.OK


def end_session(core: Sealroom, opened: OpenedSession, ending: Ending,
                digest: RecordingDigest, *, bytes_out: int, bytes_in: int) -> None:
    """Record the end and the recording's digest (into the audit chain) in one transaction."""
    actor = Actor(opened.user, opened.role, AUTH_METHOD)
    with core.transaction() as session:
        row = session.get(TerminalSession, opened.id)
        if row is None or row.ended_at is not None:
            return
        _close_row(row, ending, digest, bytes_out, bytes_in)
        session.add(row)
        append(session, EventDraft(actor, AuditAction.SSH_END, f"terminal:{opened.id}",
                                   ending.outcome, ending.reason,
                                   details=_end_details(row)))


def _close_row(row: TerminalSession, ending: Ending, digest: RecordingDigest,
               bytes_out: int, bytes_in: int) -> None:
    row.ended_at = utc_now()
    row.end_reason = ending.reason
    row.end_rule = ending.rule
    row.bytes_out = bytes_out
    row.bytes_in = bytes_in
    row.recording_sha256 = digest.sha256
    row.recording_bytes = digest.size


def _end_details(row: TerminalSession) -> dict[str, object]:
    return {"session": row.id, "sandbox": row.sandbox_id, "member": row.member,
            "recording": row.recording, "recording_sha256": row.recording_sha256,
            "recording_bytes": row.recording_bytes, "bytes_out": row.bytes_out,
            "bytes_in": row.bytes_in, "rule": row.end_rule}


def recover(core: Sealroom) -> int:
    """End the sessions a gateway that died left open: their recordings (up to their last
    event) are hashed into the chain now. Returns how many."""
    with core.read() as session:
        left = session.exec(select(TerminalSession).where(
            col(TerminalSession.ended_at).is_(None))).all()
    for row in left:
        path = core.settings.recordings_dir / row.recording
        digest = digest_of(path) if path.is_file() else RecordingDigest("", 0)
        sent = _ledger_spent(core, row.sandbox_id, row.id)
        with core.transaction() as session:
            current = session.get(TerminalSession, row.id)
            if current is None or current.ended_at is not None:
                continue
            _close_row(current, Ending("the SSH gateway stopped during the session",
                                       outcome=Outcome.FAILED), digest, sent, 0)
            session.add(current)
            append(session, EventDraft(Actor.system("ssh-gateway"), AuditAction.SSH_END,
                                       f"terminal:{row.id}", Outcome.FAILED,
                                       current.end_reason, details=_end_details(current)))
    return len(left)


def _ledger_spent(core: Sealroom, sandbox_id: str, session_id: str) -> int:
    with core.read() as session:
        return int(session.exec(select(func.coalesce(func.sum(DisclosureItem.bytes), 0)).where(
            DisclosureItem.sandbox_id == sandbox_id).where(
            DisclosureItem.channel == disclosure.Channel.TERMINAL.value).where(
            col(DisclosureItem.item).startswith(f"{session_id}:"))).one())



# --- what the sandbox page and the API show ------------------------------------------------


def terminal_facts(core: Sealroom, caller: Caller, record: Sandbox,
                   host: str) -> dict[str, Any]:
    """How the caller opens a terminal in `record` (the command, the gateway's host key) or
    why they cannot, and the sessions opened in it: all in the console's own words."""

    host = core.settings.ssh_public_host or host
    port = core.settings.ssh_port
    decision = core.evaluator.may_open_ssh(caller.name, caller.role, _datasets(record))
    mine = record.owner == caller.name
    running = record.status == SandboxStatus.RUNNING
    login = f"{record.owner}+{record.id}"
    with core.read() as session:
        rows = session.exec(select(TerminalSession).where(
            TerminalSession.sandbox_id == record.id).order_by(
            col(TerminalSession.started_at).desc()).limit(50)).all()
    return {
        "allowed": decision.allowed and mine,
        "reason": decision.reason if not decision.allowed else
        ("" if mine else "terminals open in one's own sandboxes only"),
        "rule": decision.rule if not decision.allowed else "",
        "running": running,
        "command": f"ssh -p {port} {login}@{host}",
        "ranks": [{"rank": rank, "command": f"ssh -p {port} {login}.{rank}@{host}"}
                  for rank in range(1, max(record.ranks, 1))],
        "host": host, "port": port,
        "host_key": ssh_keys.host_key_fingerprint(core.settings.ssh_host_key),
        "key_count": len(ssh_keys.list_mine(core, caller)) if mine else 0,
        "sessions": [{"id": r.id, "user": r.user, "member": r.member,
                      "started_at": r.started_at, "ended_at": r.ended_at,
                      "end_reason": r.end_reason, "bytes_out": r.bytes_out} for r in rows],
    }
