"""Deny-by-default decisions over a `Policy`, each naming the rule that decided it."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from policies.schema import Policy


@dataclass(frozen=True)
class PolicyDecision:
    allowed: bool
    rule: str
    reason: str
    policy_version: int

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class LaunchRequest:
    user: str
    role: str
    datasets: tuple[str, ...]
    cpus: float
    memory_mb: int
    pids: int
    timeout_s: int
    running_sandboxes: int


@dataclass(frozen=True)
class DatasetGrant:
    """Who may mount a dataset: `principal` is a user name or `role:<role>`."""

    dataset: str
    principal: str


class PolicyEvaluator:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def _decide(self, allowed: bool, rule: str, reason: str) -> PolicyDecision:
        return PolicyDecision(allowed, rule, reason, self.policy.version)

    def may_mount(self, user: str, role: str, dataset: str,
                  grants: Collection[DatasetGrant]) -> PolicyDecision:
        for grant in grants:
            if grant.dataset == dataset and grant.principal in (user, f"role:{role}"):
                return self._decide(True, f"datasets.{dataset}.allow",
                                    f"granted to {grant.principal}")
        return self._decide(False, f"datasets.{dataset}.allow",
                            f"you are not allowed to use dataset {dataset!r}")

    def may_launch(self, request: LaunchRequest,
                   grants: Collection[DatasetGrant]) -> PolicyDecision:
        if request.role not in self.policy.launch.roles:
            return self._decide(False, "launch.roles",
                                f"role {request.role!r} may not launch sandboxes")
        maxima = self.policy.resources.for_role(request.role)
        rule = f"resources.roles.{request.role}" if request.role in self.policy.resources.roles \
            else "resources.default"
        checks = (
            ("max_cpus", request.cpus, maxima.max_cpus, "CPUs"),
            ("max_memory_mb", request.memory_mb, maxima.max_memory_mb, "MB of memory"),
            ("max_pids", request.pids, maxima.max_pids, "processes"),
            ("max_timeout_s", request.timeout_s, maxima.max_timeout_s, "seconds of run time"),
        )
        for key, asked, limit, unit in checks:
            if asked > limit:
                return self._decide(False, f"{rule}.{key}",
                                    f"{asked:g} {unit} asked, at most {limit:g} allowed")
        if request.running_sandboxes >= maxima.max_concurrent:
            return self._decide(False, f"{rule}.max_concurrent",
                                f"at most {maxima.max_concurrent} sandboxes may run at once")
        for dataset in request.datasets:
            decision = self.may_mount(request.user, request.role, dataset, grants)
            if not decision:
                return decision
        return self._decide(True, "launch", "within policy")
