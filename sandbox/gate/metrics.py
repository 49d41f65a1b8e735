"""Metrics check: a released metrics file carries only short names and finite numbers.

Owns the rules that keep metrics from leaking: no strings, plain short keys and literals, a cap
on keys and values together, and small-cell suppression for count-like keys, as statistical
disclosure control does; tables a file declares go on to acro's rules (`sandbox.gate.tables`).
Reasons point at a key by depth and index, never by its text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from sandbox.gate.errors import InvalidFormat, MetricsRefused
from sandbox.gate.formats import parse_csv, parse_json
from sandbox.gate.rules import CheckRules
from sandbox.gate.tables import TABLE_SECTIONS, TablesSummary, check_tables, declares_tables

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
    keys: int = 0  # object keys, or CSV header columns
    tables: TablesSummary = TablesSummary()  # declared tables, held to acro's rules


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


def _detail(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 200 else shown[:200] + "..."


class _Walk:
    """Counts keys and values and applies the key and small-count rules, item by item.

    `where` strings are positions the gate composes ("key at depth 2, index 3"): a key's
    text is what a leak would hide in, so it is never part of a reason."""

    def __init__(self, rules: CheckRules) -> None:
        self.rules = rules
        self.items = 0
        self.values = 0
        self.counts = 0
        self.keys = 0
        self.key_bytes = 0

    def item(self) -> None:
        self.items += 1
        if self.items > self.rules.max_metric_values:
            raise MetricsRefused(f"has more than {self.rules.max_metric_values:,} keys and "
                                 "values", limit="max_metric_values")

    def key(self, key: str, where: str) -> str:
        self.keys += 1
        self.item()
        if len(key) > self.rules.max_key_length:
            raise MetricsRefused(f"has a {where} that is {len(key):,} characters long (at "
                                 f"most {self.rules.max_key_length})", limit="max_key_length",
                                 detail=f"key {_detail(key)}")
        if not KEY_PATTERN.match(key):
            raise MetricsRefused(f"has a {where} that is not a plain name (letters, digits, "
                                 "_ . - / @ % : +)", detail=f"key {_detail(key)}")
        self.key_bytes += len(key.encode("utf-8"))
        if self.key_bytes > self.rules.max_metric_key_bytes:
            raise MetricsRefused(f"has more than {self.rules.max_metric_key_bytes:,} bytes of "
                                 f"key names in all (reached at the {where})",
                                 limit="max_metric_key_bytes")
        return key

    def value(self, value: float, where: str, key: str, *, counted: bool = True) -> None:
        """`counted`: whether the count rule applies (not to declared tables' cells, which
        acro's threshold covers, whatever their table's name)."""
        self.item()
        self.values += 1
        if counted and is_count_key(key):
            self.counts += 1
            if value < self.rules.small_count_k:
                raise MetricsRefused(
                    f"reports a count below {self.rules.small_count_k} at the {where}; small "
                    "counts can identify individuals", limit="small_count_k")

    def walk(self, node: Any, depth: int, where: str, key: str, *, counted: bool = True) -> None:
        """`depth` counts the objects and arrays around `node` (the top-level object is 1)."""
        if isinstance(node, (dict, list)) and depth + 1 > self.rules.max_key_depth:
            raise MetricsRefused(f"nests objects or arrays {depth + 1} deep at the {where} "
                                 f"(at most {self.rules.max_key_depth})",
                                 limit="max_key_depth")
        if isinstance(node, dict):
            for index, (child_key, child) in enumerate(node.items(), start=1):
                at = f"key at depth {depth + 1}, index {index}"
                named = self.key(child_key, at)
                tables = depth == 0 and named in TABLE_SECTIONS
                self.walk(child, depth + 1, at, named, counted=counted and not tables)
        elif isinstance(node, list):
            for index, child in enumerate(node, start=1):
                self.walk(child, depth + 1, f"item at depth {depth + 1}, index {index}", key,
                          counted=counted)
        elif isinstance(node, _Number):
            self.value(float(node), where, key, counted=counted)
        else:
            what = {str: "a string", bool: "true/false", type(None): "null"}.get(
                type(node), "a non-number")
            raise MetricsRefused(f"has {what} at the {where}; metrics may only be numbers")


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
    walk.walk(document, 0, "top level", "")
    tables = check_tables(document, rules) if declares_tables(document) else TablesSummary()
    return MetricsSummary(values=walk.values, counts=walk.counts, keys=walk.keys, tables=tables)


def check_metrics_csv(data: bytes, rules: CheckRules) -> MetricsSummary:
    """A header row of short plain names over rows of finite numbers."""
    try:
        rows = parse_csv(data)
    except InvalidFormat as exc:
        raise MetricsRefused(f"cannot be read as metrics: it {exc.user_message}") from exc
    walk = _Walk(rules)
    # Every header column counts, so a header-only CSV cannot carry data in its names.
    header = [walk.key(name, f"column name {i} of the header")
              for i, name in enumerate(rows[0], start=1)]
    if len(set(header)) != len(header):
        raise MetricsRefused("names a column twice in its header")
    for number, row in enumerate(rows[1:], start=2):
        for column, (name, cell) in enumerate(zip(header, row, strict=True), start=1):
            if not _NUMBER.match(cell):
                raise MetricsRefused(f"has a cell in row {number}, column {column} that is not "
                                     "a plain number; metrics may only be numbers")
            walk.value(float(_number(cell)), f"cell in row {number}, column {column}", name)
    return MetricsSummary(values=walk.values, counts=walk.counts, keys=walk.keys)


def check_metrics(data: bytes, suffix: str, rules: CheckRules) -> MetricsSummary:
    if len(data) > rules.max_metrics_bytes:
        raise MetricsRefused(f"is {len(data):,} bytes; a metrics file may have at most "
                             f"{rules.max_metrics_bytes:,}")
    if suffix == ".csv":
        return check_metrics_csv(data, rules)
    if suffix == ".json":
        return check_metrics_json(data, rules)
    raise MetricsRefused("has no metrics reader for its type (only .json and .csv)")
