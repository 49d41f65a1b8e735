"""The policy schema refuses bad documents; the evaluator denies by default and names rules."""

from __future__ import annotations

import pytest

from policies.errors import InvalidPolicy
from policies.evaluator import DatasetGrant, LaunchRequest, PolicyEvaluator
from policies.schema import load_default_policy, load_policy


def _request(**kw: object) -> LaunchRequest:
    base = dict(user="alice", role="engineer", datasets=("demo",), cpus=1.0, memory_mb=1024,
                pids=128, timeout_s=60, running_sandboxes=0)
    base.update(kw)
    return LaunchRequest(**base)  # type: ignore[arg-type]


GRANTS = [DatasetGrant("demo", "role:engineer"), DatasetGrant("secret", "bob")]


def test_default_policy_loads() -> None:
    assert load_default_policy().version >= 1


@pytest.mark.parametrize("text, fragment", [
    ("version: 1\nresources: [", "not valid YAML"),
    ("version: 1\nbogus: 3\n", "bogus"),
    ("version: 1\nresources:\n  default:\n    max_cpus: -1\n", "max_cpus"),
    ("- a list\n", "mapping"),
])
def test_bad_documents_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(InvalidPolicy, match=fragment):
        load_policy(text)


def test_within_limits_is_allowed() -> None:
    decision = PolicyEvaluator(load_default_policy()).may_launch(_request(), GRANTS)
    assert decision.allowed and decision.policy_version == 1


@pytest.mark.parametrize("change, rule", [
    ({"cpus": 99.0}, "resources.roles.engineer.max_cpus"),
    ({"memory_mb": 10**6}, "resources.roles.engineer.max_memory_mb"),
    ({"timeout_s": 10**6}, "resources.roles.engineer.max_timeout_s"),
    ({"pids": 10**5}, "resources.roles.engineer.max_pids"),
    ({"running_sandboxes": 4}, "resources.roles.engineer.max_concurrent"),
    ({"datasets": ("secret",)}, "datasets.secret.allow"),
    ({"datasets": ("unknown",)}, "datasets.unknown.allow"),
    ({"role": "auditor"}, "launch.roles"),
])
def test_denials_name_the_rule(change: dict[str, object], rule: str) -> None:
    decision = PolicyEvaluator(load_default_policy()).may_launch(_request(**change), GRANTS)
    assert not decision.allowed
    assert decision.rule == rule


def test_user_grant_is_personal() -> None:
    evaluator = PolicyEvaluator(load_default_policy())
    assert evaluator.may_mount("bob", "engineer", "secret", GRANTS)
    assert not evaluator.may_mount("alice", "engineer", "secret", GRANTS)
