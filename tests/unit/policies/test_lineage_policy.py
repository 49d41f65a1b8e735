"""The policy decides about work that builds on work: which dataset versions may be mounted,
whose outputs may be mounted as inputs (never a derivative of a dataset to someone not
granted it, however long the chain), and who may create and work in a project."""

from __future__ import annotations

import pytest

from policies.errors import InvalidPolicy
from policies.evaluator import LaunchRequest, OutputsSource, PolicyEvaluator, ProjectFacts
from policies.schema import Policy, check_policy, load_policy

DOCUMENT = """
groups:
  team: [alice, bob, dave]
  cardio: [carol]
datasets:
  demo: {allow: [role:engineer]}
  secret: {allow: [alice, group:cardio], versions: [2, 3]}
launch: {roles: [engineer]}
inputs: {share_groups: [team]}
projects:
  max_quota_mb: 512
  max_per_user: 2
  shared: {shared-proj: {allow: [bob]}}
"""


def _evaluator(extra: str = "") -> PolicyEvaluator:
    return PolicyEvaluator(load_policy(DOCUMENT + extra, 4))


def _request(**kw: object) -> LaunchRequest:
    base = dict(user="alice", role="engineer", datasets=("demo",), cpus=1.0, memory_mb=1024,
                pids=128, timeout_s=60, running_sandboxes=0)
    base.update(kw)
    return LaunchRequest(**base)  # type: ignore[arg-type]


def test_a_grant_covers_every_version_unless_the_policy_pins_some() -> None:
    evaluator = _evaluator()
    assert evaluator.may_mount("bob", "engineer", "demo", 9)
    assert evaluator.may_mount("alice", "engineer", "secret", 2)
    refused = evaluator.may_mount("alice", "engineer", "secret", 1)
    assert (refused.allowed, refused.rule) == (False, "datasets.secret.versions")
    assert "only version(s) 2, 3" in refused.reason
    assert evaluator.pinned_versions("secret") == (2, 3)
    assert evaluator.pinned_versions("demo") == ()
    # a user not granted at all hears about the grant, not about versions
    assert evaluator.may_mount("bob", "engineer", "secret", 2).rule == "datasets.secret.allow"


def test_a_launch_is_decided_on_the_exact_versions() -> None:
    evaluator = _evaluator()
    decision = evaluator.may_launch(_request(datasets=("secret",),
                                             dataset_versions=(("secret", 1),)))
    assert (decision.allowed, decision.rule) == (False, "datasets.secret.versions")
    assert evaluator.may_launch(_request(datasets=("secret",),
                                         dataset_versions=(("secret", 3),)))


def test_ones_own_outputs_may_be_mounted() -> None:
    source = OutputsSource("sb-a", "alice", (("secret", 2),))
    assert _evaluator().may_mount_outputs("alice", "engineer", source)


def test_a_group_member_may_mount_outputs_only_of_data_they_are_granted() -> None:
    evaluator = _evaluator()
    plain = OutputsSource("sb-a", "alice", (("demo", 1),))
    assert evaluator.may_mount_outputs("bob", "engineer", plain)
    derived = OutputsSource("sb-a", "alice", (("demo", 1), ("secret", 2)))
    refused = evaluator.may_mount_outputs("bob", "engineer", derived)
    assert (refused.allowed, refused.rule) == (False, "datasets.secret.allow")
    assert refused.reason == ("sb-a descends from dataset 'secret' (version 2), which you "
                              "may not use")


def test_outputs_of_someone_sharing_no_group_are_refused() -> None:
    refused = _evaluator().may_mount_outputs(
        "carol", "engineer", OutputsSource("sb-a", "alice", (("demo", 1),)))
    assert (refused.allowed, refused.rule) == (False, "inputs.share_groups")
    assert "alice" not in refused.reason  # the owner's name is not told


def test_a_chain_of_two_carries_the_dataset_along() -> None:
    """sb-a read secret; sb-b (alice's, on demo) mounted sb-a: sb-b's lineage holds secret,
    so bob, who shares alice's group but is not granted secret, cannot mount sb-b."""
    evaluator = _evaluator()
    sb_b = OutputsSource("sb-b", "alice", (("demo", 1), ("secret", 2)))
    refused = evaluator.may_launch(_request(user="bob", inputs=(sb_b,)))
    assert (refused.allowed, refused.rule) == (False, "datasets.secret.allow")


def test_the_grant_rule_can_be_turned_off_and_inputs_turned_off() -> None:
    source = OutputsSource("sb-a", "alice", (("secret", 2),))
    open_ = PolicyEvaluator(load_policy(DOCUMENT.replace(
        "inputs: {share_groups: [team]}",
        "inputs: {share_groups: [team], require_dataset_grants: false}"), 5))
    assert open_.may_mount_outputs("bob", "engineer", source)
    closed = PolicyEvaluator(load_policy(DOCUMENT.replace(
        "inputs: {share_groups: [team]}", "inputs: {enabled: false}"), 5))
    assert closed.may_mount_outputs("alice", "engineer", source).rule == "inputs.enabled"


def test_the_number_of_inputs_is_capped() -> None:
    evaluator = PolicyEvaluator(load_policy(DOCUMENT.replace(
        "inputs: {share_groups: [team]}", "inputs: {share_groups: [team], max_inputs: 1}"), 5))
    sources = tuple(OutputsSource(f"sb-{n}", "alice") for n in "ab")
    assert evaluator.may_launch(_request(inputs=sources)).rule == "inputs.max_inputs"


def test_projects_are_the_owners_or_shared_by_the_policy() -> None:
    evaluator = _evaluator()
    mine = ProjectFacts("mine", "alice", (("demo", 1),))
    assert evaluator.may_use_project("alice", "engineer", mine)
    assert evaluator.may_use_project("bob", "engineer", mine).rule == \
        "projects.shared.mine.allow"
    shared = ProjectFacts("shared-proj", "alice", (("demo", 1),))
    assert evaluator.may_use_project("bob", "engineer", shared)
    tainted = ProjectFacts("shared-proj", "alice", (("secret", 2),))
    refused = evaluator.may_use_project("bob", "engineer", tainted)
    assert (refused.allowed, refused.rule) == (False, "datasets.secret.allow")
    assert "project 'shared-proj' descends from dataset 'secret'" in refused.reason


def test_creating_a_project_is_capped_by_quota_and_count() -> None:
    evaluator = _evaluator()
    assert evaluator.may_create_project("alice", "engineer", quota_mb=512, owned=1)
    assert evaluator.may_create_project("alice", "engineer", quota_mb=513,
                                        owned=0).rule == "projects.max_quota_mb"
    assert evaluator.may_create_project("alice", "engineer", quota_mb=64,
                                        owned=2).rule == "projects.max_per_user"
    assert evaluator.may_create_project("audrey", "auditor", quota_mb=64,
                                        owned=0).rule == "launch.roles"


@pytest.mark.parametrize("section, message", [
    ("inputs: {share_groups: [nobody]}", "inputs.share_groups names group 'nobody'"),
    ("projects: {shared: {p: {allow: [group:nobody]}}}",
     "project p is shared with group 'nobody'"),
])
def test_a_policy_naming_undefined_groups_cannot_load(section: str, message: str) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        check_policy("groups: {team: [alice]}\n" + section + "\n")
    assert message in str(caught.value)


def test_the_default_policy_turns_inputs_and_projects_on_with_the_grant_rule() -> None:
    policy = Policy()
    assert policy.inputs.enabled and policy.inputs.require_dataset_grants
    assert policy.projects.enabled and policy.projects.shared == {}
