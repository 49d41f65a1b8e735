"""Console state tables: users, API tokens, datasets, images, sandboxes (with the console's
copy of their logs, their outbox manifests and the disclosure ledger), release requests and
the policy's versions. Who may use a dataset is policy, not a table here."""

from __future__ import annotations

import enum

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from audit.models import AuditEvent  # noqa: F401  (one metadata for Alembic)


class Role(enum.StrEnum):
    ENGINEER = "engineer"
    APPROVER = "approver"
    SECURITY_OFFICER = "security_officer"
    AUDITOR = "auditor"
    ADMIN = "admin"


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    role: str
    password_hash: str
    active: bool = True  # an inactive user's sessions and tokens are refused at once
    created_at: str
    #: Raised when the password changes or the user is deactivated: a console session
    #: carries the number it began under, and one from an older number is ended.
    session_epoch: int = 0


class ApiToken(SQLModel, table=True):
    """A bearer token for /api/v1: only its hash is kept. It works until it expires or is
    revoked, and only while its user is active."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    prefix: str = Field(index=True)
    token_hash: str = Field(unique=True)
    created_at: str
    name: str = ""  # what its owner calls it ("laptop", "ci")
    expires_at: str  # every token expires (UTC, the same ISO form as created_at)
    last_used_at: str | None = None  # to the minute: updated at most once a minute
    revoked_at: str | None = None
    revoked_by: str = ""


class Dataset(SQLModel, table=True):
    """One version of a dataset: registering under an existing name adds the next version.
    A retired version takes no new mounts; its files go once no running sandbox uses them."""

    __table_args__ = (UniqueConstraint("name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    version: int = 1
    path: str
    digest: str
    size_bytes: int
    files: int
    registered_by: str
    created_at: str
    retired_at: str | None = None
    removed_at: str | None = None  # its files were deleted (after it was retired)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class SandboxStatus(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    #: Someone asked for the stop (audited then); it ends as STOPPED with that stop's
    #: reason, whoever records the end (`console.services.sandboxes.finish`).
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    OOM_KILLED = "oom_killed"
    TIMED_OUT = "timed_out"
    STOPPED = "stopped"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self not in LIVE_STATUSES


#: The statuses of a sandbox that still holds the engine's containers, its volumes, its
#: datasets and its place in the concurrency cap.
LIVE_STATUSES = (SandboxStatus.STARTING, SandboxStatus.RUNNING, SandboxStatus.STOPPING)


class Sandbox(SQLModel, table=True):
    id: str = Field(primary_key=True)
    owner_id: int = Field(foreign_key="user.id", index=True)
    owner: str = Field(index=True)
    status: str = Field(index=True)
    image: str
    image_digest: str
    command: str
    datasets: str  # JSON list of {name, version, digest}
    code_digest: str
    code_name: str
    spec: str  # JSON of SandboxSpec.to_dict()
    kind: str = "single"  # what was launched: "single", or "mpi": a cluster of `ranks` MPI nodes
    ranks: int = 1
    gpus: int = 0
    cpus: float
    memory_mb: int
    pids: int
    timeout_s: int
    #: The backend's own state of the sandbox (JSON; opaque here): its members, its network.
    backend_state: str = "{}"
    #: Each member's last observed status, as the supervisor saw it (JSON list of
    #: {name, state, exit_code}): the backend's names and states, the console's words.
    members: str = "[]"
    exit_code: int | None = None
    reason: str = ""
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    #: Earlier sandboxes whose outputs are mounted under /inputs (JSON list of
    #: {sandbox, owner, digest}); `sandbox_input` holds the same edges for lookups.
    inputs: str = "[]"
    #: The project whose workspace this sandbox works in, and the sandbox before it there.
    project: str = Field(default="", index=True)
    project_parent: str = ""
    #: Every dataset version this sandbox's outputs descend from: its own, its inputs' and
    #: its project's (JSON list of {name, version, digest}).
    lineage: str = "[]"
    #: What the engineer calls the run, and their labels for it (JSON list, sorted): typed
    #: into the console by the owner, never written by the sandbox (`console.services.labels`).
    name: str = ""
    tags: str = "[]"


class SandboxInput(SQLModel, table=True):
    """One edge of the lineage graph: `sandbox_id` mounted the outputs of `source_id`."""

    __tablename__ = "sandbox_input"

    sandbox_id: str = Field(primary_key=True, foreign_key="sandbox.id")
    source_id: str = Field(primary_key=True, foreign_key="sandbox.id", index=True)


class Project(SQLModel, table=True):
    """A named, quota'd workspace carried from sandbox to sandbox, one running at a time."""

    name: str = Field(primary_key=True)
    owner_id: int = Field(foreign_key="user.id", index=True)
    owner: str = Field(index=True)
    quota_mb: int
    created_at: str
    #: Every dataset version any sandbox of the project mounted or descended from (JSON
    #: list of {name, version, digest}): what its workspace may hold derivatives of.
    lineage: str = "[]"
    last_sandbox: str = ""  # the latest sandbox launched in the project


