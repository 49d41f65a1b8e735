"""The metrics check: only finite numbers under short plain names, a cap on values, and no
count-like value below k (statistical disclosure control's small-cell rule)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.gate.errors import MetricsRefused
from sandbox.gate.metrics import check_metrics, is_count_key
from sandbox.gate.rules import CheckRules

RULES = CheckRules()


def as_json(document: Any) -> bytes:
    return json.dumps(document).encode()


def test_example_metrics_pass() -> None:
    summary = check_metrics(as_json({"accuracy": 0.93, "loss": 0.21, "epochs": 5,
                                     "n_train": 8000, "n_test": 2000, "seconds": 3.4}),
                            ".json", RULES)
    assert (summary.values, summary.counts) == (6, 2)


@pytest.mark.parametrize("document, fragment", [
    ({"accuracy": 0.9, "note": "great"}, "a string at the key at depth 1, index 2"),
    ({"accuracy": 0.9, "n": 3}, "count below 10 at the key at depth 1, index 2"),
    ({"support": 3}, "count below 10 at the key at depth 1, index 1"),
    ({"per_class": {"cat": {"precision": 0.5, "support": 4}}},
     "count below 10 at the key at depth 3, index 2"),
    ({"class_counts": [120, 9, 300]}, "count below 10 at the item at depth 2, index 2"),
    ({"row_count": 0}, "count below 10 at the key at depth 1, index 1"),
    ({"num_patients": 9.5}, "count below 10 at the key at depth 1, index 1"),
    ({"test_n": -1}, "count below 10 at the key at depth 1, index 1"),
    ({"ok": True}, "true/false"),
    ({"ok": None}, "null"),
    ({"ok": [1, "x"]}, "string"),
])
def test_bad_metrics_are_refused(document: Any, fragment: str) -> None:
    with pytest.raises(MetricsRefused, match=fragment) as caught:
        check_metrics(as_json(document), ".json", RULES)
    # The reason points at the key by position; its name is never echoed.
    assert not set(_keys(document)) & set(caught.value.user_message.split())


def _keys(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [*node, *(k for child in node.values() for k in _keys(child))]
    if isinstance(node, list):
        return [k for child in node for k in _keys(child)]
    return []


def test_large_counts_and_nested_numbers_pass() -> None:
    summary = check_metrics(as_json({
        "n_test": 2000, "support": 10, "per_class": {"cat": {"f1": 0.5, "support": 11}},
        "loss_curve": [0.9, 0.5, 0.25], "confusion": {"tp": 50, "fp": 3}}), ".json", RULES)
    assert (summary.values, summary.counts) == (9, 3)


@pytest.mark.parametrize("data, fragment", [
    (b'{"accuracy": NaN}', "NaN"),
    (b'{"accuracy": Infinity}', "Infinity"),
    (b'{"accuracy": 1e999}', "finite"),
    (b'{"accuracy": 0.12345678901234567890123456789012345}', "characters"),
    (b'{"a": 1, "a": 2}', "twice"),
    (b'[1, 2, 3]', "not a JSON object"),
    (b'{"accuracy": 0.9', "cannot be read"),
    (b'PK\x03\x04', "cannot be read"),
])
def test_unreadable_or_non_finite_json_is_refused(data: bytes, fragment: str) -> None:
    with pytest.raises(MetricsRefused, match=fragment):
        check_metrics(data, ".json", RULES)


def test_too_many_values_are_refused() -> None:
    rules = CheckRules(max_metric_values=11)  # one key and ten numbers
    check_metrics(as_json({"loss": [0.5] * 10}), ".json", rules)
    with pytest.raises(MetricsRefused, match="more than 11 keys and values") as caught:
        check_metrics(as_json({"loss": [0.5] * 11}), ".json", rules)
    assert caught.value.limit == "max_metric_values"
    with pytest.raises(MetricsRefused, match="more than 1,000 keys and values"):
        check_metrics(as_json({f"m{i}": 0.5 for i in range(501)}), ".json", RULES)


def test_metrics_file_over_the_byte_cap_is_refused() -> None:
    with pytest.raises(MetricsRefused, match="at most 100"):
        check_metrics(as_json({"loss": [0.5] * 50}), ".json", CheckRules(max_metrics_bytes=100))


@pytest.mark.parametrize("key", ["x" * 65, "with space", "quote'd", "a,b", "", "é", "-lead"])
def test_keys_must_be_short_plain_names_and_are_never_echoed(key: str) -> None:
    with pytest.raises(MetricsRefused) as caught:
        check_metrics(as_json({key: 1.0}), ".json", RULES)
    assert key not in caught.value.user_message or not key


@pytest.mark.parametrize("key, count", [
    ("n", True), ("N", True), ("n_test", True), ("test_n", True), ("num_rows", True),
    ("count", True), ("counts", True), ("count_pos", True), ("row_count", True),
    ("class_counts", True), ("support", True), ("macro_support", True),
    ("accuracy", False), ("ndcg", False), ("country", False), ("loss", False),
    ("n2", False), ("epochs", False), ("recall@10", False), ("discount", False),
])
def test_count_like_keys(key: str, count: bool) -> None:
    assert is_count_key(key) is count


@given(st.sampled_from(["n", "n_pos", "support", "tp_count", "num_sites", "count"]),
       st.integers(-10**6, 10**6), st.integers(1, 1000))
def test_a_count_passes_exactly_when_it_is_at_least_k(key: str, value: int, k: int) -> None:
    rules = CheckRules(small_count_k=k)
    data = as_json({"nested": {key: value}})
    if value >= k:
        assert check_metrics(data, ".json", rules).counts == 1
    else:
        with pytest.raises(MetricsRefused, match="below"):
            check_metrics(data, ".json", rules)


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True).filter(
    lambda k: not is_count_key(k)), st.floats(allow_nan=False, allow_infinity=False),
    max_size=30))
def test_any_finite_floats_under_plain_names_pass(document: dict[str, float]) -> None:
    assert check_metrics(as_json(document), ".json", RULES).values == len(document)


# --- CSV --------------------------------------------------------------------------------------


def test_metrics_csv_passes() -> None:
    data = b"epoch,loss,val_loss,n_val\n1,0.9,1.1,500\n2,0.5,0.7,500\n3,2.5e-1,0.6,500\n"
    assert check_metrics(data, ".csv", RULES).values == 12


@pytest.mark.parametrize("data, fragment", [
    (b"epoch,loss\n1,great\n", "row 2, column 2 that is not a plain number"),
    (b"epoch,loss\n1,nan\n", "not a plain number"),
    (b"epoch,loss\n1,inf\n", "not a plain number"),
    (b"epoch,loss\n1,\n", "not a plain number"),
    (b"epoch,loss\n1, 0.5\n", "not a plain number"),
    (b"epoch,loss\n1,1_000\n", "not a plain number"),
    (b"label,support\n0,500\n1,7\n", "count below 10 at the cell in row 3, column 2"),
    (b"epoch,loss\n1,0.5,9\n", "columns"),
    (b"epoch,epoch\n1,2\n", "twice"),
    (b"epoch,the loss\n1,2\n", "not a plain name"),
    (b"epoch,loss\n1,1e999\n", "finite"),
])
def test_bad_metrics_csv_is_refused(data: bytes, fragment: str) -> None:
    with pytest.raises(MetricsRefused, match=fragment):
        check_metrics(data, ".csv", RULES)


def test_csv_value_cap_counts_every_cell() -> None:
    rows = "\n".join(f"{i},0.5" for i in range(501))
    with pytest.raises(MetricsRefused, match="more than 1,000"):
        check_metrics(f"epoch,loss\n{rows}\n".encode(), ".csv", RULES)


def test_unknown_metrics_type_fails_closed() -> None:
    with pytest.raises(MetricsRefused, match="no metrics reader"):
        check_metrics(b"a: 1\n", ".yaml", RULES)


# --- what can carry data is counted: keys, header columns, depth, key bytes ---------------------


def test_keys_count_toward_the_item_cap() -> None:
    rules = CheckRules(max_metric_values=4)
    assert check_metrics(as_json({"a": 1, "b": 2}), ".json", rules).keys == 2
    with pytest.raises(MetricsRefused, match="more than 4 keys and values") as caught:
        check_metrics(as_json({"a": 1, "b": 2, "c": 3}), ".json", rules)
    assert caught.value.limit == "max_metric_values"
    # Keys alone, with nothing under them, count too.
    with pytest.raises(MetricsRefused) as caught:
        check_metrics(as_json({f"k{i}": {} for i in range(5)}), ".json", rules)
    assert caught.value.limit == "max_metric_values"


def test_a_header_only_csv_counts_its_columns() -> None:
    rules = CheckRules(max_metric_values=3)
    summary = check_metrics(b"a,b,c\n", ".csv", rules)
    assert (summary.keys, summary.values) == (3, 0)
    with pytest.raises(MetricsRefused, match="more than 3 keys and values") as caught:
        check_metrics(b"a,b,c,d\n", ".csv", rules)
    assert caught.value.limit == "max_metric_values"


@pytest.mark.parametrize("suffix, document", [
    (".json", lambda key: as_json({"ok": 1, key: 1})),
    (".csv", lambda key: f"ok,{key}\n1,2\n".encode()),
])
def test_key_length_limit(suffix: str, document: Any) -> None:
    rules = CheckRules(max_key_length=20)
    check_metrics(document("k" * 20), suffix, rules)
    with pytest.raises(MetricsRefused, match=r"(index|column name) 2 (of the header )?that is "
                                             r"21 characters long") as caught:
        check_metrics(document("k" * 21), suffix, rules)
    assert caught.value.limit == "max_key_length" and "k" * 21 not in caught.value.user_message


@pytest.mark.parametrize("inner", [{"d": 1}, [1]])
def test_key_depth_limit(inner: Any) -> None:
    rules = CheckRules(max_key_depth=3)
    check_metrics(as_json({"a": {"b": inner}}), ".json", rules)  # three levels
    with pytest.raises(MetricsRefused, match="4 deep") as caught:
        check_metrics(as_json({"a": {"b": {"c": inner}}}), ".json", rules)
    assert caught.value.limit == "max_key_depth"
    with pytest.raises(MetricsRefused, match="4 deep"):
        check_metrics(as_json({"a": [[inner]]}), ".json", rules)


def test_default_depth_is_four() -> None:
    check_metrics(as_json({"a": {"b": {"c": {"d": 1}}}}), ".json", RULES)
    with pytest.raises(MetricsRefused) as caught:
        check_metrics(as_json({"a": {"b": {"c": {"d": {"e": 1}}}}}), ".json", RULES)
    assert caught.value.limit == "max_key_depth"


@pytest.mark.parametrize("suffix, document", [
    (".json", lambda keys: as_json(dict.fromkeys(keys, 1))),
    (".csv", lambda keys: (",".join(keys) + "\n").encode()),
])
def test_total_key_bytes_limit(suffix: str, document: Any) -> None:
    rules = CheckRules(max_metric_key_bytes=100)
    keys = [f"k{i:09d}" for i in range(10)]  # 10 bytes each: 100 in all
    assert check_metrics(document(keys), suffix, rules).keys == 10
    with pytest.raises(MetricsRefused, match="more than 100 bytes of key names") as caught:
        check_metrics(document([*keys, "x"]), suffix, rules)
    assert caught.value.limit == "max_metric_key_bytes"


def test_key_charset_applies_to_csv_headers_without_echoing_them() -> None:
    with pytest.raises(MetricsRefused, match="column name 2 of the header") as caught:
        check_metrics(b"epoch,secret name\n1,2\n", ".csv", RULES)
    assert "secret" not in caught.value.user_message and "secret" in caught.value.detail
