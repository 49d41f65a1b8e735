"""The policy chooses each sandbox's kernel (`isolation: runc | gvisor`) per dataset and per
role: the strictest rule that applies wins, datasets a launch only descends from (through
inputs or a project) count as much as those it mounts, and the decision names its rule."""

from __future__ import annotations

import pytest

from policies.errors import InvalidPolicy
from policies.evaluator import LaunchRequest, OutputsSource, PolicyEvaluator, ProjectFacts
from policies.schema import PolicyContext, check_policy, load_default_policy, load_policy

DOCUMENT = """
datasets:
  demo: {allow: [role:engineer]}
  patients: {allow: [role:engineer], isolation: gvisor}
  open: {allow: [role:engineer], isolation: runc}
launch: {roles: [engineer, analyst]}
"""


def _evaluator(extra: str = "") -> PolicyEvaluator:
    return PolicyEvaluator(load_policy(DOCUMENT + extra, 7))


def _request(**kw: object) -> LaunchRequest:
    base = dict(user="alice", role="engineer", datasets=("demo",), cpus=1.0, memory_mb=1024,
                pids=128, timeout_s=60, running_sandboxes=0)
    base.update(kw)
    return LaunchRequest(**base)  # type: ignore[arg-type]


def test_by_default_sandboxes_run_on_runc_and_the_default_is_named() -> None:
    decision = _evaluator().isolation_for(_request())
    assert (decision.isolation, decision.rule) == ("runc", "isolation.default")
    assert decision.policy_version == 7
    assert decision.to_dict() == {"isolation": "runc", "rule": "isolation.default",
                                  "reason": "sandboxes run under runc by default",
                                  "policy_version": 7}
    default = PolicyEvaluator(load_default_policy())
    assert default.isolation_for(_request()).isolation == "runc"


def test_a_mounted_dataset_that_requires_gvisor_makes_the_sandbox_gvisor() -> None:
    decision = _evaluator().isolation_for(_request(datasets=("demo", "patients")))
    assert (decision.isolation, decision.rule) == ("gvisor", "datasets.patients.isolation")
    assert decision.reason == "dataset 'patients' requires gvisor"


def test_a_dataset_version_counts_as_its_dataset() -> None:
    decision = _evaluator().isolation_for(_request(datasets=(),
                                                   dataset_versions=(("patients", 2),)))
    assert decision.rule == "datasets.patients.isolation"


def test_a_dataset_only_descended_from_counts_too() -> None:
    evaluator = _evaluator()
    source = OutputsSource("sb-earlier", "alice", (("demo", 1), ("patients", 3)))
    decision = evaluator.isolation_for(_request(inputs=(source,)))
    assert (decision.isolation, decision.rule) == ("gvisor", "datasets.patients.isolation")
    assert decision.reason == ("input sb-earlier descends from dataset 'patients', which "
                               "requires gvisor")
    project = ProjectFacts("proj", "alice", (("patients", 1),))
    decision = evaluator.isolation_for(_request(project=project))
    assert decision.rule == "datasets.patients.isolation"
    assert decision.reason.startswith("project 'proj' descends from dataset 'patients'")
    clean = OutputsSource("sb-clean", "alice", (("demo", 1),))
    assert evaluator.isolation_for(_request(inputs=(clean,))).isolation == "runc"


def test_a_role_may_require_gvisor_and_the_default_may_too() -> None:
    evaluator = _evaluator("isolation: {roles: {analyst: gvisor}}\n")
    analyst = evaluator.isolation_for(_request(role="analyst"))
    assert (analyst.isolation, analyst.rule) == ("gvisor", "isolation.roles.analyst")
    assert analyst.reason == "role 'analyst' runs under gvisor"
    assert evaluator.isolation_for(_request()).rule == "isolation.default"
    strict = _evaluator("isolation: {default: gvisor}\n").isolation_for(_request())
    assert (strict.isolation, strict.rule) == ("gvisor", "isolation.default")


def test_the_strictest_rule_wins_and_nothing_weakens_it() -> None:
    # A role or dataset saying runc does not undo a gVisor requirement from elsewhere.
    evaluator = _evaluator("isolation: {default: gvisor, roles: {engineer: runc}}\n")
    decision = evaluator.isolation_for(_request(datasets=("open",)))
    assert (decision.isolation, decision.rule) == ("gvisor", "isolation.default")
    evaluator = _evaluator("isolation: {roles: {engineer: runc}}\n")
    decision = evaluator.isolation_for(_request(datasets=("open", "patients")))
    assert (decision.isolation, decision.rule) == ("gvisor", "datasets.patients.isolation")
    # Where runc wins, the role's own entry is named before the default.
    decision = evaluator.isolation_for(_request(datasets=("open",)))
    assert (decision.isolation, decision.rule) == ("runc", "isolation.roles.engineer")


def test_the_mounted_dataset_is_named_before_the_role_and_the_default() -> None:
    evaluator = _evaluator("isolation: {default: gvisor, roles: {engineer: gvisor}}\n")
    decision = evaluator.isolation_for(_request(datasets=("patients",)))
    assert decision.rule == "datasets.patients.isolation"


@pytest.mark.parametrize("text, where", [
    ("datasets:\n  d: {allow: [bob], isolation: kata}\n", "datasets.d.isolation"),
    ("isolation: {default: firecracker}\n", "isolation.default"),
    ("isolation: {roles: {engineer: vm}}\n", "isolation.roles.engineer"),
    ("isolation: {users: {bob: gvisor}}\n", "isolation.users"),
])
def test_only_runc_and_gvisor_can_be_chosen(text: str, where: str) -> None:
    with pytest.raises(InvalidPolicy) as raised:
        check_policy(text)
    assert [p.path for p in raised.value.problems] == [where]


def test_an_unknown_role_is_an_error_where_roles_are_known() -> None:
    text = "isolation: {roles: {wizard: gvisor}}\n"
    check_policy(text)  # without context: the shape is right
    with pytest.raises(InvalidPolicy) as raised:
        check_policy(text, PolicyContext(roles=frozenset({"engineer"})))
    (problem,) = raised.value.problems
    assert (problem.path, problem.line) == ("isolation.roles.wizard", 1)
    assert "unknown role 'wizard'" in problem.message


def test_asking_for_gvisor_where_clusters_are_allowed_warns_that_they_will_be_refused() -> None:
    clusters = "resources: {roles: {engineer: {max_mpi_nodes: 4}}}\nlaunch: {roles: [engineer]}\n"
    role = check_policy(clusters + "isolation: {roles: {engineer: gvisor}}\n")
    assert [(w.path, w.message) for w in role.warnings] == [(
        "isolation.roles.engineer", "role 'engineer' runs under gVisor and may launch "
        "clusters; MPI clusters cannot run under gVisor, so its cluster launches will be "
        "refused")]
    default = check_policy(clusters + "isolation: {default: gvisor}\n")
    assert [w.path for w in default.warnings] == ["isolation.default"]
    assert "every cluster launch" in default.warnings[0].message
    assert check_policy(clusters).warnings == ()
    assert check_policy("launch: {roles: [engineer]}\nisolation: {default: gvisor}\n").warnings \
        == ()
