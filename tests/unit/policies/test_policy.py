"""The policy schema refuses bad documents naming the line; the evaluator denies by default
and names the rule and the version of every decision."""

from __future__ import annotations

import pytest

from policies.edit import with_dataset_rule
from policies.errors import InvalidPolicy
from policies.evaluator import LaunchRequest, PolicyEvaluator
from policies.schema import (
    Policy,
    PolicyContext,
    check_policy,
    default_policy_text,
    load_default_policy,
    load_policy,
)

ROLES = frozenset({"engineer", "approver", "security_officer", "auditor", "admin"})
CONTEXT = PolicyContext(datasets=frozenset({"demo", "secret"}), roles=ROLES,
                        users=frozenset({"alice", "bob"}), approvers=2)
DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def _request(**kw: object) -> LaunchRequest:
    base = dict(user="alice", role="engineer", datasets=("demo",), cpus=1.0, memory_mb=1024,
                pids=128, timeout_s=60, running_sandboxes=0, image_digest=DIGEST)
    base.update(kw)
    return LaunchRequest(**base)  # type: ignore[arg-type]


def _policy(extra: str = "") -> Policy:
    text = with_dataset_rule(default_policy_text(), "demo", ["role:engineer"])
    text = with_dataset_rule(text, "secret", ["bob", "group:cardio"])
    return load_policy(text.replace("groups: {}", "groups:\n  cardio: [carol]") + extra, 7)


def _problems(text: str, context: PolicyContext = CONTEXT) -> list[str]:
    with pytest.raises(InvalidPolicy) as caught:
        check_policy(text, context)
    return [str(p) for p in caught.value.problems]


# --- the schema -----------------------------------------------------------------------------


def test_default_policy_loads_and_documents_every_section() -> None:
    policy = load_default_policy()
    assert policy.version == 1
    text = default_policy_text()
    for section in Policy.model_fields:
        if section != "version":
            assert f"\n{section}:" in text, f"default.yaml does not show {section}:"


@pytest.mark.parametrize("text, expected", [
    ("resources: [\n", "line 2: not valid YAML"),
    ("release:\n  approvals_needed: 2\n  bogus: 3\n",
     "line 3: release.bogus: unknown field 'bogus'"),
    ("resources:\n  default:\n    max_cpus: -1\n",
     "line 3: resources.default.max_cpus: must be greater than 0"),
    ("resources:\n  default:\n    max_memory_mb: -5\n",
     "line 3: resources.default.max_memory_mb: must be greater than or equal to 64"),
    ("disclosure:\n  per_sandbox_bytes: -1\n",
     "line 2: disclosure.per_sandbox_bytes: must be greater than or"),
    ("disclosure:\n  outbox:\n    name_pattern: '(['\n",
     "line 3: disclosure.outbox.name_pattern: name_pattern is not a regular expression"),
    ("disclosure:\n  outbox:\n    name_pattern: '.*'\n",
     "line 3: disclosure.outbox.name_pattern: name_pattern must not match an empty name"),
    ("logs:\n  max_view_bytes: 5\ndisclosure:\n  per_sandbox_bytes: 5\n",
     "line 3: disclosure: logs.max_view_bytes was replaced by disclosure.per_sandbox_bytes"),
    ("\n\ndatasets:\n  nowhere:\n    allow: [alice]\n",
     "line 4: datasets.nowhere: no dataset named 'nowhere' is registered "
     "(registered: demo, secret)"),
    ("- a list\n", "line 1: a policy is a mapping"),
    ("", "line 1: the document is empty"),
    ("version: 3\n", "line 1: version: the version number is assigned when a policy is "
                     "activated"),
    ("sessions:\n  idle_timeout_s: 9000\n  absolute_timeout_s: 3600\n",
     "line 2: sessions.idle_timeout_s: idle_timeout_s (9000) is longer than "
     "absolute_timeout_s (3600)"),
    ("release:\n  max_file_mb: 10\n  max_total_mb: 5\n",
     "line 2: release.max_file_mb: max_file_mb (10) is larger than max_total_mb (5)"),
    ("release:\n  weight_types: [.json]\n", "line 1: release.metrics_types: .json is listed both"),
    ("network:\n  single: bridge\n", "line 2: network.single: must be 'none'; nothing else"),
    ("network:\n  mpi: host\n", "line 2: network.mpi: must be 'isolated'"),
    ("launch:\n  roles: [engineer, wizard]\n", "line 2: launch.roles[1]: unknown role 'wizard'"),
    ("resources:\n  roles:\n    wizard: {max_cpus: 1}\n",
     "line 3: resources.roles.wizard: unknown role"),
    ("datasets:\n  demo:\n    allow: [role:wizard]\n", "line 3: datasets.demo.allow[0]: "
                                                     "unknown role 'wizard'"),
    ("datasets:\n  demo:\n    allow: [group:nobody]\n",
     "line 3: datasets.demo.allow: dataset demo allows group nobody, which the groups"),
    ("datasets:\n  demo:\n    allow: ['Not A Name']\n",
     "line 3: datasets.demo.allow[0]: 'Not A Name' is not a valid principal"),
    ("images:\n  digests: [latest]\n", "line 2: images.digests[0]: 'latest' is not a valid "
                                       "image digest"),
    ("release:\n  small_count_k: 5\nrelease:\n  small_count_k: 50\n",
     "line 3: release: release is given twice (first on line 1)"),
    ("groups:\n  a: &x [alice]\n  b: *x\n", "line 3: groups.b: anchors and aliases"),
    ("uploads:\n  max_code_mb: 500\n", "line 2: uploads.max_code_mb: max_code_mb (500) is larger"),
])
def test_bad_documents_are_refused_naming_the_line(text: str, expected: str) -> None:
    problems = _problems(text)
    assert any(p.startswith(expected) for p in problems), problems


