"""The policy's table rules (`release.dominance_*`, `release.p_percent*`): acro's defaults,
bounds a document cannot cross (each named on its line), and what the gate is given."""

from __future__ import annotations

import pytest

from console.services.releases import check_rules
from policies.errors import InvalidPolicy
from policies.schema import check_policy, default_policy_text, load_default_policy, load_policy


def test_defaults_are_acros_and_reach_the_gate() -> None:
    release = load_default_policy().release
    assert (release.dominance_rule, release.dominance_n, release.dominance_k,
            release.p_percent_rule, release.p_percent) == (True, 2, 0.9, True, 0.1)
    rules = check_rules(load_default_policy())
    assert (rules.dominance_rule, rules.dominance_n, rules.dominance_k, rules.p_percent_rule,
            rules.p_percent, rules.small_count_k) == (True, 2, 0.9, True, 0.1, 10)


def test_the_shipped_policy_lists_the_rules() -> None:
    text = default_policy_text()
    for field in ("dominance_rule", "dominance_n", "dominance_k", "p_percent_rule",
                  "p_percent"):
        assert f"\n  {field}: " in text, field


def test_a_policy_sets_and_switches_the_rules() -> None:
    policy = load_policy("release:\n  dominance_n: 3\n  dominance_k: 0.8\n"
                         "  p_percent_rule: false\n  p_percent: 0.2\n")
    rules = check_rules(policy)
    assert (rules.dominance_n, rules.dominance_k, rules.p_percent_rule, rules.p_percent) == (
        3, 0.8, False, 0.2)
    assert check_rules(load_policy("release:\n  dominance_k: 1\n")).dominance_k == 1.0


@pytest.mark.parametrize("line, expected", [
    ("dominance_n: 0", "release.dominance_n: must be greater than or equal to 1"),
    ("dominance_n: 1.5", "release.dominance_n:"),
    ("dominance_k: 0", "release.dominance_k: must be greater than 0"),
    ("dominance_k: 1.01", "release.dominance_k: must be less than or equal to 1"),
    ("dominance_k: -0.5", "release.dominance_k: must be greater than 0"),
    ("p_percent: 0", "release.p_percent: must be greater than 0"),
    ("p_percent: 1", "release.p_percent: must be less than 1"),
    ("p_percent: 10", "release.p_percent: must be less than 1"),
    ("dominance_rule: maybe", "release.dominance_rule:"),
])
def test_out_of_bounds_values_cannot_load(line: str, expected: str) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        check_policy(f"release:\n  approvals_needed: 2\n  {line}\n")
    problems = [str(p) for p in caught.value.problems]
    assert any(p.startswith(f"line 3: {expected}") for p in problems), problems
