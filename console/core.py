"""The running system the services work on: settings, database, backend and policy."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlmodel import Session

from audit.chain import append
from audit.events import Actor, AuditAction, EventDraft, Outcome
from console.db import make_engine, transaction, upgrade
from console.settings import Settings
from policies.evaluator import PolicyEvaluator
from policies.schema import Policy, load_default_policy
from sandbox.backend import Backend
from sandbox.gate.errors import GateError
from sandbox.gate.keys import GateKey, GateKeyRing, PublicKeyInfo, passphrase_from_env


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
                 policy: Policy | None = None, migrate: bool = True) -> None:
        self.settings = settings
        settings.ensure_dirs()
        if migrate:
            upgrade(settings.database_url)
        self.engine = make_engine(settings.database_url)
        if backend is None:
            from sandbox.docker_backend import DockerBackend

            backend = DockerBackend(base_url=settings.docker_host,
                                    installation=settings.installation_id())
        self.backend = backend
        self.policy = policy or load_default_policy()

    @property
    def evaluator(self) -> PolicyEvaluator:
        return PolicyEvaluator(self.policy)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with transaction(self.engine) as session:
            yield session

    def record(self, actor: Actor, action: AuditAction, *, target: str = "",
               outcome: Outcome = Outcome.OK, reason: str = "", request_id: str = "",
               **details: object) -> None:
        """Audit an event that changes no other state (a refusal, a read) in its own transaction."""
        with self.transaction() as session:
            append(session, EventDraft(actor, action, target, outcome, reason, request_id,
                                       dict(details)))

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

    def close(self) -> None:
        self.engine.dispose()


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
