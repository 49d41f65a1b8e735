"""Launching a sandbox, as steps: parse the order, decide under the active policy, stage the
code, create the container, record the sandbox with its audit events, start it.

A launch may build on earlier work: exact dataset versions, the outputs of finished
sandboxes mounted read-only (inputs), and a project whose workspace carries over; the policy
decides on all of them with the lineage they carry (`console.services.lineage`).

One policy version decides the whole launch. Every refusal is audited (`refusals`); a
failure before the row exists leaves no row, no directories and no container. The policy's
dry run decides about running sandboxes with the same `ParsedLaunch.request` and `judge`.
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from audit.chain import append, utc_now
from audit.errors import AuditWriteFailed
from audit.events import AuditAction, EventDraft, Outcome
from console.core import Caller, Sealroom
from console.models import LIVE_STATUSES, Image, Sandbox, SandboxInput, SandboxStatus, User
from console.services import dataset_versions as versions_service
from console.services import labels, sandboxes
from console.services import lineage as lineage_service
from console.services.auditing import refusals
from console.services.errors import (
    AuditUnavailable,
    BadRequest,
    Conflict,
    EngineDown,
    PayloadTooLarge,
    PolicyDenied,
    ServiceError,
)
from console.services.images import current_image
from policies.evaluator import (
    DatasetVersion,
    IsolationDecision,
    LaunchKind,
    LaunchRequest,
    OutputsSource,
    PolicyDecision,
    PolicyEvaluator,
    ProjectFacts,
)
from policies.schema import Policy, Uploads
from sandbox import spec as sandbox_spec
from sandbox.backend import BackendState
from sandbox.errors import EngineUnavailable, InvalidSpec, InvalidUpload, SandboxError
from sandbox.files import UploadLimits
from sandbox.projects import ProjectFull, ProjectNotFound
from sandbox.storage import SandboxStorage

log = logging.getLogger(__name__)

EXAMPLES = Path(sandbox_spec.__file__).with_name("examples")
DEFAULT_COMMAND = "python train.py"
KINDS: tuple[LaunchKind, ...] = ("single", "mpi")
#: The image each kind runs (by its logical name).
IMAGE_FOR: dict[LaunchKind, str] = {"single": "base", "mpi": "horovod"}


@dataclass
class LaunchOrder:
    """What an engineer asked for, parsed by a view."""

    datasets: list[str]
    example: str | None = None
    code_name: str = ""
    code: bytes | None = None
    command: str = DEFAULT_COMMAND
    cpus: float = 1.0
    memory_mb: int = 2048
    pids: int = 256
    timeout_s: int = 1800
    gpus: int = 0
    kind: str = "single"
    ranks: int = 1  # MPI nodes of a cluster
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Finished sandboxes whose outputs are mounted read-only under /inputs.
    inputs: list[str] = field(default_factory=list)
    #: The project whose workspace the sandbox works in ("": a fresh workspace).
    project: str = ""
    #: Run `command` by the image's shell (`/bin/sh -c COMMAND`: `cd`, `&&`, pipes,
    #: variables); otherwise it is split into a program and its arguments, with no shell.
    shell: bool = False
    #: What the engineer calls the run, and their tags for it (`console.services.labels`).
    name: str = ""
    tags: list[str] = field(default_factory=list)


#: The shell a shell command runs under (every sandbox image has it; the hardening lets it run).
SHELL = "/bin/sh"
#: Words that mean a shell is wanted: builtins a program cannot be, and unquoted operators.
SHELL_BUILTINS = frozenset({"cd", "export", "source", ".", "set", "unset", "alias", "ulimit",
                            "umask", "exec", "eval", "for", "while", "if"})
SHELL_OPERATORS = frozenset({"&&", "||", "|", ";", ">", ">>", "<", "2>", "2>&1", "&"})


def command_of(order: LaunchOrder) -> tuple[str, ...]:
    """The argv the sandbox runs: `sh -c COMMAND` for a shell command, else the command split
    like a shell would split it (quotes respected) but run with no shell. A plain command
    that needs a shell is refused with how to ask for one, instead of failing in the sandbox
    (`exec cd failed`)."""
    if order.shell:
        if not order.command.strip():
            raise BadRequest("the command must not be empty")
        return (SHELL, "-c", order.command)
    try:
        command = tuple(shlex.split(order.command))
    except ValueError as exc:
        raise BadRequest(f"invalid launch request: {exc}") from exc
    if not command:
        raise BadRequest("the command must not be empty")
    needs = command[0] if command[0] in SHELL_BUILTINS else next(
        (word for word in command if word in SHELL_OPERATORS), None)
    if needs is not None:
        raise BadRequest(f"{needs!r} needs a shell, and a plain command runs with none: "
                         "choose a shell command (sh -c) to run it")
    return command


def examples() -> list[str]:
    return sorted(p.name for p in EXAMPLES.iterdir() if (p / "train.py").is_file())


# --- the values passed from step to step ----------------------------------------------------


@dataclass(frozen=True)
class LaunchFacts:
    """What a launch builds on, as the policy must see it: the dataset versions it mounts,
    the outputs it reads and the project it works in, each with its lineage."""

    dataset_versions: tuple[DatasetVersion, ...] = ()
    inputs: tuple[OutputsSource, ...] = ()
    project: ProjectFacts | None = None


@dataclass(frozen=True)
class ParsedLaunch:
    """A valid order: what to run, on which datasets, with which limits."""

    datasets: tuple[str, ...]  # each once, in the order asked
    command: tuple[str, ...]
    limits: sandbox_spec.Limits
    kind: LaunchKind = "single"
    ranks: int = 1
    gpus: int = 0
    example: str | None = None
    code_name: str = ""
    code: bytes | None = None
    extra_env: tuple[tuple[str, str], ...] = ()
    #: Versions asked for by number (`name@3`); other datasets get their newest usable one.
    versions: tuple[tuple[str, int], ...] = ()
    inputs: tuple[str, ...] = ()
    project: str = ""
    name: str = ""
    tags: tuple[str, ...] = ()
    #: What it builds on, once resolved (`decide`), or as recorded (`of_sandbox`).
    facts: LaunchFacts = LaunchFacts()

    def request(self, user: str, role: str, *, running: int,
                image_digest: str) -> LaunchRequest:
        """The launch as the policy sees it: the one way a `LaunchRequest` is made."""
        limits, facts = self.limits, self.facts
        return LaunchRequest(user=user, role=role, datasets=self.datasets, cpus=limits.cpus,
                             memory_mb=limits.memory_mb, pids=limits.pids,
                             timeout_s=limits.timeout_s, running_sandboxes=running,
                             image_digest=image_digest, kind=self.kind, ranks=self.ranks,
                             gpus=self.gpus, dataset_versions=facts.dataset_versions,
                             inputs=facts.inputs, project=facts.project)

    @classmethod
    def of_sandbox(cls, record: Sandbox, project_owner: str = "") -> ParsedLaunch:
        """A launched sandbox as the order it was launched from (for a policy dry run)."""
        kind: LaunchKind = "mpi" if record.kind == "mpi" else "single"
        datasets = json.loads(record.datasets)
        inputs = tuple(OutputsSource(i["sandbox"], i["owner"], tuple(
            (d["name"], int(d["version"])) for d in i.get("lineage", [])))
            for i in json.loads(record.inputs))
        project = ProjectFacts(record.project, project_owner or record.owner,
                               lineage_service.versions_of(record.lineage)) \
            if record.project else None
        return cls(datasets=tuple(d["name"] for d in datasets),
                   command=tuple(shlex.split(record.command)),
                   limits=sandbox_spec.Limits(cpus=record.cpus, memory_mb=record.memory_mb,
                                              pids=record.pids, timeout_s=record.timeout_s),
                   kind=kind, ranks=record.ranks, gpus=record.gpus,
                   inputs=tuple(i.sandbox_id for i in inputs), project=record.project,
                   facts=LaunchFacts(tuple((d["name"], int(d.get("version", 1)))
                                           for d in datasets), inputs, project))


@dataclass(frozen=True)
class Decision:
    """An allowed launch and the facts it was decided on."""

    image: Image
    mounts: tuple[sandbox_spec.DatasetMount, ...]
    rule: str
    policy_version: int
    network: str  # the network plan the policy gives this kind of launch
    #: The mounted dataset versions, each {name, version, digest}.
    versions: tuple[dict[str, object], ...] = ()
    inputs: tuple[sandbox_spec.InputMount, ...] = ()
    facts: LaunchFacts = LaunchFacts()
    #: Every dataset version the new sandbox's outputs descend from ({name, version, digest}).
    lineage: tuple[dict[str, object], ...] = ()
    project_parent: str = ""
    #: The limits the sandbox runs with: those asked for, and the policy's disk sizes.
    limits: sandbox_spec.Limits = sandbox_spec.Limits()
    #: The runtime the policy's isolation gives the sandbox, and the rule that chose it.
    runtime: sandbox_spec.Runtime = sandbox_spec.Runtime.RUNC
    isolation_rule: str = ""


@dataclass(frozen=True)
class Staged:
    """The sandbox's workspace and outbox exist in storage, with its code in the workspace."""

    sandbox_id: str
    code_name: str
    code_digest: str