def test_every_problem_is_reported_not_just_the_first() -> None:
    problems = _problems("resources:\n  default:\n    max_cpus: 0\n    max_pids: 1\n"
                         "bogus: 1\n")
    assert [p.split(":")[0] for p in problems] == ["line 3", "line 4", "line 5"]


def test_warnings_do_not_refuse() -> None:
    checked = check_policy("datasets:\n  demo:\n    allow: [zoe]\nrelease:\n"
                           "  approvals_needed: 3\n", CONTEXT)
    assert [str(w) for w in checked.warnings] == [
        "line 3: datasets.demo.allow[0]: no user named 'zoe' exists (yet)",
        "line 5: release.approvals_needed: 3 approvals are needed but only 2 approver(s) "
        "exist: releases will wait until more are added",
        "line 1: launch.roles: no role may launch sandboxes",
    ]


def test_a_document_without_context_checks_only_itself() -> None:
    assert check_policy("datasets:\n  anything:\n    allow: [role:whatever]\n").policy


def test_dataset_rule_edit_keeps_the_officers_text() -> None:
    text = with_dataset_rule(default_policy_text(), "demo", ["role:engineer", "alice"])
    assert "# Sealroom default policy" in text and "(statistical disclosure control)" in text
    assert check_policy(text).policy.datasets["demo"].allow == ["role:engineer", "alice"]
    again = with_dataset_rule(text, "secret", ["bob"])
    assert set(check_policy(again).policy.datasets) == {"demo", "secret"}
    with pytest.raises(InvalidPolicy, match="already has a rule"):
        with_dataset_rule(again, "demo", ["bob"])
    flow = with_dataset_rule("datasets: {a: {allow: []}}\n", "b", ["bob"])
    assert set(check_policy(flow).policy.datasets) == {"a", "b"}


# --- the evaluator --------------------------------------------------------------------------


def test_within_limits_is_allowed_and_names_the_version() -> None:
    decision = PolicyEvaluator(_policy()).may_launch(_request(), {DIGEST})
    assert decision.allowed and decision.policy_version == 7 and decision.rule == "launch"


