"""Statistical disclosure rules for the tables a metrics JSON declares, by acro's own code.

Owns the table format (`frequency_tables`, `magnitude_tables`: numbers only) and hands the
cells to acro's `SDCChecks`: the threshold, dominance (n, k) and p% rules. Reasons point at a
table and its cells by position, never by name, and state the rule with the policy's values.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sandbox.gate.errors import MetricsRefused
from sandbox.gate.rules import CheckRules

#: Top-level keys of a metrics JSON that declare tables; each holds named tables, each a list
#: of cells. A frequency cell is a count. A magnitude cell is a list of numbers:
#: [total, contributors, largest contribution, second largest, ...] (largest first).
FREQUENCY = "frequency_tables"
MAGNITUDE = "magnitude_tables"
TABLE_SECTIONS = (FREQUENCY, MAGNITUDE)
_KIND = {FREQUENCY: "frequency", MAGNITUDE: "magnitude"}

#: Failing cells named in a reason per table and rule; the rest are counted.
SHOWN_CELLS = 5
#: Relative slack when comparing a declared total with its contributions (float rounding).
_SLACK = 1e-9


@dataclass(frozen=True)
class TablesSummary:
    """What the table rules looked at, for the check's pass reason."""

    tables: int = 0
    cells: int = 0
    magnitude_cells: int = 0


@dataclass(frozen=True)
class _Cell:
    count: float  # people or records in the cell (for a magnitude cell, its contributors)
    total: float = 0.0
    largest: tuple[float, ...] = ()  # largest contributions, largest first


@dataclass(frozen=True)
class _Table:
    section: str
    position: int  # 1-based, within its section
    cells: tuple[_Cell, ...]

    @property
    def label(self) -> str:
        return f"{_KIND[self.section]} table {self.position}"


@dataclass(frozen=True)
class _Failure:
    table: str
    rule: str  # how the reason states the rule
    limit: str  # the CheckRules field behind it
    cells: tuple[int, ...]  # 1-based positions


def declares_tables(document: Mapping[str, Any]) -> bool:
    return any(section in document for section in TABLE_SECTIONS)


def check_tables(document: Mapping[str, Any], rules: CheckRules) -> TablesSummary:
    """Apply acro's rules to every declared table; raise MetricsRefused naming every failing
    cell (by table and cell position) and rule. The document has passed the metrics walk:
    only finite numbers under plain keys, within the item, depth and key limits."""
    tables = list(_tables(document, rules))
    if not tables:
        return TablesSummary()
    failures = _assess(tables, rules)
    if failures:
        raise MetricsRefused(_refusal(failures, sum(len(t.cells) for t in tables)),
                             limit=failures[0].limit)
    return TablesSummary(tables=len(tables), cells=sum(len(t.cells) for t in tables),
                         magnitude_cells=sum(len(t.cells) for t in tables
                                             if t.section == MAGNITUDE))


def rules_applied(rules: CheckRules) -> str:
    """The rules a table is held to, in the policy's values, for reasons and docs."""
    applied = [f"threshold (each cell's count at least {rules.small_count_k})"]
    if rules.dominance_rule:
        applied.append(f"dominance (n={rules.dominance_n}, k={_share(rules.dominance_k)})")
    if rules.p_percent_rule:
        applied.append(f"p% (p={_share(rules.p_percent)})")
    return ", ".join(applied)


# --- reading the declared tables -------------------------------------------------------------


def _tables(document: Mapping[str, Any], rules: CheckRules) -> Iterator[_Table]:
    for section in TABLE_SECTIONS:
        if section not in document:
            continue
        named = document[section]
        kind = _KIND[section]
        if not isinstance(named, dict):
            raise MetricsRefused(f"declares {kind} tables that are not an object of named "
                                 "tables")
        for position, cells in enumerate(named.values(), start=1):
            label = f"{kind} table {position}"
            if not isinstance(cells, list) or not cells:
                raise MetricsRefused(f"declares {label} that is not a list of cells")
            read = _frequency_cell if section == FREQUENCY else _magnitude_cell
            yield _Table(section, position, tuple(
                read(cell, f"cell {index} of {label}", rules)
                for index, cell in enumerate(cells, start=1)))


def _frequency_cell(cell: Any, where: str, rules: CheckRules) -> _Cell:
    if not isinstance(cell, float):
        raise MetricsRefused(f"has {where} that is not a count (a frequency cell is one "
                             "number)")
    return _Cell(count=_whole(cell, where, "count"))