# --- launch ---------------------------------------------------------------------------------


def launch(core: Sealroom, caller: Caller, order: LaunchOrder) -> Sandbox:
    """Launch a sandbox; every refusal is audited and leaves nothing behind."""
    policy = core.policy  # one version decides the whole launch, and is recorded
    with refusals(core, caller, AuditAction.SANDBOX_LAUNCH, "sandbox:",
                  policy_version=policy.version, datasets=order.datasets,
                  unrecorded="the audit log cannot be written; nothing was launched"):
        parsed = parse(order, policy)
        decision = decide(core, caller, parsed, policy)
        _require_engine(core)
        sandbox_id = "sb-" + secrets.token_hex(6)
        state: BackendState = {}
        try:
            staged = stage(core.storage, sandbox_id, parsed, policy.uploads, decision.limits)
            spec = spec_for(caller.name, parsed, decision, staged)
            state = create(core, spec)
            record(core, caller, parsed, decision, staged, spec, state)
        except BaseException as exc:
            _discard(core, sandbox_id, state)  # fail closed: no row, so no container, no files
            refusal = _refusal(exc)
            if refusal is None:
                raise
            raise refusal from exc
        return start(core, caller, sandbox_id, state)


def audit_refused_launch(core: Sealroom, caller: Caller, reason: str) -> None:
    """Record a launch refused before it could be parsed into an order."""
    core.record(caller.actor, AuditAction.SANDBOX_LAUNCH, target="sandbox:",
                outcome=Outcome.DENIED, reason=reason, request_id=caller.request_id)


