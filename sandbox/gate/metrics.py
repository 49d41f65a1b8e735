"""Metrics check: a released metrics file carries only short names and finite numbers.

Owns the rules that keep metrics from leaking: no strings, plain short keys and literals, a cap
on values, and small-cell suppression for count-like keys, as statistical disclosure control does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from sandbox.gate.errors import InvalidFormat, MetricsRefused
from sandbox.gate.formats import parse_csv, parse_json
from sandbox.gate.rules import CheckRules

#: Keys read as counts of people or records: `n`, `n_*`, `*_n`, `num_*`, `count`, `count_*`,
#: `*_count`, `support`, `*_support` (and the plural `counts`). Case-insensitive.
COUNT_KEY = re.compile(
    r"^(n|n_.*|.*_n|num_.*|counts?|counts?_.*|.*_counts?|support|.*_support)$", re.IGNORECASE)
#: A metric name: letters, digits and a little punctuation, no spaces or quotes.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/@%:+]*$")
#: Digits beyond a float64's 17 significant ones carry nothing but a hidden message.
MAX_NUMBER_CHARS = 32
_NUMBER = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$")


@dataclass(frozen=True)
class MetricsSummary:
    """What a clean metrics file holds, for the check's reason."""

    values: int
    counts: int  # values under count-like keys (all at least k)


class _Number(float):
    """A JSON number that passed the literal checks (bool is never one)."""


def is_count_key(key: str) -> bool:
    return bool(COUNT_KEY.match(key))


def _number(text: str) -> _Number:
    if len(text) > MAX_NUMBER_CHARS:
        raise MetricsRefused(f"has a number written with {len(text)} characters (at most "
                             f"{MAX_NUMBER_CHARS}); long literals can hide data")
    if not _NUMBER.match(text):
        raise MetricsRefused("has a number that is not a plain decimal literal")
    value = float(text)
    if not math.isfinite(value):
        raise MetricsRefused("has a number too large to be finite")
    return _Number(value)


class _Walk:
    """Counts values and applies the key and small-count rules, path by path."""

    def __init__(self, rules: CheckRules) -> None:
        self.rules = rules
        self.values = 0
        self.counts = 0

    def key(self, key: str, where: str) -> str:
        if len(key) > self.rules.max_key_length:
            raise MetricsRefused(f"has a key of {len(key)} characters {where} (at most "
                                 f"{self.rules.max_key_length})")
        if not KEY_PATTERN.match(key):
            raise MetricsRefused(f"has a key {where} that is not a plain name (letters, digits, "
                                 "_ . - / @ % : +)")
        return key

    def value(self, value: float, path: str, key: str) -> None:
        self.values += 1
        if self.values > self.rules.max_metric_values:
            raise MetricsRefused(f"has more than {self.rules.max_metric_values:,} values",
                                 limit="max_metric_values")
        if is_count_key(key):
            self.counts += 1
            if value < self.rules.small_count_k:
                raise MetricsRefused(
                    f"reports {path} = {_show(value)}, a count below "
                    f"{self.rules.small_count_k}; small counts can identify individuals",
                    limit="small_count_k")

    def walk(self, node: Any, path: str, key: str) -> None:
        if isinstance(node, dict):
            for child_key, child in node.items():
                where = f"under {path}" if path else "at the top level"
                name = self.key(child_key, where)
                self.walk(child, f"{path}.{name}" if path else name, name)
        elif isinstance(node, list):
            for index, child in enumerate(node):
                self.walk(child, f"{path}[{index}]", key)
        elif isinstance(node, _Number):
            self.value(float(node), path, key)
        else:
            what = {str: "a string", bool: "true/false", type(None): "null"}.get(
                type(node), "a non-number")
            raise MetricsRefused(f"has {what} at {path or 'the top level'}; metrics may only "
                                 "be numbers")


def _show(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def check_metrics_json(data: bytes, rules: CheckRules) -> MetricsSummary:
    """A JSON object whose leaves are finite numbers under short plain keys (nested objects
    and arrays of numbers allowed)."""
    try:
        document = parse_json(data, "metrics JSON", parse_number=_number)
    except InvalidFormat as exc:
        raise MetricsRefused(f"cannot be read as metrics: it {exc.user_message}") from exc
    if not isinstance(document, dict):
        raise MetricsRefused("is not a JSON object of named metrics")
    walk = _Walk(rules)
    walk.walk(document, "", "")
    return MetricsSummary(values=walk.values, counts=walk.counts)


def check_metrics_csv(data: bytes, rules: CheckRules) -> MetricsSummary:
    """A header row of short plain names over rows of finite numbers."""
    try:
        rows = parse_csv(data)
    except InvalidFormat as exc:
        raise MetricsRefused(f"cannot be read as metrics: it {exc.user_message}") from exc
    walk = _Walk(rules)
    header = [walk.key(name, f"in column {i + 1} of the header")
              for i, name in enumerate(rows[0])]
    if len(set(header)) != len(header):
        raise MetricsRefused("names a column twice in its header")
    for number, row in enumerate(rows[1:], start=2):
        for name, cell in zip(header, row, strict=True):
            if not _NUMBER.match(cell):
                raise MetricsRefused(f"has a cell in row {number}, column '{name}' that is not "
                                     "a plain number; metrics may only be numbers")
            walk.value(float(_number(cell)), f"row {number} '{name}'", name)
    return MetricsSummary(values=walk.values, counts=walk.counts)


def check_metrics(data: bytes, suffix: str, rules: CheckRules) -> MetricsSummary:
    if len(data) > rules.max_metrics_bytes:
        raise MetricsRefused(f"is {len(data):,} bytes; a metrics file may have at most "
                             f"{rules.max_metrics_bytes:,}")
    if suffix == ".csv":
        return check_metrics_csv(data, rules)
    if suffix == ".json":
        return check_metrics_json(data, rules)
    raise MetricsRefused("has no metrics reader for its type (only .json and .csv)")