@pytest.mark.parametrize("change, rule", [
    ({"cpus": 99.0}, "resources.roles.engineer.max_cpus"),
    ({"memory_mb": 10**6}, "resources.roles.engineer.max_memory_mb"),
    ({"timeout_s": 10**6}, "resources.roles.engineer.max_timeout_s"),
    ({"pids": 10**5}, "resources.roles.engineer.max_pids"),
    ({"gpus": 1}, "resources.default.max_gpus"),
    ({"kind": "mpi", "ranks": 5}, "resources.roles.engineer.max_mpi_nodes"),
    ({"running_sandboxes": 4}, "resources.roles.engineer.max_concurrent"),
    ({"datasets": ("secret",)}, "datasets.secret.allow"),
    ({"datasets": ("unknown",)}, "datasets.unknown.allow"),
    ({"role": "auditor"}, "launch.roles"),
    ({"image_digest": OTHER}, "images.allow_registered"),
])
def test_denials_name_the_rule(change: dict[str, object], rule: str) -> None:
    decision = PolicyEvaluator(_policy()).may_launch(_request(**change), {DIGEST})
    assert not decision.allowed
    assert decision.rule == rule
    assert decision.policy_version == 7


def test_user_entries_override_role_entries_field_by_field() -> None:
    policy = _policy("").model_copy(update={"resources": load_policy(
        "resources:\n  roles:\n    engineer: {max_cpus: 2}\n"
        "  users:\n    alice: {max_cpus: 4, max_gpus: 1}\n").resources})
    evaluator = PolicyEvaluator(policy)
    assert evaluator.may_launch(_request(cpus=4, gpus=1), {DIGEST})
    decision = evaluator.may_launch(_request(cpus=5), {DIGEST})
    assert decision.rule == "resources.users.alice.max_cpus"
    assert evaluator.may_launch(_request(user="bob", cpus=4), {DIGEST}).rule == \
        "resources.roles.engineer.max_cpus"
    assert evaluator.may_launch(_request(memory_mb=5000), {DIGEST}).rule == \
        "resources.default.max_memory_mb"


def test_dataset_grants_to_users_roles_and_groups() -> None:
    evaluator = PolicyEvaluator(_policy())
    assert evaluator.may_mount("bob", "engineer", "secret")
    assert evaluator.may_mount("carol", "engineer", "secret").reason == "granted to group:cardio"
    assert not evaluator.may_mount("alice", "engineer", "secret")
    assert not evaluator.may_mount("bob", "auditor", "demo")
    assert evaluator.usable_datasets("alice", "engineer") == ["demo"]
    assert evaluator.usable_datasets("carol", "engineer") == ["demo", "secret"]


def test_images_by_digest_or_registration() -> None:
    listed = _policy("").model_copy(update={"images": load_policy(
        f"images:\n  allow_registered: false\n  digests: ['{OTHER}']\n").images})
    evaluator = PolicyEvaluator(listed)
    assert evaluator.may_use_image(OTHER, set()).rule == "images.digests"
    denied = evaluator.may_use_image(DIGEST, {DIGEST})
    assert not denied and denied.rule == "images.digests"
    assert PolicyEvaluator(_policy()).may_use_image(DIGEST, {DIGEST}).rule == \
        "images.allow_registered"


def test_network_is_never_a_choice() -> None:
    evaluator = PolicyEvaluator(_policy())
    assert evaluator.network_for("single").reason == "none"
    assert evaluator.network_for("mpi").reason == "isolated"


def test_disclosure_budget_the_tighter_limit_decides() -> None:
    policy = load_policy("disclosure:\n  per_sandbox_bytes: 100\n"
                         "  per_user_daily_bytes: 150\n")
    evaluator = PolicyEvaluator(policy)
    decision, allowed = evaluator.disclosure(sandbox_spent=0, user_day_spent=0, wanted=60)
    assert decision and allowed == 60
    decision, allowed = evaluator.disclosure(sandbox_spent=60, user_day_spent=60, wanted=60)
    assert decision and allowed == 40 and decision.rule == "disclosure.per_sandbox_bytes"
    decision, allowed = evaluator.disclosure(sandbox_spent=0, user_day_spent=120, wanted=60)
    assert decision and allowed == 30 and decision.rule == "disclosure.per_user_daily_bytes"
    decision, allowed = evaluator.disclosure(sandbox_spent=100, user_day_spent=100, wanted=1)
    assert not decision and allowed == 0 and decision.rule == "disclosure.per_sandbox_bytes"
    assert evaluator.disclosure(sandbox_spent=500, user_day_spent=500, wanted=0)[0]