# --- the steps ------------------------------------------------------------------------------


def parse(order: LaunchOrder, policy: Policy) -> ParsedLaunch:
    """Check the order on its own (and the upload's size): nothing is read or written."""
    run_name, tags = labels.parse_name(order.name), labels.parse_tags(order.tags)
    if not order.datasets:
        raise BadRequest("choose a dataset")
    command = command_of(order)
    try:
        limits = sandbox_spec.Limits(cpus=order.cpus, memory_mb=order.memory_mb,
                                     pids=order.pids, timeout_s=order.timeout_s)
    except (ValueError, InvalidSpec) as exc:
        raise BadRequest(f"invalid launch request: {exc}") from exc
    if order.example is None and order.code is None:
        raise BadRequest("upload a script or a zip of code, or pick the bundled example")
    if order.example is not None and order.example not in examples():
        raise BadRequest(f"unknown example {order.example!r}")
    if order.gpus < 0:
        raise BadRequest("limits.gpus must not be negative")
    kind = _kind(order.kind)
    if order.ranks < 1:
        raise BadRequest("ranks must be at least 1")
    if kind == "single" and order.ranks != 1:
        raise BadRequest("a single sandbox has one rank; ask for kind 'mpi' for more")
    if kind == "mpi" and not 2 <= order.ranks <= sandbox_spec.MAX_RANKS:
        raise BadRequest(f"an MPI cluster has 2 to {sandbox_spec.MAX_RANKS} ranks")
    uploads = policy.uploads
    if order.code is not None and len(order.code) > uploads.max_code_mb * 1024 * 1024:
        raise PayloadTooLarge(f"the upload is larger than {uploads.max_code_mb} MB",
                              rule="uploads.max_code_mb")
    chosen: dict[str, int | None] = {}
    for name, version in map(versions_service.parse_choice, order.datasets):
        if chosen.get(name, version) != version:
            raise BadRequest(f"dataset {name!r} may be mounted only once (one version)")
        chosen[name] = version
    names = tuple(chosen)
    versions = {name: version for name, version in chosen.items() if version is not None}
    inputs = tuple(dict.fromkeys(i.strip() for i in order.inputs if i.strip()))
    for source in inputs:
        if not sandbox_spec.valid_sandbox_id(source):
            raise BadRequest(f"{source[:80]!r} is not a sandbox id")
    if len(inputs) > sandbox_spec.MAX_INPUTS:
        raise BadRequest(f"at most {sandbox_spec.MAX_INPUTS} inputs")
    project = order.project.strip()
    if project and not sandbox_spec.valid_sandbox_id(project):
        raise BadRequest(f"{project[:80]!r} is not a project name")
    return ParsedLaunch(datasets=names, command=command,
                        limits=limits, kind=kind, ranks=order.ranks, gpus=order.gpus,
                        example=order.example, code_name=order.code_name, code=order.code,
                        extra_env=tuple(sorted(order.extra_env.items())),
                        versions=tuple(sorted(versions.items())), inputs=inputs,
                        project=project, name=run_name, tags=tags)


