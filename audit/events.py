"""Audit event vocabulary: actions as `scope:resource:action`, outcomes, actors.

One enumeration names every action the product records, as Warehouse does for its events.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class AuditAction(enum.StrEnum):
    # auth
    LOGIN = "auth:session:login"
    LOGOUT = "auth:session:logout"
    REQUEST_DENIED = "auth:request:deny"
    # admin
    USER_CREATE = "admin:user:create"
    USER_PASSWORD_SET = "admin:user:set_password"
    TOKEN_CREATE = "admin:token:create"
    TOKEN_REVOKE = "admin:token:revoke"
    USER_DEACTIVATE = "admin:user:deactivate"  # sessions and tokens stop working at once
    USER_ACTIVATE = "admin:user:activate"
    DATASET_REGISTER = "admin:dataset:register"
    DATASET_GRANT = "admin:dataset:grant"
    DATASET_RETIRE = "admin:dataset:retire"
    DATASET_REMOVE = "system:dataset:remove_files"
    DATASET_VIEW = "admin:dataset:view"
    PROJECT_CREATE = "sandbox:project:create"
    PROJECT_DELETE = "sandbox:project:delete"
    LINEAGE_VIEW = "sandbox:lineage:view"
    # sandboxes
    SANDBOX_LAUNCH = "sandbox:sandbox:launch"
    SANDBOX_START = "sandbox:sandbox:start"
    SANDBOX_STOP = "sandbox:sandbox:stop"
    SANDBOX_EXIT = "sandbox:sandbox:exit"
    SANDBOX_OOM = "sandbox:sandbox:oom"
    SANDBOX_TIMEOUT = "sandbox:sandbox:timeout"
    SANDBOX_LOST = "sandbox:sandbox:lost"
    SANDBOX_VIEW = "sandbox:sandbox:view"
    SANDBOX_LABEL = "sandbox:sandbox:label"  # its owner renamed it or changed its tags
    CODE_UPLOAD = "sandbox:code:upload"
    LOGS_VIEW = "sandbox:logs:view"
    METRICS_VIEW = "sandbox:metrics:view"  # training metrics read from the log and shown
    METRICS_DROP = "sandbox:metrics:drop"  # metric lines or points not kept, counted by reason
    OUTBOX_VIEW = "sandbox:outbox:view"
    OUTBOX_HASH = "sandbox:outbox:hash"
    DISCLOSURE_VIEW = "policy:disclosure:view"
    # releases
    RELEASE_REQUEST = "release:request:create"
    RELEASE_CHECKS = "release:request:check"
    RELEASE_MODEL_RISK = "release:request:model-risk"  # the attacks on a model, judged
    RELEASE_APPROVE = "release:request:approve"
    RELEASE_REJECT = "release:request:reject"
    RELEASE_WITHDRAW = "release:request:withdraw"
    RELEASE_SEAL = "release:bundle:seal"
    RELEASE_DOWNLOAD = "release:bundle:download"
    RELEASE_VIEW = "release:request:view"
    RELEASE_FILE_VIEW = "release:file:view"  # a rendered view of a file under review
    KEY_ROTATE = "admin:key:rotate"
    # the SSH gateway
    SSH_KEY_ADD = "account:ssh_key:add"
    SSH_KEY_REMOVE = "account:ssh_key:remove"
    SSH_AUTH = "auth:ssh:authenticate"  # a key refused (accepted keys open a session)
    SSH_REFUSE = "sandbox:terminal:refuse"  # a forwarding, exec, sftp, env... request refused
    SSH_OPEN = "sandbox:terminal:open"  # a shell opened (or refused: no sandbox, policy)
    SSH_END = "sandbox:terminal:end"  # ended; its recording's hash enters the chain here
    SSH_RECORDING_VIEW = "audit:recording:view"  # an auditor replayed a session
    SSH_GATEWAY_START = "system:ssh_gateway:start"
    # system
    CONSOLE_START = "system:console:start"
    FILES_REPAIR = "system:files:repair"  # wrong modes under the data directory put right
    ORPHAN_REMOVE = "system:container:remove_orphan"
    CONTAINER_REMOVE = "system:container:remove"  # a removal retried once the engine answered
    ENGINE_DOWN = "system:engine:down"
    ENGINE_UP = "system:engine:up"
    IMAGE_REGISTER = "system:image:register"
    AUDIT_VERIFY = "audit:chain:verify"
    # audit review ("audit the auditors")
    AUDIT_VIEW = "audit:event:view"
    AUDIT_EXPORT = "audit:event:export"
    AUDIT_CHECKPOINT = "audit:checkpoint:create"
    KEY_VIEW = "admin:key:view"
    # any other served request (the console's completeness net)
    REQUEST_SERVE = "console:request:serve"
    # listings that matter
    SANDBOX_LIST = "sandbox:sandbox:list"
    RELEASE_LIST = "release:request:list"
    # policies
    POLICY_VIEW = "policy:policy:view"
    POLICY_VALIDATE = "policy:policy:validate"
    POLICY_DRY_RUN = "policy:policy:dry_run"
    POLICY_ACTIVATE = "policy:policy:activate"
    POLICY_RESTORE = "policy:policy:restore"
    POLICY_DECIDE = "policy:decision:deny"


class Outcome(enum.StrEnum):
    OK = "ok"
    DENIED = "denied"
    FAILED = "failed"


@dataclass(frozen=True)
class Actor:
    """Who did it: a user (with role, auth method and source address) or the system."""

    name: str
    role: str = ""
    auth_method: str = ""
    source: str = ""

    @classmethod
    def system(cls, component: str = "console") -> Actor:
        return cls(name="system", role="system", auth_method=component)

    @classmethod
    def anonymous(cls, source: str = "") -> Actor:
        return cls(name="anonymous", source=source)


@dataclass(frozen=True)
class EventDraft:
    """An event before it is chained: what the caller knows."""

    actor: Actor
    action: AuditAction
    target: str = ""
    outcome: Outcome = Outcome.OK
    reason: str = ""
    request_id: str = ""
    details: dict[str, Any] = field(default_factory=dict)
