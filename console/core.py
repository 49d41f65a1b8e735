"""The running system the services work on: settings, database, backend and policy."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlmodel import Session, col, select

from audit.chain import SIGNER_KEY, append, utc_now
from audit.checkpoints import PENDING_KEY, Checkpoint, CheckpointFile, CheckpointWriter
from audit.events import Actor, AuditAction, EventDraft, Outcome
from audit.keys import AuditKey, AuditKeyRing, PublicKeys
from console.db import make_engine, read, transaction, upgrade
from console.engine_watch import EngineWatch
from console.files import Repair, secure_data_dir
from console.settings import Settings, build_backend
from policies.evaluator import PolicyEvaluator
from policies.schema import Policy, default_policy_text, load_policy, policy_sha256
from sandbox.backend import Backend
from sandbox.gate.errors import GateError
from sandbox.gate.keys import GateKey, GateKeyRing, PublicKeyInfo, passphrase_from_env
from sandbox.storage import SandboxStorage

if TYPE_CHECKING:
    from audit.verify import VerificationReport

#: How many repairs one `system:files:repair` event lists (the count is always exact).
_REPAIRS_RECORDED = 200


class GateSigningKey:
    """The gate's private key as stored (encrypted) and the passphrase that opens it."""

    __slots__ = ("key", "passphrase")

    def __init__(self, key: GateKey, passphrase: bytes) -> None:
        self.key = key
        self.passphrase = passphrase

    @property
    def private_pem(self) -> bytes:
        return self.key.private_pem