class Image(SQLModel, table=True):
    """A sandbox image this installation may run, pinned by digest (the engine's image ID)."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    tag: str
    digest: str = Field(unique=True)
    registered_at: str


class ReleaseStatus(enum.StrEnum):
    SUBMITTED = "submitted"
    CHECKS_FAILED = "checks_failed"
    IN_REVIEW = "in_review"
    APPROVED = "approved"  # enough approvals; sealing under way (resumed after a crash)
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    RELEASED = "released"

    @property
    def open(self) -> bool:
        return self in (ReleaseStatus.SUBMITTED, ReleaseStatus.IN_REVIEW)


class ReleaseRequest(SQLModel, table=True):
    __tablename__ = "release_request"

    id: str = Field(primary_key=True)
    sandbox_id: str = Field(foreign_key="sandbox.id", index=True)
    requester: str = Field(index=True)
    status: str = Field(index=True)
    justification: str
    approvals_needed: int
    policy_version: int
    checks: str = "{}"  # JSON CheckReport
    reason: str = ""  # rejection or withdrawal reason
    bundle_path: str = ""
    bundle_keyid: str = ""
    created_at: str
    updated_at: str
    released_at: str | None = None


class ReleaseFile(SQLModel, table=True):
    __tablename__ = "release_file"

    id: int | None = Field(default=None, primary_key=True)
    release_id: str = Field(foreign_key="release_request.id", index=True)
    name: str  # the path in the outbox: the file's name in the signed bundle
    #: What people see before the release: the name if the policy lets it be shown, else
    #: "file 17 (name withheld)".
    label: str = ""
    size: int
    sha256: str


class ReleaseDecision(SQLModel, table=True):
    """One approver's approval or rejection; an approver approves a request at most once."""

    __tablename__ = "release_decision"
    __table_args__ = (UniqueConstraint("release_id", "approver", "decision"),)

    id: int | None = Field(default=None, primary_key=True)
    release_id: str = Field(foreign_key="release_request.id", index=True)
    approver: str
    decision: str  # "approve" or "reject"
    reason: str = ""
    created_at: str


class PolicyVersion(SQLModel, table=True):
    """One activated policy document. Append-only: the highest version is the active one,
    and restoring an old version activates its text again as a new version."""

    __tablename__ = "policy_version"

    version: int = Field(primary_key=True)
    text: str
    sha256: str = Field(index=True)
    author: str
    reason: str
    created_at: str  # when it was activated
    restored_from: int | None = None


class SandboxLog(SQLModel, table=True):
    """The console's own copy of a sandbox's log (`sandboxes/<id>/log.txt`). Positions never
    move: the engine rotating its log cannot make old positions show new bytes."""

    __tablename__ = "sandbox_log"

    sandbox_id: str = Field(primary_key=True, foreign_key="sandbox.id")
    cursor: str = ""  # the backend's position after the last byte copied
    base: int = 0  # position of the first byte still kept (older bytes were dropped)
    size: int = 0  # position after the last byte copied
    complete: bool = False  # the sandbox has ended and its log was copied to the end


