"""The policy document, as validated types: a contradictory document cannot load.

`check_policy` parses YAML text and reports every problem with the line it is on; the
console passes a `PolicyContext` (registered datasets, roles, users) for the checks that
need to know the installation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from policies.errors import InvalidPolicy, PolicyProblem

#: A policy document larger than this is refused unread.
MAX_DOCUMENT_BYTES = 256 * 1024

_NAME = r"[a-z0-9][a-z0-9_-]{0,62}"
_USER = r"[a-z][a-z0-9_.-]{1,31}"
DatasetName = Annotated[str, Field(pattern=rf"^{_NAME}$")]
GroupName = Annotated[str, Field(pattern=rf"^{_NAME}$")]
UserName = Annotated[str, Field(pattern=rf"^{_USER}$")]
RoleName = Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]
#: Who a rule grants: a user name, `role:<role>` or `group:<group>`.
Principal = Annotated[str, Field(pattern=rf"^(role:[a-z_]{{1,32}}|group:{_NAME}|{_USER})$")]
Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
FileType = Annotated[str, Field(pattern=r"^\.[a-z0-9]{1,15}$")]


def _contradiction(field_name: str, message: str) -> PydanticCustomError:
    """A cross-field error that still points at the field (and so the line) at fault."""
    return PydanticCustomError("contradiction", message, {"field": field_name})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- resources ------------------------------------------------------------------------------

RESOURCE_FIELDS = ("max_cpus", "max_memory_mb", "max_pids", "max_timeout_s", "max_concurrent",
                   "max_gpus", "max_mpi_nodes",
                   # disk: the size each sandbox gets, and cannot write past (ENOSPC)
                   "max_workspace_mb", "max_outbox_mb", "max_tmp_mb")

#: Bounds of the disk sizes: ext4 needs a few MB of its own; 1 TiB; /tmp is memory.
_MIN_DISK_MB, _MAX_DISK_MB, _MAX_TMP_MB = 16, 1024 * 1024, 64 * 1024


class ResourceLimits(_Strict):
    """Maxima a launch may ask for; `default` holds every field."""

    max_cpus: float = Field(default=1.0, gt=0, le=256)
    max_memory_mb: int = Field(default=4096, ge=64)
    max_pids: int = Field(default=512, ge=16)
    max_timeout_s: int = Field(default=3600, ge=1)
    max_concurrent: int = Field(default=2, ge=0)
    max_gpus: int = Field(default=0, ge=0, le=64)
    max_mpi_nodes: int = Field(default=1, ge=1, le=256)
    # Disk: every sandbox gets exactly these sizes (a launch does not ask for them).
    max_workspace_mb: int = Field(default=1024, ge=_MIN_DISK_MB, le=_MAX_DISK_MB)
    max_outbox_mb: int = Field(default=256, ge=_MIN_DISK_MB, le=_MAX_DISK_MB)
    max_tmp_mb: int = Field(default=512, ge=1, le=_MAX_TMP_MB)


class ResourceOverride(_Strict):
    """Per role or per user: only the fields given replace the default's."""

    max_cpus: float | None = Field(default=None, gt=0, le=256)
    max_memory_mb: int | None = Field(default=None, ge=64)
    max_pids: int | None = Field(default=None, ge=16)
    max_timeout_s: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=0)
    max_gpus: int | None = Field(default=None, ge=0, le=64)
    max_mpi_nodes: int | None = Field(default=None, ge=1, le=256)
    max_workspace_mb: int | None = Field(default=None, ge=_MIN_DISK_MB, le=_MAX_DISK_MB)
    max_outbox_mb: int | None = Field(default=None, ge=_MIN_DISK_MB, le=_MAX_DISK_MB)
    max_tmp_mb: int | None = Field(default=None, ge=1, le=_MAX_TMP_MB)


@dataclass(frozen=True)
class EffectiveLimits:
    """The maxima that apply to one user, and the rule each one comes from."""

    limits: ResourceLimits
    rules: dict[str, str]

    def rule(self, name: str) -> str:
        return self.rules[name]