def _magnitude_cell(cell: Any, where: str, rules: CheckRules) -> _Cell:
    if (not isinstance(cell, list) or len(cell) < 2
            or not all(isinstance(value, float) for value in cell)):
        raise MetricsRefused(f"has {where} that is not [total, contributors, largest "
                             "contribution, ...] (numbers)")
    total, contributors, largest = cell[0], _whole(cell[1], where, "contributor count"), cell[2:]
    if total < 0 or any(value < 0 for value in largest):
        # acro: dominance is not defined when negative values are present.
        raise MetricsRefused(f"has {where} with a negative total or contribution; the "
                             "dominance rules are defined for non-negative contributions only")
    if any(a < b for a, b in zip(largest, largest[1:], strict=False)):
        raise MetricsRefused(f"has {where} whose largest contributions are not listed largest "
                             "first")
    if len(largest) > contributors:
        raise MetricsRefused(f"has {where} listing more contributions than its contributors")
    needed = min(contributors, _contributions_needed(rules))
    if len(largest) < needed:
        raise MetricsRefused(f"has {where} listing {len(largest)} of its largest contributions; "
                             f"the table rules need its {needed:g} largest")
    remainder = total - math.fsum(largest)
    slack = _SLACK * max(abs(total), 1.0)
    if remainder < -slack:
        raise MetricsRefused(f"has {where} whose total is less than its largest contributions")
    # Every contributor not listed is no larger than the smallest listed one, so they cannot
    # add up to more than that many times it: else the listed ones are not the largest.
    unlisted = contributors - len(largest)
    ceiling = unlisted * largest[-1] if largest else 0.0
    if remainder > ceiling + slack:
        raise MetricsRefused(f"has {where} whose total is more than its contributors can make "
                             "up without one larger than its listed largest contributions")
    return _Cell(count=contributors, total=total, largest=tuple(largest))


def _contributions_needed(rules: CheckRules) -> int:
    """The largest contributions a magnitude cell must list: the top n for dominance, the top
    two for p% (all of them when it has fewer contributors)."""
    needed = 1
    if rules.dominance_rule:
        needed = max(needed, rules.dominance_n)
    if rules.p_percent_rule:
        needed = max(needed, 2)
    return needed


def _whole(value: float, where: str, what: str) -> float:
    if value < 0 or value != math.floor(value):
        raise MetricsRefused(f"has {where} whose {what} is not a whole number of at least 0")
    return value


# --- acro --------------------------------------------------------------------------------------


def _acro() -> tuple[Any, Any]:
    """acro's checks and its table model, imported on first use:
    importing acro costs seconds (pandas, statsmodels, matplotlib), which only a metrics file
    with tables should pay. Its import calls `logging.basicConfig` and silences FutureWarning
    process-wide; both are undone here so the console's logging and warnings stay its own."""
    if "acro.sdcchecks" not in sys.modules:
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        with warnings.catch_warnings():
            import acro.sdcchecks  # noqa: F401
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    import acro.sdcchecks
    import acro.tablemodeldetails
    return acro.sdcchecks, acro.tablemodeldetails


def evidence_figures(largest: tuple[float, ...], n: int) -> dict[str, float]:
    """A magnitude cell's evidence for acro's dominance and p% checks, from its largest
    contributions (largest first): what acro's `np.max`, `agg_top_2_sum`, `agg_top_n_sum`
    (for n) and `agg_num_negative` give over them (0 for a cell with none listed)."""
    return {"max": largest[0] if largest else 0.0,
            "top_2_sum": sum(largest[:2], 0.0),
            "top_n_sum": sum(largest[:n], 0.0),
            "num_negative": float(sum(1 for value in largest if value < 0))}


