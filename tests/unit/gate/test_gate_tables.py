"""Tables a metrics JSON declares are held to acro's threshold, dominance (n, k) and p% rules;
the reasons are the gate's own words and positions, and the other metrics limits still apply.

Which it is: every reason here is text the gate composed (table and cell positions, the
policy's numbers); no table name or other text from the file reaches it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sandbox.gate.checks import CandidateFile, run_checks
from sandbox.gate.errors import MetricsRefused
from sandbox.gate.metrics import check_metrics
from sandbox.gate.rules import CheckRules
from sandbox.gate.tables import evidence_figures

RULES = CheckRules()
ROOT = Path(__file__).resolve().parents[3]


def as_json(document: Any) -> bytes:
    return json.dumps(document).encode()


def refused(document: Any, rules: CheckRules = RULES) -> MetricsRefused:
    with pytest.raises(MetricsRefused) as caught:
        check_metrics(as_json(document), ".json", rules)
    return caught.value


# A ward-by-outcome count table and a cost-by-ward table: [total, contributors, largest, 2nd].
SAFE = {
    "accuracy": 0.91,
    "frequency_tables": {"admissions_by_ward": [120, 45, 30, 12]},
    "magnitude_tables": {"cost_by_ward": [[1000, 20, 100, 90], [500, 12, 60, 50]]},
}


def test_declared_tables_that_meet_every_rule_pass() -> None:
    summary = check_metrics(as_json(SAFE), ".json", RULES)
    assert (summary.tables.tables, summary.tables.cells, summary.tables.magnitude_cells) == (
        2, 6, 2)
    # every number counts toward the item cap like any metric
    assert summary.values == 1 + 4 + 8


def test_the_pass_reason_says_what_was_checked_under_which_rules(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_bytes(as_json(SAFE))
    report = run_checks([CandidateFile("metrics.json", path, path.stat().st_size, "")], RULES,
                        {})
    [metrics] = [r for r in report.results if r.check == "metrics"]
    assert metrics.passed, metrics.reason
    assert ("2 declared table(s), 6 cell(s) (2 of magnitude) pass acro's rules: threshold "
            "(each cell's count at least 10), dominance (n=2, k=90%), p% (p=10%)"
            in metrics.reason)
    assert "admissions" not in metrics.reason and "cost_by_ward" not in metrics.reason


def test_a_dominated_cell_fails_naming_the_rule_and_the_cell() -> None:
    # cell 2: the two largest are 950 of 1000 (dominance); the rest, 50, is under 10% of 900
    error = refused({"magnitude_tables": {
        "cost_by_ward": [[1000, 20, 100, 90], [1000, 20, 900, 50], [800, 15, 80, 70]]}})
    assert error.limit == "dominance_k"
    assert error.user_message.startswith(
        "has 1 of 3 declared table cell(s) that could disclose individuals (acro's rules): "
        "magnitude table 1, cell 2: dominance (n=2, k=90%)")
    assert "magnitude table 1, cell 2: p% (p=10%)" in error.user_message
    assert "cost_by_ward" not in error.user_message


def test_p_percent_alone_fails_a_cell_dominance_lets_through() -> None:
    # the two largest are 80% of the total (under k); the rest, 200, is 40% of the largest
    rules = CheckRules(p_percent=0.5)
    error = refused({"magnitude_tables": {"t": [[1000, 20, 500, 300]]}}, rules)
    assert error.limit == "p_percent"
    assert "cell 1: p% (p=50%): the rest beyond the two largest" in error.user_message
    assert "dominance" not in error.user_message
    # with the rule off, the same table passes
    check_metrics(as_json({"magnitude_tables": {"t": [[1000, 20, 500, 300]]}}), ".json",
                  CheckRules(p_percent=0.5, p_percent_rule=False))


def test_dominance_uses_the_policys_n_and_k() -> None:
    table = {"magnitude_tables": {"t": [[1000, 20, 400, 300, 200]]}}
    check_metrics(as_json(table), ".json", RULES)  # top 2: 70%
    error = refused(table, CheckRules(dominance_n=3))  # top 3: 90%
    assert error.limit == "dominance_k" and "dominance (n=3, k=90%)" in error.user_message
    check_metrics(as_json(table), ".json", CheckRules(dominance_n=3, dominance_k=0.95))
    check_metrics(as_json(table), ".json", CheckRules(dominance_n=3, dominance_rule=False))


@pytest.mark.parametrize("document, cells", [
    ({"frequency_tables": {"t": [120, 4, 30, 0, 9, 10]}}, "frequency table 1, cells 2, 4, 5"),
    ({"frequency_tables": {"a": [50], "b": [11, 3]}}, "frequency table 2, cell 2"),
    # a magnitude cell's contributors are its count
    ({"magnitude_tables": {"t": [[1000, 20, 100, 90], [300, 6, 100, 90]]}},
     "magnitude table 1, cell 2"),
])
def test_cells_under_the_threshold_fail(document: Any, cells: str) -> None:
    error = refused(document)
    assert error.limit == "small_count_k"
    assert f"{cells}: threshold: a count below 10" in error.user_message


def test_the_threshold_is_small_count_k() -> None:
    document = {"frequency_tables": {"t": [5, 6]}}
    check_metrics(as_json(document), ".json", CheckRules(small_count_k=5))
    assert refused(document, CheckRules(small_count_k=6)).limit == "small_count_k"


def test_every_failure_is_listed_and_long_lists_are_counted() -> None:
    error = refused({"frequency_tables": {"t": [1] * 8},
                     "magnitude_tables": {"m": [[1000, 20, 900, 50]]}})
    assert "9 of 9 declared table cell(s)" in error.user_message
    assert "frequency table 1, cells 1, 2, 3, 4, 5 and 3 more: threshold" in error.user_message
    assert "magnitude table 1, cell 1: dominance" in error.user_message
    assert error.limit == "small_count_k"  # the first failing rule names the policy rule


def test_cells_of_a_table_named_like_a_count_are_not_held_to_the_key_rule() -> None:
    # contributions under 10 in a table called `support`: only acro's rules apply to cells
    check_metrics(as_json({"magnitude_tables": {"support": [[60, 12, 8, 7]]}}), ".json",
                  RULES)


@pytest.mark.parametrize("cell, fragment", [
    (5, "not [total, contributors, largest contribution, ...]"),
    ([1000], "not [total, contributors"),
    ([1000, 20.5, 100, 90], "contributor count is not a whole number"),
    ([1000, 20, 90, 100], "not listed largest first"),
    ([1000, 20, 100], "listing 1 of its largest contributions; the table rules need its 2"),
    ([100, 1, 60, 40], "listing more contributions than its contributors"),
    ([150, 20, 100, 90], "total is less than its largest contributions"),
    # 18 unlisted contributors of at most 90 cannot make up 1,810
    ([2000, 20, 100, 90], "more than its contributors can make up"),
    ([-5, 20, 1, 1], "negative"),
    ([1000, 20, 100, -1], "negative"),
])
def test_malformed_magnitude_cells_are_refused(cell: Any, fragment: str) -> None:
    error = refused({"magnitude_tables": {"cost": [[1000, 20, 100, 90], cell]}})
    assert "cell 2 of magnitude table 1" in error.user_message
    assert fragment in error.user_message


@pytest.mark.parametrize("document, fragment", [
    ({"frequency_tables": [1, 2]}, "frequency tables that are not an object of named tables"),
    ({"frequency_tables": {"t": 12}}, "frequency table 1 that is not a list of cells"),
    ({"frequency_tables": {"t": []}}, "frequency table 1 that is not a list of cells"),
    ({"frequency_tables": {"t": [[12, 13]]}}, "cell 1 of frequency table 1 that is not a count"),
    ({"frequency_tables": {"t": [12.5]}}, "count is not a whole number"),
    ({"frequency_tables": {"t": [12, "many"]}}, "a string at the item at depth 3, index 2"),
    ({"magnitude_tables": {"t": [[100, 12, "x", 5]]}}, "a string at the item at depth 4"),
    ({"magnitude_tables": {"t": [[100, 12, [50], 5]]}}, "nests objects or arrays 5 deep"),
    ({"frequency_tables": {"t": {"a": 12}}}, "frequency table 1 that is not a list of cells"),
    ({"frequency_tables": {"t": [True]}}, "true/false"),
])
def test_hostile_or_malformed_tables_are_refused_in_the_gates_words(
        document: Any, fragment: str) -> None:
    assert fragment in refused(document).user_message


def test_a_huge_table_is_refused_by_the_item_cap_before_any_rule() -> None:
    error = refused({"frequency_tables": {"t": [50] * 2000}})
    assert error.limit == "max_metric_values"


def test_table_names_obey_the_key_rules_and_are_never_echoed() -> None:
    name = "patient_" + "x" * 80
    error = refused({"frequency_tables": {name: [50]}})
    assert error.limit == "max_key_length" and name not in error.user_message
    error = refused({"frequency_tables": {"Jane Doe, 1970-01-01": [50]}})
    assert "not a plain name" in error.user_message and "Jane" not in error.user_message


CANARY = "zq7canary"


@pytest.mark.parametrize("document", [
    {"frequency_tables": {CANARY: [3]}},
    {"magnitude_tables": {CANARY: [[1000, 20, 900, 50]]}},
    {"magnitude_tables": {CANARY: [[1000, 20, 90, 100]]}},
    {"frequency_tables": {CANARY: [CANARY]}},
    {"magnitude_tables": {"t": [[1000, 20, 100, 90]], CANARY: "x"}},
])
def test_no_reason_carries_a_name_or_string_from_the_file(document: Any,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_bytes(as_json(document))
    report = run_checks([CandidateFile("m.json", path, path.stat().st_size, "")], RULES, {})
    assert not report.passed
    assert CANARY not in json.dumps(report.to_dict())


def test_defaults_are_acros() -> None:
    import acro

    defaults = yaml.safe_load((Path(acro.__file__).parent / "default.yaml").read_text())
    assert (RULES.small_count_k, RULES.dominance_n, RULES.dominance_k, RULES.p_percent) == (
        defaults["safe_threshold"], defaults["safe_nk_n"], defaults["safe_nk_k"],
        defaults["safe_pratio_p"])


def test_acro_is_imported_only_for_a_file_with_tables_and_leaves_logging_alone() -> None:
    script = (
        "import json, logging, sys, warnings\n"
        "from sandbox.gate.metrics import check_metrics\n"
        "from sandbox.gate.rules import CheckRules\n"
        "filters = list(warnings.filters)\n"
        "check_metrics(b'{\"accuracy\": 0.9, \"n\": 50}', '.json', CheckRules())\n"
        "assert 'acro' not in sys.modules, 'acro imported for a file without tables'\n"
        "check_metrics(json.dumps({'frequency_tables': {'t': [50]}}).encode(), '.json',\n"
        "              CheckRules())\n"
        "assert 'acro' in sys.modules\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
        "assert logging.getLogger().level == logging.WARNING\n"
        "assert warnings.filters == filters\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


# --- properties -------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=40), st.integers(1, 1000))
def test_a_frequency_table_passes_exactly_when_every_cell_is_at_least_k(
        counts: list[int], k: int) -> None:
    document = as_json({"frequency_tables": {"t": counts}})
    rules = CheckRules(small_count_k=k)
    if min(counts) >= k:
        assert check_metrics(document, ".json", rules).tables.cells == len(counts)
    else:
        with pytest.raises(MetricsRefused) as caught:
            check_metrics(document, ".json", rules)
        shown = sum(1 for c in counts if c < k)
        assert caught.value.limit == "small_count_k"
        assert f"has {shown} of {len(counts)} declared table cell(s)" in caught.value.user_message


@st.composite
def magnitude_cells(draw: st.DrawFn) -> list[int]:
    """A consistent cell: its largest three contributions, and the rest no larger."""
    largest = sorted(draw(st.lists(st.integers(0, 10**6), min_size=3, max_size=3)),
                     reverse=True)
    rest = draw(st.lists(st.integers(0, largest[-1]), min_size=7, max_size=40))
    return [sum(largest) + sum(rest), 3 + len(rest), *largest]


@given(magnitude_cells(), st.integers(1, 3), st.floats(0.05, 1.0), st.floats(0.01, 0.99))
def test_magnitude_cells_fail_as_the_dominance_and_p_percent_rules_state(
        cell: list[int], n: int, k: float, p: float) -> None:
    total, _, *largest = cell
    rules = CheckRules(dominance_n=n, dominance_k=k, p_percent=p)
    dominated = total > 0 and sum(largest[:n]) / total >= k
    rest = total - largest[0] - largest[1]
    # acro: with a largest contribution of 0 the ratio is the rest itself (0 for a cell of
    # zeros, which tells every contributor's value, so it fails)
    p_failed = (rest / largest[0] if largest[0] > 0 else rest) < p
    document = as_json({"magnitude_tables": {"t": [cell]}})
    if not (dominated or p_failed):
        check_metrics(document, ".json", rules)
        return
    with pytest.raises(MetricsRefused) as caught:
        check_metrics(document, ".json", rules)
    message = caught.value.user_message
    assert ("dominance (" in message) is dominated
    assert ("p% (" in message) is p_failed
    assert caught.value.limit == ("dominance_k" if dominated else "p_percent")


@given(st.lists(st.floats(0, 1e12), min_size=1, max_size=12), st.integers(1, 12))
def test_the_evidence_is_what_acros_aggregation_functions_give(values: list[float],
                                                               n: int) -> None:
    """The gate reads a cell's max, top-2 and top-n sums off its listed largest contributions;
    acro's own functions over the same contributions give the same figures."""
    import acro.sdc_agg_funcs as agg
    import numpy as np
    import pandas as pd

    largest = tuple(sorted(values, reverse=True))
    series = pd.Series(largest, dtype="float64")
    saved, agg.NK_N = agg.NK_N, n
    try:
        expected = {"max": float(np.max(series)), "top_2_sum": float(agg.agg_top_2_sum(series)),
                    "top_n_sum": float(agg.agg_top_n_sum(series)),
                    "num_negative": float(agg.agg_num_negative(series))}
    finally:
        agg.NK_N = saved
    figures = evidence_figures(largest, n)
    assert figures == pytest.approx(expected, rel=1e-12)


def test_the_user_guides_example_passes() -> None:
    guide = (ROOT / "docs" / "user-guide.md").read_text()
    section = guide.split("### Tables in a metrics file", 1)[1]
    example = section.split("```json\n", 1)[1].split("```", 1)[0]
    summary = check_metrics(example.encode(), ".json", RULES)
    assert (summary.tables.tables, summary.tables.cells) == (2, 6)