class Resources(_Strict):
    default: ResourceLimits = ResourceLimits()
    roles: dict[RoleName, ResourceOverride] = {}
    users: dict[UserName, ResourceOverride] = {}

    def effective(self, user: str, role: str) -> EffectiveLimits:
        """A user's entry wins over their role's, which wins over the default."""
        values = self.default.model_dump()
        rules = {name: f"resources.default.{name}" for name in RESOURCE_FIELDS}
        for section, key in (("roles", role), ("users", user)):
            override = getattr(self, section).get(key)
            if override is None:
                continue
            for name, value in override.model_dump().items():
                if value is not None:
                    values[name] = value
                    rules[name] = f"resources.{section}.{key}.{name}"
        return EffectiveLimits(ResourceLimits.model_validate(values), rules)

    def for_role(self, role: str) -> ResourceLimits:
        return self.effective("", role).limits


# --- the other sections ---------------------------------------------------------------------


#: The kernel a sandbox runs on: `runc` shares the host's kernel (behind namespaces, cgroups,
#: capabilities and seccomp); `gvisor` puts gVisor's user-space kernel between the sandbox and
#: the host's. Listed weakest first: where several rules apply, the strictest wins.
Isolation = Literal["runc", "gvisor"]
ISOLATION_ORDER: tuple[Isolation, ...] = ("runc", "gvisor")


class DatasetRule(_Strict):
    #: Who may mount the dataset; an empty list grants nobody.
    allow: list[Principal] = []
    #: Only these versions (numbers, as registered) may be mounted; empty: every version
    #: not retired. Outputs descending from another version cannot be mounted either.
    versions: list[Annotated[int, Field(ge=1)]] = []
    #: The least isolation any sandbox that mounts the dataset, or descends from it (through
    #: inputs or a project), runs under.
    isolation: Isolation = "runc"
    #: Whether a terminal (the SSH gateway) may open in a sandbox that mounts the dataset.
    ssh: bool = True


class IsolationRules(_Strict):
    """The runtime sandboxes get: the strictest of `default`, the launching user's role's
    entry, and the `isolation` of every dataset the sandbox mounts or descends from."""

    default: Isolation = "runc"
    roles: dict[RoleName, Isolation] = {}


class Inputs(_Strict):
    """Outputs of finished sandboxes mounted read-only into later ones (/inputs/<id>)."""

    enabled: bool = True
    #: Besides its owner, a sandbox's outputs may be mounted by users who share one of
    #: these groups with the owner.
    share_groups: list[GroupName] = []
    #: Outputs of a sandbox only feed sandboxes whose user may use every dataset version
    #: it descends from (through its own datasets, its inputs and its project), so a
    #: derivative of X never reaches someone not granted X.
    require_dataset_grants: bool = True
    max_inputs: int = Field(default=8, ge=0, le=64)


class ProjectRule(_Strict):
    #: Who besides its owner may work in the project.
    allow: list[Principal] = []


class Projects(_Strict):
    """Projects: a named, quota'd workspace that carries over from sandbox to sandbox."""

    enabled: bool = True
    max_quota_mb: int = Field(default=10_240, ge=16)
    max_per_user: int = Field(default=5, ge=0, le=1000)
    #: Projects shared beyond their owner, by name. Sharing gives the project's contents,
    #: which descend from every dataset its sandboxes mounted: the dataset grants still
    #: decide (inputs.require_dataset_grants).
    shared: dict[DatasetName, ProjectRule] = {}


class Images(_Strict):
    #: Every image an operator registered with `sealroom images build` may be used.
    allow_registered: bool = True
    #: Images that may be used whether registered or not, by digest (the engine's image ID).
    digests: list[Digest] = []


class Network(_Strict):
    """Not a choice: single sandboxes have no network, MPI clusters only their own."""

    single: Literal["none"] = "none"
    mpi: Literal["isolated"] = "isolated"