def _assess(tables: list[_Table], rules: CheckRules) -> list[_Failure]:
    """acro's threshold check on every cell; on magnitude cells its dominance and p% checks
    too (as acro runs them for a table of sums: its `LinearAggregations` checks). All cells of
    all tables go through each check at once, indexed by (table, cell).

    acro gathers a cell's evidence (sum, max, top-2 and top-n sums, negatives, count) from
    its raw contributions with its aggregation functions (`sdc_agg_funcs`: `agg_top_2_sum`,
    `agg_top_n_sum`, `agg_num_negative`). The file gives instead the total, the contributor
    count and the largest contributions, largest first, at least the top n and top two: so
    max, the top-2 and top-n sums are the first one, two and n listed (what acro's functions
    give over the listed ones: a test holds them to it), and the declared total is the sum.
    acro's checks then decide on that evidence. (Rebuilding a full series for acro's own
    functions, the rest split into pieces no larger than the smallest listed, would give the
    same figures, but a file could make it arbitrarily long, a remainder of 1e12 in pieces
    of 1e-6; and running those functions cell by cell costs about a millisecond a cell.)"""
    sdcchecks, model_details = _acro()
    import pandas as pd

    risk_appetite = {
        "safe_threshold": rules.small_count_k,
        "safe_nk_n": rules.dominance_n,
        "safe_nk_k": rules.dominance_k,
        "safe_pratio_p": rules.p_percent,
        "zeros_are_disclosive": True,
        "check_missing_values": False,
    }
    checks = sdcchecks.SDCChecks(risk_appetite)
    model = model_details.TableModelDetails(risk_appetite=risk_appetite)
    every = [(number, position, cell) for number, table in enumerate(tables)
             for position, cell in enumerate(table.cells, start=1)]
    magnitude = [row for row in every if tables[row[0]].section == MAGNITUDE]

    def frame(rows: list[tuple[int, int, _Cell]], values: Any) -> Any:
        index = pd.MultiIndex.from_tuples([(number, position) for number, position, _ in rows],
                                          names=["table", "cell"])
        return pd.DataFrame({"value": list(values)}, index=index)

    flagged: dict[tuple[int, str], list[int]] = {}

    def run(limit: str, check: Any, evidence: Any, rows: list[tuple[int, int, _Cell]]) -> None:
        status, _summary, mask = check("", evidence, model)
        mask = sdcchecks.mask_to_boolmask(mask)
        hits = [tuple(at) for at in mask.index[mask["value"].to_numpy()]]
        if status != "pass" and not hits:  # fail closed on a status with no cell to point at
            hits = [(number, position) for number, position, _ in rows]
        for number, position in hits:
            flagged.setdefault((number, limit), []).append(position)

    counted = sdcchecks.SDCEvidence()
    counted.interim_tables["count_table"] = frame(every, (cell.count for *_, cell in every))
    run("small_count_k", checks.check_min_threshold, counted, every)
    if magnitude and (rules.dominance_rule or rules.p_percent_rule):
        evidence = sdcchecks.SDCEvidence()
        figures = [evidence_figures(cell.largest, rules.dominance_n) for *_, cell in magnitude]
        for name in ("max", "top_2_sum", "top_n_sum", "num_negative"):
            evidence.interim_tables[name] = frame(magnitude, (f[name] for f in figures))
        evidence.interim_tables["sum"] = frame(magnitude, (cell.total for *_, cell in magnitude))
        if rules.dominance_rule:
            run("dominance_k", checks.check_nk_dominance, evidence, magnitude)
        if rules.p_percent_rule:
            run("p_percent", checks.check_ppercent_dominance, evidence, magnitude)

    stated = {
        "small_count_k": f"threshold: a count below {rules.small_count_k}",
        "dominance_k": f"dominance (n={rules.dominance_n}, k={_share(rules.dominance_k)}): the "
                       f"{rules.dominance_n} largest contribution(s) make up at least "
                       f"{_share(rules.dominance_k)} of the total",
        "p_percent": f"p% (p={_share(rules.p_percent)}): the rest beyond the two largest "
                     f"contributions is less than {_share(rules.p_percent)} of the largest",
    }
    return [_Failure(table.label, stated[limit], limit, tuple(sorted(flagged[number, limit])))
            for number, table in enumerate(tables) for limit in stated
            if (number, limit) in flagged]


# --- reasons -----------------------------------------------------------------------------------


def _share(value: float) -> str:
    return f"{value * 100:g}%"


def _positions(cells: tuple[int, ...]) -> str:
    shown = ", ".join(str(c) for c in cells[:SHOWN_CELLS])
    more = f" and {len(cells) - SHOWN_CELLS} more" if len(cells) > SHOWN_CELLS else ""
    return f"cell{'s' if len(cells) > 1 else ''} {shown}{more}"


def _refusal(failures: list[_Failure], cells: int) -> str:
    flagged = len({(f.table, c) for f in failures for c in f.cells})
    parts = "; ".join(f"{f.table}, {_positions(f.cells)}: {f.rule}" for f in failures)
    return (f"has {flagged} of {cells} declared table cell(s) that could disclose individuals "
            f"(acro's rules): {parts}")