def _kind(value: str) -> LaunchKind:
    for kind in KINDS:
        if value == kind:
            return kind
    raise BadRequest(f"kind must be 'single' or 'mpi', not {value[:40]!r}")


def judge(evaluator: PolicyEvaluator, parsed: ParsedLaunch, user: str, role: str, *,
          running: int, image_digest: str, registered: Collection[str]) -> PolicyDecision:
    """The policy's decision on a parsed launch, given the facts it depends on."""
    return evaluator.may_launch(
        parsed.request(user, role, running=running, image_digest=image_digest), registered)


def decide(core: Sealroom, caller: Caller, parsed: ParsedLaunch, policy: Policy) -> Decision:
    """Read what the decision depends on once, and ask `policy`; refuse what this
    installation cannot run yet even where the policy would allow it."""
    image = current_image(core, IMAGE_FOR[parsed.kind])
    if image is None:
        raise EngineDown(f"no {IMAGE_FOR[parsed.kind]} sandbox image is installed; an "
                         "operator must run 'sealroom images build'")
    evaluator = PolicyEvaluator(policy)
    asked = dict(parsed.versions)
    with core.transaction() as session:
        mounts = []
        versions: list[dict[str, object]] = []
        for name in parsed.datasets:
            dataset = versions_service.resolve(session, name, asked.get(name),
                                              evaluator.pinned_versions(name))
            mounts.append(sandbox_spec.DatasetMount(name, Path(dataset.path), dataset.digest))
            versions.append({"name": name, "version": dataset.version,
                             "digest": dataset.digest})
        built_on = lineage_service.built_on(session, parsed.inputs, parsed.project)
        running = len(session.exec(select(Sandbox.id).where(Sandbox.owner == caller.name).where(
            col(Sandbox.status).in_(LIVE_STATUSES))).all())
        registered = set(session.exec(select(Image.digest)).all())
    facts = LaunchFacts(tuple((str(v["name"]), int(str(v["version"]))) for v in versions),
                        built_on.sources, built_on.project)
    parsed = replace(parsed, facts=facts)
    decision = judge(evaluator, parsed, caller.name, caller.role, running=running,
                     image_digest=image.digest, registered=registered)
    if not decision:
        raise PolicyDenied(decision.reason, rule=decision.rule,
                           policy_version=decision.policy_version)
    # A single sandbox has network mode "none", a cluster only its own loopback; the schema
    # admits no other value, and the plan's name is recorded with the launch.
    network = evaluator.network_for(parsed.kind)
    if parsed.gpus and not _host_has_gpus(core):
        raise BadRequest("this installation has no GPUs to give sandboxes",
                         rule=decision.rule)
    maxima = evaluator.limits_for(caller.name, caller.role).limits
    limits = replace(parsed.limits, workspace_mb=maxima.max_workspace_mb,
                     outbox_mb=maxima.max_outbox_mb, tmp_mb=maxima.max_tmp_mb)
    isolation = evaluator.isolation_for(
        parsed.request(caller.name, caller.role, running=running, image_digest=image.digest))
    return Decision(image=image, mounts=tuple(mounts), rule=decision.rule,
                    policy_version=decision.policy_version, network=network.reason,
                    versions=tuple(versions), inputs=built_on.mounts, facts=facts,
                    lineage=lineage_service.union(versions, built_on.lineage),
                    project_parent=built_on.project_parent, limits=limits,
                    runtime=_runtime_for(core, parsed.kind, isolation),
                    isolation_rule=isolation.rule)