class Interactive(_Strict):
    """Terminals in running sandboxes through the SSH gateway. What a terminal prints is
    sandbox output shown to a person: it spends the disclosure budget too, and these limits
    end a session that prints more."""

    ssh: bool = False
    #: The roles that may open a terminal (in their own sandboxes only).
    roles: list[RoleName] = ["engineer"]
    idle_timeout_s: int = Field(default=900, ge=60, le=86_400)
    #: A session ends this long after it opened, busy or not.
    session_timeout_s: int = Field(default=28_800, ge=60, le=7 * 86_400)
    #: Terminal output one session may print, and in any one minute.
    output_per_session_kb: int = Field(default=512, ge=1, le=67_108_864)
    output_per_minute_kb: int = Field(default=128, ge=1, le=67_108_864)

    @model_validator(mode="before")
    @classmethod
    def _legacy_output_budget(cls, data: Any) -> Any:
        # Policies written before per-minute limits named one per-session budget in MB.
        if isinstance(data, dict) and "output_budget_mb" in data:
            data = dict(data)
            legacy = data.pop("output_budget_mb")
            if isinstance(legacy, int) and not isinstance(legacy, bool):
                data.setdefault("output_per_session_kb", legacy * 1024)
        return data


class Metrics(_Strict):
    """Training curves: numbers a job prints with `sealroom.log_metrics`. Each point shown
    spends the disclosure budget (`bytes_per_point`, and a new series its name's length);
    these caps bound what a run's curves can carry whatever the budget."""

    enabled: bool = True
    #: Points a sandbox may show per minute of its run (and this many at once to start).
    points_per_minute: int = Field(default=600, ge=1, le=1_000_000)
    #: Points one sandbox may show in all, and series (name × rank).
    max_points: int = Field(default=20_000, ge=1, le=1_000_000)
    max_series: int = Field(default=32, ge=1, le=1_000)
    #: What one point (a step and a float64) costs from the disclosure budget.
    bytes_per_point: int = Field(default=16, ge=1, le=1024)


class OutboxDisclosure(_Strict):
    """What the outbox listing may show of what a sandbox wrote there."""

    #: List the outbox (names, sizes) while the sandbox still runs; hashes come only at the end.
    list_while_running: bool = False
    #: A name is shown only if every part of its path matches this whole; else
    #: "file 17 (name withheld)". Shown names spend the disclosure budget.
    name_pattern: str = Field(default=r"[A-Za-z0-9._-]{1,64}", min_length=1, max_length=200)
    max_depth: int = Field(default=3, ge=1, le=16)
    max_entries: int = Field(default=200, ge=1, le=100_000)
    #: Hashing stops, and the outbox is reported over its cap, past these.
    max_hash_mb: int = Field(default=8192, ge=1)
    max_hash_files: int = Field(default=1000, ge=1)

    @model_validator(mode="after")
    def _pattern_compiles(self) -> OutboxDisclosure:
        import re

        try:
            compiled = re.compile(self.name_pattern)
        except re.error as exc:
            raise _contradiction("name_pattern", f"name_pattern is not a regular expression "
                                 f"({exc})") from None
        if compiled.fullmatch("") is not None:
            raise _contradiction("name_pattern", "name_pattern must not match an empty name")
        return self


class Disclosure(_Strict):
    """The disclosure budget: sandbox-written bytes a person may see before a release is
    approved (log text, outbox names, later metrics and terminal output)."""

    #: Per sandbox, over its whole life, every channel together.
    per_sandbox_bytes: int = Field(default=1 << 20, ge=0)
    #: Per user and UTC day, over all their sandboxes.
    per_user_daily_bytes: int = Field(default=4 << 20, ge=0)
    outbox: OutboxDisclosure = OutboxDisclosure()


