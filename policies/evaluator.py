"""Deny-by-default decisions over a `Policy`, each naming the rule that decided it and the
policy version, so that every audited decision can be traced to the rule that made it."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from policies.schema import ISOLATION_ORDER, EffectiveLimits, Isolation, Policy


@dataclass(frozen=True)
class PolicyDecision:
    allowed: bool
    rule: str
    reason: str
    policy_version: int

    def __bool__(self) -> bool:
        return self.allowed

    def to_dict(self) -> dict[str, object]:
        return {"allowed": self.allowed, "rule": self.rule, "reason": self.reason,
                "policy_version": self.policy_version}


#: What a launch asks for: one sandbox, or an MPI cluster of `ranks` sandboxes.
LaunchKind = Literal["single", "mpi"]
#: One version of a dataset: (name, version number).
DatasetVersion = tuple[str, int]


@dataclass(frozen=True)
class OutputsSource:
    """A finished sandbox whose outputs a launch would mount: whose they are, and every
    dataset version they descend from (its own, its inputs', its project's)."""

    sandbox_id: str
    owner: str
    lineage: tuple[DatasetVersion, ...] = ()


@dataclass(frozen=True)
class ProjectFacts:
    """A project a launch would work in: its owner, and every dataset version any sandbox
    of the project mounted (its workspace may hold derivatives of each)."""

    name: str
    owner: str
    lineage: tuple[DatasetVersion, ...] = ()


@dataclass(frozen=True)
class LaunchRequest:
    """One launch as the policy sees it, whether it is being launched or dry-run again
    under another policy; `ranks` is the number of MPI nodes (1 for a single sandbox)."""

    user: str
    role: str
    datasets: tuple[str, ...]
    cpus: float
    memory_mb: int
    pids: int
    timeout_s: int
    running_sandboxes: int
    image_digest: str = ""
    kind: LaunchKind = "single"
    ranks: int = 1
    gpus: int = 0
    #: The version of each dataset that would be mounted (absent: decided by name only).
    dataset_versions: tuple[DatasetVersion, ...] = ()
    inputs: tuple[OutputsSource, ...] = ()
    project: ProjectFacts | None = None


@dataclass(frozen=True)
class IsolationDecision:
    """The runtime a launch gets (`runc` or `gvisor`) and the rule that chose it."""

    isolation: Isolation
    rule: str
    reason: str
    policy_version: int

    def to_dict(self) -> dict[str, object]:
        return {"isolation": self.isolation, "rule": self.rule, "reason": self.reason,
                "policy_version": self.policy_version}


class PolicyEvaluator:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def _decide(self, allowed: bool, rule: str, reason: str) -> PolicyDecision:
        return PolicyDecision(allowed, rule, reason, self.policy.version)

    # --- datasets and images ------------------------------------------------------------

    def principals(self, user: str, role: str) -> set[str]:
        """Every name a rule may use for this user: the user, the role and the groups."""
        return {user, f"role:{role}", *(f"group:{g}" for g in self.policy.groups_of(user))}

    def may_mount(self, user: str, role: str, dataset: str,
                  version: int | None = None) -> PolicyDecision:
        """Whether `user` may use `dataset` (and, given one, that version of it)."""
        rule = f"datasets.{dataset}.allow"
        entry = self.policy.datasets.get(dataset)
        if entry is not None:
            granted = self.principals(user, role) & set(entry.allow)
            if granted:
                if version is not None and entry.versions and version not in entry.versions:
                    pinned = ", ".join(str(v) for v in entry.versions)
                    return self._decide(False, f"datasets.{dataset}.versions",
                                        f"only version(s) {pinned} of dataset {dataset!r} "
                                        f"may be used, not version {version}")
                return self._decide(True, rule, f"granted to {sorted(granted)[0]}")
        return self._decide(False, rule, f"you are not allowed to use dataset {dataset!r}")

    def pinned_versions(self, dataset: str) -> tuple[int, ...]:
        """The versions of `dataset` the policy pins (empty: any version not retired)."""
        entry = self.policy.datasets.get(dataset)
        return tuple(entry.versions) if entry is not None else ()

    # --- earlier work: inputs and projects ----------------------------------------------

    def _descends_from_allowed(self, user: str, role: str, what: str,
                               lineage: tuple[DatasetVersion, ...]) -> PolicyDecision | None:
        """The refusal if `what` descends from a dataset version `user` may not use."""
        if not self.policy.inputs.require_dataset_grants:
            return None
        for name, version in sorted(set(lineage)):
            decision = self.may_mount(user, role, name, version)
            if not decision:
                return self._decide(False, decision.rule,
                                    f"{what} descends from dataset {name!r} (version "
                                    f"{version}), which you may not use")
        return None

    def may_mount_outputs(self, user: str, role: str, source: OutputsSource) -> PolicyDecision:
        """Whether `user` may mount the outputs of a finished sandbox as an input."""
        inputs = self.policy.inputs
        if not inputs.enabled:
            return self._decide(False, "inputs.enabled",
                                "mounting earlier sandboxes' outputs is turned off")
        if source.owner != user:
            shared = set(inputs.share_groups) & set(self.policy.groups_of(user)) \
                & set(self.policy.groups_of(source.owner))
            if not shared:
                return self._decide(False, "inputs.share_groups",
                                    f"the outputs of {source.sandbox_id} are not yours, and "
                                    "its owner shares no group with you that the policy "
                                    "lets share outputs")
        refusal = self._descends_from_allowed(user, role, f"{source.sandbox_id}",
                                              source.lineage)
        if refusal is not None:
            return refusal
        return self._decide(True, "inputs", "the outputs may be mounted")

    def may_use_project(self, user: str, role: str, project: ProjectFacts) -> PolicyDecision:
        """Whether `user` may work in `project` (its owner, or those it is shared with)."""
        projects = self.policy.projects
        if not projects.enabled:
            return self._decide(False, "projects.enabled", "projects are turned off")
        if project.owner != user:
            rule = projects.shared.get(project.name)
            granted = self.principals(user, role) & set(rule.allow) if rule else set()
            if not granted:
                return self._decide(False, f"projects.shared.{project.name}.allow",
                                    f"project {project.name!r} is not shared with you")
        refusal = self._descends_from_allowed(user, role, f"project {project.name!r}",
                                              project.lineage)
        if refusal is not None:
            return refusal
        return self._decide(True, "projects", "the project may be used")

    def may_create_project(self, user: str, role: str, *, quota_mb: int,
                           owned: int) -> PolicyDecision:
        """Whether `user`, who owns `owned` projects, may create one of `quota_mb`."""
        projects = self.policy.projects
        if not projects.enabled:
            return self._decide(False, "projects.enabled", "projects are turned off")
        if role not in self.policy.launch.roles:
            return self._decide(False, "launch.roles",
                                f"role {role!r} may not launch sandboxes, so has no projects")
        if quota_mb > projects.max_quota_mb:
            return self._decide(False, "projects.max_quota_mb",
                                f"{quota_mb} MB asked, at most {projects.max_quota_mb} MB "
                                "allowed")
        if owned >= projects.max_per_user:
            return self._decide(False, "projects.max_per_user",
                                f"at most {projects.max_per_user} projects per user")
        return self._decide(True, "projects", "within policy")

    def usable_datasets(self, user: str, role: str) -> list[str]:
        return sorted(name for name in self.policy.datasets
                      if self.may_mount(user, role, name))

    def may_use_image(self, digest: str, registered: Collection[str]) -> PolicyDecision:
        images = self.policy.images
        if digest and digest in images.digests:
            return self._decide(True, "images.digests", "the image is listed by digest")
        if digest and images.allow_registered and digest in registered:
            return self._decide(True, "images.allow_registered",
                                "the image was registered by an operator")
        rule = "images.digests" if not images.allow_registered or not digest \
            else "images.allow_registered"
        return self._decide(False, rule, f"image {digest[:19] or '(none)'}… is not allowed "
                                         "by the policy")

    # --- launching ----------------------------------------------------------------------

    def limits_for(self, user: str, role: str) -> EffectiveLimits:
        return self.policy.resources.effective(user, role)

    def may_launch(self, request: LaunchRequest,
                   registered_images: Collection[str] = ()) -> PolicyDecision:
        """Roles, then the image, resources, concurrency and every dataset: the first rule
        that refuses decides."""
        if request.role not in self.policy.launch.roles:
            return self._decide(False, "launch.roles",
                                f"role {request.role!r} may not launch sandboxes")
        if request.image_digest:
            decision = self.may_use_image(request.image_digest, registered_images)
            if not decision:
                return decision
        effective = self.limits_for(request.user, request.role)
        maxima = effective.limits
        checks = (
            ("max_cpus", request.cpus, maxima.max_cpus, "CPUs"),
            ("max_memory_mb", request.memory_mb, maxima.max_memory_mb, "MB of memory"),
            ("max_pids", request.pids, maxima.max_pids, "processes"),
            ("max_timeout_s", request.timeout_s, maxima.max_timeout_s, "seconds of run time"),
            ("max_gpus", request.gpus, maxima.max_gpus, "GPUs"),
            ("max_mpi_nodes", request.ranks, maxima.max_mpi_nodes, "MPI nodes"),
        )
        for key, asked, limit, unit in checks:
            if asked > limit:
                return self._decide(False, effective.rule(key),
                                    f"{asked:g} {unit} asked, at most {limit:g} allowed")
        if request.running_sandboxes >= maxima.max_concurrent:
            return self._decide(False, effective.rule("max_concurrent"),
                                f"at most {maxima.max_concurrent} sandboxes may run at once")
        for dataset in request.datasets:
            decision = self.may_mount(request.user, request.role, dataset)
            if not decision:
                return decision
        for dataset, version in request.dataset_versions:
            decision = self.may_mount(request.user, request.role, dataset, version)
            if not decision:
                return decision
        if len(request.inputs) > self.policy.inputs.max_inputs:
            return self._decide(False, "inputs.max_inputs",
                                f"{len(request.inputs)} inputs asked, at most "
                                f"{self.policy.inputs.max_inputs} allowed")
        for source in request.inputs:
            decision = self.may_mount_outputs(request.user, request.role, source)
            if not decision:
                return decision
        if request.project is not None:
            decision = self.may_use_project(request.user, request.role, request.project)
            if not decision:
                return decision
        return self._decide(True, "launch", "within policy")

    def isolation_for(self, request: LaunchRequest) -> IsolationDecision:
        """The strictest isolation any rule that applies to the launch asks for: the default,
        the user's role, every dataset it mounts and every dataset its inputs and project
        descend from. No rule can weaken another. Of the rules asking for the winning level,
        the most specific is named: a mounted dataset, then one descended from, then the
        role, then the default."""
        datasets = self.policy.datasets
        asked: list[tuple[Isolation, str, str]] = []
        mounted = dict.fromkeys((*request.datasets,
                                 *(name for name, _ in request.dataset_versions)))
        for name in mounted:
            entry = datasets.get(name)
            if entry is not None and entry.isolation != ISOLATION_ORDER[0]:
                asked.append((entry.isolation, f"datasets.{name}.isolation",
                              f"dataset {name!r} requires {entry.isolation}"))
        sources = [(f"input {s.sandbox_id}", s.lineage) for s in request.inputs]
        if request.project is not None:
            sources.append((f"project {request.project.name!r}", request.project.lineage))
        for what, lineage in sources:
            for name in sorted({n for n, _ in lineage}):
                entry = datasets.get(name)
                if entry is not None and entry.isolation != ISOLATION_ORDER[0]:
                    asked.append((entry.isolation, f"datasets.{name}.isolation",
                                  f"{what} descends from dataset {name!r}, which requires "
                                  f"{entry.isolation}"))
        rules = self.policy.isolation
        role = rules.roles.get(request.role)
        if role is not None:
            asked.append((role, f"isolation.roles.{request.role}",
                          f"role {request.role!r} runs under {role}"))
        asked.append((rules.default, "isolation.default",
                      f"sandboxes run under {rules.default} by default"))
        strictest = max(ISOLATION_ORDER.index(level) for level, _, _ in asked)
        level, rule, reason = next(a for a in asked if ISOLATION_ORDER.index(a[0]) == strictest)
        return IsolationDecision(level, rule, reason, self.policy.version)

    def network_for(self, kind: Literal["single", "mpi"]) -> PolicyDecision:
        """The network a sandbox gets: the schema admits exactly one value for each kind."""
        mode = self.policy.network.single if kind == "single" else self.policy.network.mpi
        return self._decide(True, f"network.{kind}", mode)

    # --- disclosure, interactive access, sessions --------------------------------------------

    def disclosure(self, *, sandbox_spent: int, user_day_spent: int,
                   wanted: int) -> tuple[PolicyDecision, int]:
        """How many of `wanted` new bytes a sandbox wrote may be shown to a person, given
        what this sandbox and this user (today) have already been shown. The tighter of the
        two budgets decides, and names its rule; nothing new fits is a denial."""
        budget = self.policy.disclosure
        rooms = (("disclosure.per_sandbox_bytes", budget.per_sandbox_bytes - sandbox_spent),
                 ("disclosure.per_user_daily_bytes",
                  budget.per_user_daily_bytes - user_day_spent))
        rule, room = min(rooms, key=lambda r: r[1])
        if wanted <= 0:
            return self._decide(True, rule, "nothing new to show"), 0
        if room <= 0:
            return self.disclosure_spent(rule), 0
        return self._decide(True, rule, "within the disclosure budget"), min(wanted, room)

    def disclosure_spent(self, rule: str) -> PolicyDecision:
        """The denial for a disclosure budget that cannot pay for what is asked."""
        budget = self.policy.disclosure
        if rule == "disclosure.per_user_daily_bytes":
            return self._decide(False, rule, f"your disclosure budget of "
                                f"{budget.per_user_daily_bytes:,} bytes for today is spent")
        return self._decide(False, "disclosure.per_sandbox_bytes",
                            f"the disclosure budget of {budget.per_sandbox_bytes:,} bytes for "
                            "this sandbox is spent")

    def metrics_room(self, *, shown_points: int, series: int, running_s: float) -> tuple[
            PolicyDecision, int, int]:
        """How many more training-metric points a sandbox that has shown `shown_points` in
        `series` series over `running_s` seconds of its run may show now, and how many more
        series; the decision names the tighter rule."""
        metrics = self.policy.metrics
        if not metrics.enabled:
            return self._decide(False, "metrics.enabled", "training metrics are turned off"), \
                0, 0
        by_rate = metrics.points_per_minute * (1 + int(max(running_s, 0.0)) // 60) - shown_points
        in_all = metrics.max_points - shown_points
        series_room = max(metrics.max_series - series, 0)
        if in_all <= by_rate:
            rule, room = "metrics.max_points", in_all
        else:
            rule, room = "metrics.points_per_minute", by_rate
        if room <= 0:
            return self._decide(False, rule, "no more training metrics may be shown now"), \
                0, series_room
        return self._decide(True, rule, "within the training-metric limits"), room, series_room

    def may_open_ssh(self, user: str, role: str,
                     datasets: Sequence[str] = ()) -> PolicyDecision:
        """Whether `user` may open a terminal in one of their sandboxes that mounts (or
        descends from) `datasets`."""
        interactive = self.policy.interactive
        if not interactive.ssh:
            return self._decide(False, "interactive.ssh", "SSH access is turned off")
        if role not in interactive.roles:
            return self._decide(False, "interactive.roles",
                                f"role {role!r} may not open terminals")
        for name in datasets:
            rule = self.policy.datasets.get(name)
            if rule is not None and not rule.ssh:
                return self._decide(False, f"datasets.{name}.ssh",
                                    f"terminals are not allowed on sandboxes that use "
                                    f"dataset {name!r}")
        return self._decide(True, "interactive.ssh", "SSH access is allowed")

    def terminal_output(self, *, session_bytes: int, minute_bytes: int) -> PolicyDecision:
        """Whether a session that has printed `session_bytes` in all and `minute_bytes` in
        the last minute may go on."""
        interactive = self.policy.interactive
        if session_bytes > interactive.output_per_session_kb << 10:
            return self._decide(False, "interactive.output_per_session_kb",
                                f"this session printed more than "
                                f"{interactive.output_per_session_kb} KB, the most one "
                                "session may print")
        if minute_bytes > interactive.output_per_minute_kb << 10:
            return self._decide(False, "interactive.output_per_minute_kb",
                                f"this session printed more than "
                                f"{interactive.output_per_minute_kb} KB in one minute")
        return self._decide(True, "interactive.output_per_session_kb",
                            "within the terminal output limits")

    def terminal_idle(self, idle_s: float) -> PolicyDecision:
        limit = self.policy.interactive.idle_timeout_s
        if idle_s > limit:
            return self._decide(False, "interactive.idle_timeout_s",
                                f"the terminal was idle for more than {_duration(limit)}")
        return self._decide(True, "interactive.idle_timeout_s", "active")

    def terminal_age(self, age_s: float) -> PolicyDecision:
        limit = self.policy.interactive.session_timeout_s
        if age_s > limit:
            return self._decide(False, "interactive.session_timeout_s",
                                f"terminal sessions end {_duration(limit)} after opening")
        return self._decide(True, "interactive.session_timeout_s", "current")

    def session(self, logged_in_at: float, last_seen_at: float, now: float) -> PolicyDecision:
        sessions = self.policy.sessions
        if now - logged_in_at > sessions.absolute_timeout_s:
            return self._decide(False, "sessions.absolute_timeout_s",
                                f"sessions end {_duration(sessions.absolute_timeout_s)} "
                                "after logging in")
        if now - last_seen_at > sessions.idle_timeout_s:
            return self._decide(False, "sessions.idle_timeout_s",
                                f"sessions end after {_duration(sessions.idle_timeout_s)} "
                                "without activity")
        return self._decide(True, "sessions", "the session is current")


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