def test_old_versions_with_a_log_budget_still_load_as_the_disclosure_budget() -> None:
    checked = check_policy("logs:\n  max_view_bytes: 4096\n")
    assert checked.policy.disclosure.per_sandbox_bytes == 4096
    assert any(w.path == "logs" and "disclosure.per_sandbox_bytes" in w.message
               for w in checked.warnings)
    assert load_policy("logs:\n  max_view_bytes: 8\n").disclosure.per_sandbox_bytes == 8


def test_interactive_access() -> None:
    closed = PolicyEvaluator(_policy())
    assert closed.may_open_ssh("alice", "engineer").rule == "interactive.ssh"
    assert not closed.may_open_ssh("alice", "engineer")
    opened = PolicyEvaluator(load_policy(
        "interactive:\n  ssh: true\n  idle_timeout_s: 120\n  session_timeout_s: 600\n"
        "  output_per_session_kb: 4\n  output_per_minute_kb: 2\n"
        "datasets:\n  cardio:\n    allow: [role:engineer]\n    ssh: false\n"
        "  demo:\n    allow: [role:engineer]\n"))
    assert opened.may_open_ssh("alice", "engineer")
    assert opened.may_open_ssh("alice", "engineer", ["demo"])
    by_role = opened.may_open_ssh("audrey", "auditor")
    assert not by_role and by_role.rule == "interactive.roles"
    by_data = opened.may_open_ssh("alice", "engineer", ["demo", "cardio"])
    assert not by_data and by_data.rule == "datasets.cardio.ssh"
    assert opened.terminal_output(session_bytes=4096, minute_bytes=2048)
    assert opened.terminal_output(session_bytes=4097, minute_bytes=0).rule \
        == "interactive.output_per_session_kb"
    per_minute = opened.terminal_output(session_bytes=3000, minute_bytes=2049)
    assert not per_minute and per_minute.rule == "interactive.output_per_minute_kb"
    assert opened.terminal_idle(60)
    assert not opened.terminal_idle(121)
    assert opened.terminal_age(600)
    assert opened.terminal_age(601).rule == "interactive.session_timeout_s"


def test_old_versions_with_an_output_budget_in_mb_still_load() -> None:
    checked = check_policy("interactive:\n  ssh: true\n  output_budget_mb: 2\n")
    assert checked.policy.interactive.output_per_session_kb == 2048
    assert any("output_per_session_kb" in w.message for w in checked.warnings)


def test_sessions() -> None:
    evaluator = PolicyEvaluator(_policy())  # idle 1800 s, absolute 8 h
    assert evaluator.session(0, 0, 1800)
    idle = evaluator.session(0, 0, 1801)
    assert not idle and idle.rule == "sessions.idle_timeout_s"
    absolute = evaluator.session(0, 28_000, 28_801)
    assert not absolute and absolute.rule == "sessions.absolute_timeout_s"


def test_training_metric_room_grows_by_the_minute_up_to_the_caps() -> None:
    evaluator = PolicyEvaluator(load_policy(
        "metrics:\n  points_per_minute: 100\n  max_points: 250\n  max_series: 3\n"))
    decision, room, series = evaluator.metrics_room(shown_points=0, series=0, running_s=5)
    assert decision and room == 100 and series == 3
    # 100 shown in the first minute: nothing more until the second begins.
    spent, room, _ = evaluator.metrics_room(shown_points=100, series=2, running_s=59.9)
    assert not spent and room == 0 and spent.rule == "metrics.points_per_minute"
    assert evaluator.metrics_room(shown_points=100, series=2, running_s=60)[1] == 100
    # Past two minutes the total cap is the tighter rule.
    capped, room, series = evaluator.metrics_room(shown_points=250, series=3, running_s=600)
    assert not capped and room == 0 and capped.rule == "metrics.max_points" and series == 0
    off = PolicyEvaluator(load_policy("metrics:\n  enabled: false\n"))
    assert off.metrics_room(shown_points=0, series=0, running_s=0)[0].rule == "metrics.enabled"
    with pytest.raises(InvalidPolicy):
        load_policy("metrics:\n  points_per_minute: 0\n")
    with pytest.raises(InvalidPolicy):
        load_policy("metrics:\n  bytes_per_point: 0\n")