def _runtime_for(core: Sealroom, kind: LaunchKind,
                 isolation: IsolationDecision) -> sandbox_spec.Runtime:
    """The runtime the policy's isolation asks for, where this installation can give it."""
    runtime = sandbox_spec.Runtime(isolation.isolation)
    if runtime is sandbox_spec.Runtime.RUNC:
        return runtime
    needs = f"this launch must run under gVisor ({isolation.reason})"
    if kind == "mpi":
        # Each member would get a gVisor kernel and loopback of its own: ranks sharing the
        # launcher's network namespace could not reach each other (docs/threat-model.md).
        raise BadRequest(f"{needs}, and MPI clusters cannot run under gVisor here",
                         rule=isolation.rule, policy_version=isolation.policy_version)
    with _engine_answering():
        available = core.backend.runtimes()
    if runtime not in available:
        raise EngineDown(f"{needs}, and the container engine has no gVisor runtime (runsc); "
                         "an operator must install and register it "
                         "(images/host/ensure-host.sh)",
                         rule=isolation.rule, policy_version=isolation.policy_version)
    return runtime


@contextmanager
def _engine_answering() -> Iterator[None]:
    try:
        yield
    except EngineUnavailable as exc:
        raise EngineDown("the container engine is not available; try again later",
                         detail=exc.detail) from exc


def _host_has_gpus(core: Sealroom) -> bool:
    with _engine_answering():
        return core.backend.supports_gpus()


def _require_engine(core: Sealroom) -> None:
    with _engine_answering():
        core.backend.ping()


def stage(storage: SandboxStorage, sandbox_id: str, parsed: ParsedLaunch,
          uploads: Uploads, limits: sandbox_spec.Limits) -> Staged:
    """Make the sandbox's workspace and outbox, of the sizes in `limits`, and put its code
    in the workspace (and the project's, for a sandbox of a project), handed to the sandbox
    user. The caller discards the storage if this fails."""
    storage.create(sandbox_id, limits)
    if parsed.example is not None:
        code_digest = storage.stage_tree(sandbox_id, EXAMPLES / parsed.example)
        code_name = f"example:{parsed.example}"
    else:
        assert parsed.code is not None
        code_digest = storage.stage_upload(sandbox_id, parsed.code_name, parsed.code,
                                           UploadLimits(uploads.max_code_mb << 20,
                                                        uploads.max_unpacked_mb << 20,
                                                        uploads.max_files))
        code_name = parsed.code_name
    storage.seal_staging(sandbox_id)
    if parsed.project:
        storage.stage_into_project(sandbox_id, parsed.project)
    return Staged(sandbox_id, code_name, code_digest)