class Sealroom:
    def __init__(self, settings: Settings, *, backend: Backend | None = None,
                 migrate: bool = True) -> None:
        self.settings = settings
        settings.ensure_dirs()
        if migrate:
            upgrade(settings.database_url)
        self.engine = make_engine(settings.database_url)
        # Reads go through their own query-only engine: BEGIN DEFERRED, never the write
        # lock, so a page never queues behind a writer (see `console.db.read`).
        self.read_engine = make_engine(settings.database_url, read_only=True)
        # Built on first use (`backend`), so work that never drives a sandbox (most CLI
        # commands, key and audit tasks) runs with no engine reachable.
        self._backend = backend
        self._backend_lock = threading.Lock()
        self.audit_checkpoints = CheckpointWriter(
            self._audit_signing_key, every_events=settings.audit_checkpoint_every,
            every_seconds=settings.audit_checkpoint_seconds,
            file=CheckpointFile(settings.audit_checkpoint_file))
        self._policy_cache: Policy | None = None
        self._policy_lock = threading.Lock()
        self._background: ThreadPoolExecutor | None = None
        self._background_keys: dict[str, Future[None]] = {}
        self._background_lock = threading.Lock()
        #: Set by `close`: the console's own threads (the supervisor) end at their next wait.
        self.closing = threading.Event()
        #: The engine's outages and the removals to retry, as the supervisor saw them.
        self.engine_watch = EngineWatch()
        self._at_close: list[Callable[[], object]] = []
        self._ensure_policy()

    # --- the sandbox backend -----------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The backend `SEALROOM_BACKEND` names (or the one passed in), built once on first
        use; concurrent first uses build it once."""
        backend = self._backend
        if backend is not None:
            return backend
        with self._backend_lock:
            if self._backend is None:
                self._backend = build_backend(self.settings)
            return self._backend

    @property
    def storage(self) -> SandboxStorage:
        """Where sandboxes' workspaces and outboxes live: the backend's storage. Services
        stage code and read outboxes through it, never through a host path."""
        return self.backend.storage

    @property
    def backend_built(self) -> bool:
        """Whether the backend exists yet (the engine has been, or is about to be, used)."""
        return self._backend is not None

    # --- slow work off the request threads ------------------------------------------------

    def run_in_background(self, key: str, work: Callable[[], None]) -> Future[None]:
        """Run `work` on the console's one background worker, unless work under the same key
        is already queued or running (then that one's future is returned)."""
        with self._background_lock:
            pending = self._background_keys.get(key)
            if pending is not None and not pending.done():
                return pending
            if self._background is None:
                self._background = ThreadPoolExecutor(1, thread_name_prefix="sealroom-bg")
            future = self._background.submit(work)
            self._background_keys[key] = future
            return future

    # --- the active policy ----------------------------------------------------------------

    def _ensure_policy(self) -> None:
        """On a fresh database the shipped default becomes version 1, authored by `system`."""
        from console.models import PolicyVersion

        with self.transaction() as session:
            if session.exec(select(PolicyVersion.version).limit(1)).first() is not None:
                return
            body = default_policy_text()
            row = PolicyVersion(version=1, text=body, sha256=policy_sha256(body),
                                author="system", reason="initial policy (policies/default.yaml)",
                                created_at=utc_now())
            session.add(row)
            append(session, EventDraft(Actor.system(), AuditAction.POLICY_ACTIVATE,
                                       "policy:1", reason=row.reason,
                                       details={"version": 1, "sha256": row.sha256}))

    @property
    def policy(self) -> Policy:
        """The active policy: the highest version in the database, read for every use (so
        every process sees an activation at once) and parsed only when the number changes."""
        # A read, not a transaction: this happens inside writers' transactions too, and must
        # not queue behind their BEGIN IMMEDIATE.
        with self.read_engine.connect() as connection:
            version = connection.execute(
                text("SELECT max(version) FROM policy_version")).scalar_one()
        cached = self._policy_cache
        if cached is not None and cached.version == version:
            return cached
        with self._policy_lock:
            from console.models import PolicyVersion

            with self.read() as session:
                row = session.exec(select(PolicyVersion).order_by(
                    col(PolicyVersion.version).desc()).limit(1)).one()
            policy = load_policy(row.text, row.version)
            self._policy_cache = policy
            return policy

    @property
    def evaluator(self) -> PolicyEvaluator:
        return PolicyEvaluator(self.policy)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write transaction (BEGIN IMMEDIATE): for anything that changes a row or appends
        to the audit chain; writers are serialised."""
        with transaction(self.engine) as session:
            session.info[SIGNER_KEY] = self.audit_checkpoints
            yield session
        # Only after the commit: a rolled-back transaction leaves no checkpoint in the file.
        if pending := session.info.pop(PENDING_KEY, None):
            self.audit_checkpoints.ship(pending)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (BEGIN DEFERRED on a query-only connection): one snapshot,
        no write lock, and any attempt to write raises (`console.db.WriteInReadTransaction`
        or SQLite's "readonly database"). Pages and listings read here."""
        with read(self.read_engine) as session:
            yield session

    def record(self, actor: Actor, action: AuditAction, *, target: str = "",
               outcome: Outcome = Outcome.OK, reason: str = "", request_id: str = "",
               **details: object) -> None:
        """Audit an event that changes no other state (a refusal, a read) in its own transaction."""
        with self.transaction() as session:
            append(session, EventDraft(actor, action, target, outcome, reason, request_id,
                                       dict(details)))

    def secure_files(self) -> list[Repair]:
        """Put every mode and owner under the data directory (and the checkpoints' copy)
        right by `console.files.RULES`, and audit what was wrong; the repairs, for the
        caller to show."""
        extra = [self.settings.audit_checkpoint_dir] if self.settings.audit_checkpoint_dir \
            else []
        repairs = secure_data_dir(self.settings.home, *extra)
        if repairs:
            self.record(Actor.system(), AuditAction.FILES_REPAIR, target="files",
                        home=str(self.settings.home), count=len(repairs),
                        repairs=[str(r) for r in repairs[:_REPAIRS_RECORDED]])
        return repairs

    # --- the release gate's signing key ---------------------------------------------------

    @property
    def key_ring(self) -> GateKeyRing:
        return GateKeyRing(self.settings.home / "keys" / "release")

    def gate_key(self) -> GateSigningKey:
        """The active gate key (made on first use), with the passphrase that unlocks it."""
        passphrase = passphrase_from_env(os.environ, self.settings.home)
        return GateSigningKey(self.key_ring.ensure(passphrase), passphrase)

    def gate_public_pem(self) -> bytes:
        try:
            return self.key_ring.active_public_pem()
        except GateError:
            return self.gate_key().key.public_pem

    def gate_public_keys(self) -> list[PublicKeyInfo]:
        if not self.key_ring.public_keys():
            self.gate_key()
        return self.key_ring.public_keys()

    # --- the audit log's signing key and checkpoints ----------------------------------------

    @property
    def audit_key_ring(self) -> AuditKeyRing:
        return AuditKeyRing(self.settings.home / "keys" / "audit")

    def audit_key(self) -> AuditKey:
        """The active audit key (made on first use); checks the passphrase opens it."""
        return self.audit_key_ring.ensure(passphrase_from_env(os.environ, self.settings.home))

    def _audit_signing_key(self) -> tuple[str, Any]:
        return self.audit_key_ring.private_key(
            passphrase_from_env(os.environ, self.settings.home))

    def audit_public_pem(self) -> bytes:
        """The active audit public key (`GET /api/v1/keys/audit.pem`)."""
        if not self.audit_key_ring.public_keys():
            self.audit_key()
        return self.audit_key_ring.active_public_pem()

    def audit_public_keys(self) -> list[PublicKeyInfo]:
        """Every audit public key, active first, then retired ones (old checkpoints)."""
        if not self.audit_key_ring.public_keys():
            self.audit_key()
        return self.audit_key_ring.public_keys()

    def audit_verifier_keys(self) -> PublicKeys:
        return PublicKeys(k.pem for k in self.audit_public_keys())

    def rotate_audit_key(self) -> AuditKey:
        key = self.audit_key_ring.rotate(passphrase_from_env(os.environ, self.settings.home))
        self.audit_checkpoints.forget_key()
        return key

    def checkpoint_if_due(self, *, force: bool = False) -> Checkpoint | None:
        """Sign the head if it has unsigned events and the last checkpoint is old enough
        (`force`: now); also copy to the checkpoint file any checkpoint it lacks. The
        console's supervisor calls this every pass."""
        with self.transaction() as session:
            checkpoint = self.audit_checkpoints.checkpoint_if_due(session, force=force)
        with self.read_engine.connect() as conn:
            self.audit_checkpoints.ship_missing(conn)
        return checkpoint

    def audit_checkpoint_list(self, *, above: int = 0, limit: int | None = None
                              ) -> list[Checkpoint]:
        """Checkpoints in the database, oldest first (`GET /api/v1/audit/checkpoints`)."""
        from audit.checkpoints import database_checkpoints

        with self.read_engine.connect() as conn:
            found = database_checkpoints(conn, above=above)
        return found[:limit] if limit is not None else found

    def audit_export_lines(self, **filters: Any) -> Iterator[bytes]:
        """The export's JSON lines (`audit.export`); filters: from_id, to_id, since, until."""
        from audit.export import iter_export

        keyids = [k.keyid for k in self.audit_public_keys()]
        return iter_export(self.read_engine, keyids=keyids, **filters)

    def verify_audit(self) -> VerificationReport:
        """The chain status: the database against its checkpoints and the checkpoint file."""
        from audit.verify import verify_database

        return verify_database(self.read_engine, self.audit_verifier_keys(),
                               checkpoint_file=self.settings.audit_checkpoint_file)

    def at_close(self, work: Callable[[], object]) -> None:
        """Run `work` when the installation is closed, while its database is still open:
        the console records there what it holds only in memory (counted refusals)."""
        self._at_close.append(work)

    def close(self) -> None:
        self.closing.set()
        with self._background_lock:
            if self._background is not None:
                self._background.shutdown(wait=True, cancel_futures=True)
                self._background = None
        for work in self._at_close:
            work()
        self.engine.dispose()
        self.read_engine.dispose()


class Caller:
    """Who is asking, for services: the audit actor, the user row id and the request id."""

    __slots__ = ("actor", "user_id", "request_id")

    def __init__(self, actor: Actor, *, user_id: int | None = None, request_id: str = "") -> None:
        self.actor = actor
        self.user_id = user_id
        self.request_id = request_id

    @property
    def name(self) -> str:
        return self.actor.name

    @property
    def role(self) -> str:
        return self.actor.role