class Uploads(_Strict):
    max_code_mb: int = Field(default=50, ge=1)
    max_unpacked_mb: int = Field(default=200, ge=1)
    max_files: int = Field(default=2000, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> Uploads:
        if self.max_code_mb > self.max_unpacked_mb:
            raise _contradiction("max_code_mb", f"max_code_mb ({self.max_code_mb}) is larger "
                                 f"than max_unpacked_mb ({self.max_unpacked_mb})")
        return self


class Launch(_Strict):
    #: Roles that may launch sandboxes at all.
    roles: list[RoleName] = []


AttackName = Literal["lira", "worstcase"]


class AttackLimits(_Strict):
    """The most one membership-inference attack may achieve against a model that leaves;
    a figure above its limit fails the check (no limit: the figure is shown, not judged)."""

    #: Area under the attack's ROC curve (0.5: the attack does no better than a coin).
    auc: float | None = Field(default=None, ge=0.5, le=1.0)
    #: Attack advantage (true positive rate minus false positive rate at its best threshold).
    advantage: float | None = Field(default=None, ge=0.0, le=1.0)
    #: True positive rate at a 0.1 % false positive rate (the LiRA paper's headline figure).
    tpr_at_low_fpr: float | None = Field(default=None, ge=0.0, le=1.0)


class ModelRisk(_Strict):
    """Membership-inference attacks (SACRO-ML) the gate runs on each model before it leaves,
    in a sealed sandbox of their own, from the target description the training job wrote
    beside the model (`sealroom.save_target`)."""

    enabled: bool = True
    #: A model without a target description is refused (true) or passes unattacked (false).
    required: bool = False
    attacks: list[AttackName] = ["lira", "worstcase"]
    #: Shadow models LiRA trains: more is slower and steadier.
    shadow_models: int = Field(default=10, ge=2, le=256)
    limits: dict[AttackName, AttackLimits] = {"lira": AttackLimits(auc=0.6),
                                              "worstcase": AttackLimits(auc=0.75)}
    #: The attack run's wall-clock limit; past it the check fails closed.
    timeout_minutes: int = Field(default=30, ge=1, le=24 * 60)

    @model_validator(mode="after")
    def _consistent(self) -> ModelRisk:
        if self.enabled and not self.attacks:
            raise _contradiction("attacks", "model_risk is enabled but lists no attacks")
        if len(set(self.attacks)) != len(self.attacks):
            raise _contradiction("attacks", "model_risk lists an attack twice")
        return self


class Release(_Strict):
    """What may leave through the release gate, and how many approvers must agree."""

    weight_types: list[FileType] = [".safetensors", ".onnx"]
    metrics_types: list[FileType] = [".json", ".csv"]
    allow_pickle: bool = False
    max_file_mb: int = Field(default=2048, ge=1)
    max_total_mb: int = Field(default=4096, ge=1)
    max_metric_values: int = Field(default=1000, ge=1)  # numbers and keys (and CSV columns)
    max_key_length: int = Field(default=64, ge=1, le=1024)
    max_key_depth: int = Field(default=4, ge=1, le=64)
    max_metric_key_bytes: int = Field(default=4096, ge=1)
    #: safetensors `__metadata__`, ONNX doc strings and metadata_props, in all (bytes).
    max_metadata_bytes: int = Field(default=4096, ge=0)
    #: Each tensor, node or value name in a model.
    max_name_length: int = Field(default=128, ge=1, le=4096)
    #: Every string in a model together (names, doc strings, string attributes).
    max_model_strings_bytes: int = Field(default=65536, ge=0)
    small_count_k: int = Field(default=10, ge=1)
    #: Tables declared in metrics files: acro's dominance (n, k) and p% rules, with acro's
    #: defaults (safe_nk_n, safe_nk_k, safe_pratio_p). The threshold is small_count_k.
    dominance_rule: bool = True
    dominance_n: int = Field(default=2, ge=1)
    dominance_k: float = Field(default=0.9, gt=0, le=1)
    p_percent_rule: bool = True
    p_percent: float = Field(default=0.1, gt=0, lt=1)
    leak_scan: bool = True
    leak_min_row_bytes: int = Field(default=16, ge=4)
    approvals_needed: int = Field(default=2, ge=1, le=20)
    model_risk: ModelRisk = ModelRisk()

    @model_validator(mode="after")
    def _consistent(self) -> Release:
        both = sorted(set(self.weight_types) & set(self.metrics_types))
        if both:
            raise _contradiction("metrics_types", f"{', '.join(both)} is listed both as "
                                 "weights and as metrics")
        if self.max_file_mb > self.max_total_mb:
            raise _contradiction("max_file_mb", f"max_file_mb ({self.max_file_mb}) is larger "
                                 f"than max_total_mb ({self.max_total_mb})")
        return self


class Sessions(_Strict):
    idle_timeout_s: int = Field(default=1800, ge=60)
    absolute_timeout_s: int = Field(default=28_800, ge=300, le=7 * 86_400)

    @model_validator(mode="after")
    def _consistent(self) -> Sessions:
        if self.idle_timeout_s > self.absolute_timeout_s:
            raise _contradiction("idle_timeout_s", f"idle_timeout_s ({self.idle_timeout_s}) "
                                 f"is longer than absolute_timeout_s "
                                 f"({self.absolute_timeout_s})")
        return self


class Policy(_Strict):
    #: Assigned by the console when the document is activated; never written in the document.
    version: int = Field(default=0, ge=0)
    groups: dict[GroupName, list[UserName]] = {}
    datasets: dict[DatasetName, DatasetRule] = {}
    images: Images = Images()
    resources: Resources = Resources()
    network: Network = Network()
    interactive: Interactive = Interactive()
    metrics: Metrics = Metrics()
    disclosure: Disclosure = Disclosure()
    uploads: Uploads = Uploads()
    launch: Launch = Launch()
    release: Release = Release()
    sessions: Sessions = Sessions()
    inputs: Inputs = Inputs()
    projects: Projects = Projects()
    isolation: IsolationRules = IsolationRules()

    @model_validator(mode="before")
    @classmethod
    def _logs_moved(cls, data: Any) -> Any:
        """Versions before the disclosure budget had `logs.max_view_bytes`: it becomes
        `disclosure.per_sandbox_bytes` (see `moved_fields`), so old versions still load."""
        if not isinstance(data, dict) or "logs" not in data:
            return data
        data = dict(data)
        logs = data.pop("logs")
        if isinstance(logs, dict) and set(logs) <= {"max_view_bytes"}:
            if "disclosure" in data:
                raise PydanticCustomError(
                    "contradiction", "logs.max_view_bytes was replaced by "
                    "disclosure.per_sandbox_bytes; give only the disclosure section",
                    {"field": "disclosure"})
            if "max_view_bytes" in logs:
                data["disclosure"] = {"per_sandbox_bytes": logs["max_view_bytes"]}
            return data
        data["logs"] = logs  # anything else there is an unknown field, reported as such
        return data

    @model_validator(mode="after")
    def _groups_exist(self) -> Policy:
        for name, rule in self.datasets.items():
            for principal in rule.allow:
                group = principal.removeprefix("group:")
                if principal.startswith("group:") and group not in self.groups:
                    raise PydanticCustomError(
                        "contradiction", "dataset {dataset} allows group {group}, which the "
                        "groups section does not define",
                        {"field": "datasets", "dataset": name, "group": group})
        for group in self.inputs.share_groups:
            if group not in self.groups:
                raise _contradiction("inputs", f"inputs.share_groups names group {group!r}, "
                                     "which the groups section does not define")
        for project, sharing in self.projects.shared.items():
            for principal in sharing.allow:
                group = principal.removeprefix("group:")
                if principal.startswith("group:") and group not in self.groups:
                    raise _contradiction("projects", f"project {project} is shared with group "
                                         f"{group!r}, which the groups section does not "
                                         "define")
        return self

    def groups_of(self, user: str) -> list[str]:
        return sorted(name for name, members in self.groups.items() if user in members)


# --- reading a document ---------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyContext:
    """What the installation knows; `None` skips the checks that need it."""

    datasets: frozenset[str] | None = None  # registered dataset names
    roles: frozenset[str] | None = None
    users: frozenset[str] | None = None  # naming an unknown user is a warning, not an error
    approvers: int | None = None  # active approvers; fewer than approvals_needed warns


@dataclass(frozen=True)
class CheckedPolicy:
    policy: Policy
    text: str
    sha256: str
    warnings: tuple[PolicyProblem, ...] = field(default=())


def policy_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_policy(text: str, context: PolicyContext | None = None) -> CheckedPolicy:
    """Validate a policy document; raise `InvalidPolicy` naming every problem and its line."""
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise InvalidPolicy([PolicyProblem("", f"the document is larger than "
                                               f"{MAX_DOCUMENT_BYTES // 1024} KiB", None)])
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = " ".join(filter(None, (exc.context, exc.problem)))
        raise InvalidPolicy([PolicyProblem("", f"not valid YAML: {detail}",
                                           mark.line + 1 if mark else None)]) from None
    except yaml.YAMLError as exc:
        raise InvalidPolicy([PolicyProblem("", f"not valid YAML: {exc}", None)]) from None
    if root is None:
        raise InvalidPolicy([PolicyProblem("", "the document is empty", 1)])
    if not isinstance(root, yaml.MappingNode):
        raise InvalidPolicy([PolicyProblem("", "a policy is a mapping of sections "
                                               "(datasets:, resources:, release: ...)",
                                           _line(root))])
    problems = list(_structure_problems(root))
    if problems:
        raise InvalidPolicy(problems)
    data = yaml.safe_load(text)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise InvalidPolicy([_problem(root, error) for error in exc.errors()]) from None
    errors, warnings = _context_problems(policy, context or PolicyContext())
    if isinstance(data, dict) and "logs" in data:
        warnings.append((("logs",), "logs.max_view_bytes is now disclosure.per_sandbox_bytes "
                                    "(it covers every channel, not only the log); this "
                                    "document is read that way"))
    interactive = data.get("interactive") if isinstance(data, dict) else None
    if isinstance(interactive, dict) and "output_budget_mb" in interactive:
        warnings.append((("interactive", "output_budget_mb"),
                         "interactive.output_budget_mb is now output_per_session_kb (with "
                         "output_per_minute_kb beside it); this document is read that way"))
    if errors:
        raise InvalidPolicy([_locate(root, path, message) for path, message in errors])
    return CheckedPolicy(policy, text, policy_sha256(text),
                         tuple(_locate(root, path, message) for path, message in warnings))


def load_policy(text: str, version: int = 0) -> Policy:
    """A stored document (validated when it was activated), with its version number."""
    return check_policy(text).policy.model_copy(update={"version": version})


def default_policy_path() -> Path:
    return Path(__file__).with_name("default.yaml")


def default_policy_text() -> str:
    return default_policy_path().read_text()


def load_default_policy() -> Policy:
    return load_policy(default_policy_text(), version=1)


# --- problems and the lines they are on -----------------------------------------------------

Path_ = tuple[str | int, ...]


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _structure_problems(root: yaml.MappingNode) -> Iterator[PolicyProblem]:
    """What pydantic cannot see after YAML has flattened it: repeated keys, aliases, and a
    version written in the document."""
    seen: set[int] = set()

    def walk(node: yaml.Node, path: str, line: int) -> Iterator[PolicyProblem]:
        if id(node) in seen:  # the composer hands back the anchored node for an alias
            yield PolicyProblem(path, "anchors and aliases are not allowed in a policy", line)
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value)
                here = f"{path}.{name}" if path else name
                if name in lines:
                    yield PolicyProblem(here, f"{name} is given twice (first on line "
                                              f"{lines[name]})", _line(key))
                lines.setdefault(name, _line(key))
                yield from walk(value, here, _line(key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                yield from walk(item, f"{path}[{index}]", _line(item))

    for key, _value in root.value:
        if key.value == "version":
            yield PolicyProblem("version", "the version number is assigned when a policy is "
                                           "activated; remove it from the document", _line(key))
    yield from walk(root, "", 1)


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    """(key node, value node) of `part` under `node`; for a list item both are the item."""
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if str(key.value) == part:
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
            and 0 <= part < len(node.value):
        return node.value[part], node.value[part]
    return None


def _node_line(root: yaml.Node, path: Sequence[str | int], *, at_key: bool) -> int:
    node: yaml.Node = root
    key: yaml.Node = root
    for part in path:
        found = _child(node, part)
        if found is None:
            break
        key, node = found
    return _line(key if at_key else node)


def _dotted(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _locate(root: yaml.Node, path: Path_, message: str) -> PolicyProblem:
    return PolicyProblem(_dotted(path), message, _node_line(root, path, at_key=True))


def _problem(root: yaml.Node, error: Any) -> PolicyProblem:
    loc: list[str | int] = [p for p in error["loc"] if p != "[key]"]
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "contradiction":
        extra: list[str | int] = [ctx["field"]]
        if "dataset" in ctx:
            extra += [ctx["dataset"], "allow"]
        loc += extra
    if kind == "extra_forbidden":
        message = f"unknown field {loc[-1]!r}"
    elif kind == "literal_error":
        message = f"must be {ctx.get('expected', 'one of the allowed values')}; " \
                  "nothing else can be chosen"
    elif kind == "string_pattern_mismatch":
        message = f"{error['input']!r} is not a valid {_what(loc)}"
    else:
        message = str(error["msg"]).replace("Input should be", "must be")
    at_key = kind in ("extra_forbidden", "contradiction") or "[key]" in error["loc"]
    return PolicyProblem(_dotted(loc), message, _node_line(root, loc, at_key=at_key))


def _what(loc: Sequence[str | int]) -> str:
    if "allow" in loc:
        return "principal (a user name, role:<role> or group:<group>)"
    if "digests" in loc:
        return "image digest (sha256: and 64 hex digits)"
    if "weight_types" in loc or "metrics_types" in loc:
        return "file type (a dot and up to 15 lower-case letters or digits)"
    if (loc and loc[0] == "groups" and isinstance(loc[-1], int)) or "users" in loc:
        return "user name"
    if "roles" in loc:
        return "role name"
    return "name (lower-case letters, digits, - and _)"


def _context_problems(policy: Policy, context: PolicyContext,
                      ) -> tuple[list[tuple[Path_, str]], list[tuple[Path_, str]]]:
    errors: list[tuple[Path_, str]] = []
    warnings: list[tuple[Path_, str]] = []
    if context.datasets is not None:
        for name in policy.datasets:
            if name not in context.datasets:
                known = ", ".join(sorted(context.datasets)) or "none"
                errors.append((("datasets", name), f"no dataset named {name!r} is registered "
                                                    f"(registered: {known})"))
    roles = context.roles
    if roles is not None:
        for name in policy.resources.roles:
            if name not in roles:
                errors.append((("resources", "roles", name), f"unknown role {name!r}"))
        for index, name in enumerate(policy.launch.roles):
            if name not in roles:
                errors.append((("launch", "roles", index), f"unknown role {name!r}"))
        for name in policy.isolation.roles:
            if name not in roles:
                errors.append((("isolation", "roles", name), f"unknown role {name!r}"))
    for dataset, rule in policy.datasets.items():
        for index, principal in enumerate(rule.allow):
            path: Path_ = ("datasets", dataset, "allow", index)
            if principal.startswith("role:"):
                if roles is not None and principal[5:] not in roles:
                    errors.append((path, f"unknown role {principal[5:]!r}"))
            elif not principal.startswith("group:") and context.users is not None \
                    and principal not in context.users:
                warnings.append((path, f"no user named {principal!r} exists (yet)"))
    if context.users is not None:
        for group, members in policy.groups.items():
            for index, member in enumerate(members):
                if member not in context.users:
                    warnings.append((("groups", group, index),
                                     f"no user named {member!r} exists (yet)"))
        for name in policy.resources.users:
            if name not in context.users:
                warnings.append((("resources", "users", name),
                                 f"no user named {name!r} exists (yet)"))
    needed = policy.release.approvals_needed
    if context.approvers is not None and needed > context.approvers:
        warnings.append((("release", "approvals_needed"),
                         f"{needed} approvals are needed but only {context.approvers} "
                         "approver(s) exist: releases will wait until more are added"))
    # MPI clusters cannot run under gVisor (their ranks share one network namespace): say so
    # where the policy both asks for gVisor and allows clusters.
    cannot = "MPI clusters cannot run under gVisor, so"
    if policy.isolation.default == "gvisor" and any(
            policy.resources.for_role(role).max_mpi_nodes > 1 for role in policy.launch.roles):
        warnings.append((("isolation", "default"), f"every sandbox runs under gVisor; {cannot} "
                                                   "every cluster launch will be refused"))
    for role, level in policy.isolation.roles.items():
        if level == "gvisor" and policy.resources.for_role(role).max_mpi_nodes > 1:
            warnings.append((("isolation", "roles", role),
                             f"role {role!r} runs under gVisor and may launch clusters; "
                             f"{cannot} its cluster launches will be refused"))
    if not policy.images.allow_registered and not policy.images.digests:
        warnings.append((("images",), "no image is allowed: every launch will be refused"))
    if not policy.launch.roles:
        warnings.append((("launch", "roles"), "no role may launch sandboxes"))
    return errors, warnings