def spec_for(owner: str, parsed: ParsedLaunch, decision: Decision,
             staged: Staged) -> sandbox_spec.SandboxSpec:
    """What the backend is asked to create (pure data; an invalid spec is `InvalidSpec`)."""
    sandbox_id = staged.sandbox_id
    return sandbox_spec.SandboxSpec(
        sandbox_id=sandbox_id, owner=owner, image=decision.image.digest,
        command=parsed.command, datasets=decision.mounts, limits=decision.limits,
        ranks=parsed.ranks, gpus=parsed.gpus, inputs=decision.inputs,
        project=parsed.project, runtime=decision.runtime,
        network=(sandbox_spec.NetworkPlan.MEMBERS_ONLY if parsed.kind == "mpi"
                 else sandbox_spec.NetworkPlan.NONE),
        env=(("SEALROOM_SANDBOX", sandbox_id),
             ("SEALROOM_DATA", decision.mounts[0].target),
             ("SEALROOM_OUTBOX", sandbox_spec.OUTBOX),
             *((("SEALROOM_INPUTS", sandbox_spec.INPUTS_ROOT),) if decision.inputs else ()),
             *((("SEALROOM_PROJECT", parsed.project),) if parsed.project else ()),
             *parsed.extra_env))


def create(core: Sealroom, spec: sandbox_spec.SandboxSpec) -> BackendState:
    """Create the sandbox in the engine (not started); the backend's state of it."""
    return core.backend.create(spec)


def require_room(core: Sealroom, session: Session, caller: Caller) -> None:
    """The concurrency cap, counted again inside the write transaction that inserts the
    sandbox: `decide` counted in an earlier one, so launches decided at the same moment
    could all have seen room. Writers are serialised (BEGIN IMMEDIATE), so this count and
    the insert are one step. The active policy's cap applies."""
    policy = core.policy
    effective = PolicyEvaluator(policy).limits_for(caller.name, caller.role)
    cap = effective.limits.max_concurrent
    running = len(session.exec(select(Sandbox.id).where(Sandbox.owner == caller.name).where(
        col(Sandbox.status).in_(LIVE_STATUSES))).all())
    if running >= cap:
        raise PolicyDenied(f"at most {cap} sandboxes may run at once",
                           rule=effective.rule("max_concurrent"), policy_version=policy.version)


def record(core: Sealroom, caller: Caller, parsed: ParsedLaunch, decision: Decision,
           staged: Staged, spec: sandbox_spec.SandboxSpec, state: BackendState) -> None:
    """Insert the sandbox, STARTING, with its code upload and launch events, in one
    transaction."""
    sandbox_id, limits, image = spec.sandbox_id, parsed.limits, decision.image
    with core.transaction() as session:
        owner = session.exec(select(User).where(User.name == caller.name)).one()
        assert owner.id is not None
        # Decided on in an earlier read; checked again where the row is written.
        versions_service.require_mountable(session, decision.versions)
        require_room(core, session, caller)
        if parsed.project:
            lineage_service.claim_project(session, parsed.project, sandbox_id,
                                          decision.project_parent, decision.lineage)
        session.add(Sandbox(
            id=sandbox_id, owner_id=owner.id, owner=caller.name,
            status=SandboxStatus.STARTING, image=image.tag, image_digest=image.digest,
            command=shlex.join(spec.command),
            datasets=json.dumps(list(decision.versions)),
            code_digest=staged.code_digest, code_name=staged.code_name,
            spec=json.dumps(spec.to_dict()), kind=parsed.kind, ranks=parsed.ranks,
            gpus=parsed.gpus, cpus=limits.cpus, memory_mb=limits.memory_mb,
            pids=limits.pids, timeout_s=limits.timeout_s, backend_state=json.dumps(state),
            created_at=utc_now(), inputs=json.dumps(inputs_json(decision)),
            project=parsed.project, project_parent=decision.project_parent,
            lineage=json.dumps(list(decision.lineage)), name=parsed.name,
            tags=json.dumps(list(parsed.tags))))
        session.flush()  # the edges reference the row
        for mount in decision.inputs:
            session.add(SandboxInput(sandbox_id=sandbox_id, source_id=mount.sandbox_id))
        append(session, EventDraft(
            caller.actor, AuditAction.CODE_UPLOAD, f"sandbox:{sandbox_id}",
            request_id=caller.request_id,
            details={"code": staged.code_name, "digest": staged.code_digest}))
        append(session, EventDraft(
            caller.actor, AuditAction.SANDBOX_LAUNCH, f"sandbox:{sandbox_id}",
            request_id=caller.request_id,
            details={"spec": spec.to_dict(), "image_digest": image.digest,
                     "code_digest": staged.code_digest, "rule": decision.rule,
                     "policy_version": decision.policy_version,
                     "network": decision.network,
                     "isolation": {"runtime": str(decision.runtime),
                                   "rule": decision.isolation_rule},
                     "datasets": list(decision.versions),
                     **({"inputs": inputs_json(decision)}
                        if decision.inputs else {}),
                     **({"project": parsed.project,
                         "project_parent": decision.project_parent}
                        if parsed.project else {}),
                     "lineage": list(decision.lineage),
                     **({"name": parsed.name} if parsed.name else {}),
                     **({"tags": list(parsed.tags)} if parsed.tags else {})}))