class OutboxManifest(SQLModel, table=True):
    """What a sandbox left in its outbox, listed and hashed once after it ended."""

    __tablename__ = "outbox_manifest"

    sandbox_id: str = Field(primary_key=True, foreign_key="sandbox.id")
    state: str  # "ready" or "over_cap"
    items: str  # JSON list of OutboxItem fields (real paths: never shown unfiltered)
    truncated: bool = False
    entries: int = 0
    detail: str = ""  # which cap, in the console's words
    created_at: str


class DisclosureItem(SQLModel, table=True):
    """One piece of sandbox-written content shown to a person, counted once: a block of the
    log, or one outbox name. Re-showing it spends nothing; the sums are the budgets' use."""

    __tablename__ = "disclosure_item"
    __table_args__ = (UniqueConstraint("sandbox_id", "channel", "item"),)

    id: int | None = Field(default=None, primary_key=True)
    sandbox_id: str = Field(index=True)
    user: str = Field(index=True)
    day: str = Field(index=True)  # UTC date of the first showing
    channel: str  # "log" or "outbox_name"
    item: str  # the block number, or a hash of the name
    bytes: int
    created_at: str


class SshKey(SQLModel, table=True):
    """A public key its owner may open terminals with through the SSH gateway. Removing a
    key keeps the row (sessions name it) and stops it working at once."""

    __tablename__ = "ssh_key"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    name: str = ""  # what its owner calls it ("laptop")
    algorithm: str  # "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa", ...
    bits: int
    #: "SHA256:" and the unpadded base64 of the key blob's SHA-256, as OpenSSH prints it.
    fingerprint: str = Field(unique=True, index=True)
    public_key: str  # "<algorithm> <base64>" (the comment is not kept)
    created_at: str
    last_used_at: str | None = None
    removed_at: str | None = None


class TerminalSession(SQLModel, table=True):
    """One SSH session into a sandbox member: who, where, why it ended, what it printed, and
    its recording (asciicast v2) with the hash the audit chain holds for it."""

    __tablename__ = "terminal_session"

    id: str = Field(primary_key=True)  # "ssh-" and 16 hex digits
    user: str = Field(index=True)
    sandbox_id: str = Field(index=True)
    member: str  # "main", "rank-1"
    key_fingerprint: str
    source: str = ""  # the client's address
    started_at: str
    ended_at: str | None = None
    end_reason: str = ""  # in the console's words
    end_rule: str = ""  # the policy rule that ended it, if one did
    bytes_out: int = 0  # terminal output the client was sent (spent from the ledger)
    bytes_in: int = 0  # keystrokes the client sent
    recording: str  # its file name in the installation's recordings directory
    recording_sha256: str = ""
    recording_bytes: int = 0


class MetricStream(SQLModel, table=True):
    """How far the console has read a sandbox's training-metric lines (a position in its log
    copy), what it kept and what it dropped (counts by reason)."""

    __tablename__ = "metric_stream"

    sandbox_id: str = Field(primary_key=True, foreign_key="sandbox.id")
    position: int = 0  # the log position after the last line read
    points: int = 0  # points kept (and paid for)
    series: int = 0  # distinct (rank, name) kept
    dropped: str = "{}"  # JSON: reason -> count
    total_steps: int | None = None  # as the job declared it
    spent: int = 0  # bytes of the disclosure budget these points cost


class MetricPoint(SQLModel, table=True):
    """One training-metric point a sandbox's job printed and the console kept and paid for."""

    __tablename__ = "metric_point"

    id: int | None = Field(default=None, primary_key=True)
    sandbox_id: str = Field(index=True, foreign_key="sandbox.id")
    rank: int
    name: str
    step: int
    value: float