def start(core: Sealroom, caller: Caller, sandbox_id: str, state: BackendState) -> Sandbox:
    """Start the created sandbox; it is RUNNING, or FAILED if it cannot start."""
    try:
        core.backend.start(state)
    except SandboxError as exc:
        sandboxes.finish(core, sandbox_id, SandboxStatus.FAILED, AuditAction.SANDBOX_START,
                         f"the sandbox could not start: {exc.user_message}",
                         outcome=Outcome.FAILED)
        raise EngineDown(f"the sandbox could not start: {exc.user_message}",
                         detail=exc.detail) from exc
    with core.transaction() as session:
        started = session.get(Sandbox, sandbox_id)
        assert started is not None
        if started.status == SandboxStatus.STARTING:
            started.status = SandboxStatus.RUNNING
            started.started_at = utc_now()
            session.add(started)
            append(session, EventDraft(caller.actor, AuditAction.SANDBOX_START,
                                       f"sandbox:{sandbox_id}", request_id=caller.request_id))
    return started


def inputs_json(decision: Decision) -> list[dict[str, Any]]:
    """The inputs as recorded with the sandbox: whose they were, what they held, and the
    dataset versions they descend from (for a later policy's dry run)."""
    digests = {m.sandbox_id: m.digest for m in decision.inputs}
    return [{"sandbox": s.sandbox_id, "owner": s.owner, "digest": digests[s.sandbox_id],
             "lineage": [{"name": n, "version": v} for n, v in s.lineage]}
            for s in decision.facts.inputs]


def _refusal(exc: BaseException) -> ServiceError | None:
    """What a failure while staging, creating or recording tells the caller."""
    if isinstance(exc, InvalidUpload | InvalidSpec):
        return BadRequest(exc.user_message)
    if isinstance(exc, ProjectFull):
        return Conflict(f"{exc.user_message}: make room in it from a sandbox of the project, "
                        "or use another project", detail=exc.detail)
    if isinstance(exc, ProjectNotFound):
        return BadRequest(exc.user_message)
    if isinstance(exc, EngineUnavailable):
        return EngineDown("the container engine is not available; try again later",
                          detail=exc.detail)
    if isinstance(exc, SandboxError):
        return EngineDown(f"the sandbox could not be created: {exc.user_message}",
                          detail=exc.detail)
    if isinstance(exc, AuditWriteFailed):
        # The sandbox was created but never started; it went with the row.
        return AuditUnavailable("the audit log cannot be written; the sandbox was not "
                                "launched", detail=str(exc))
    return None


def _discard(core: Sealroom, sandbox_id: str, state: BackendState) -> None:
    if state:
        try:
            core.backend.remove(state)
        except SandboxError:
            log.warning("could not remove the containers of %s; the reconciler will",
                        sandbox_id)
    core.storage.discard(sandbox_id)
