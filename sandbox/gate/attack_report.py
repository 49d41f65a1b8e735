"""The attack report, read as numbers only, and judged against the policy's limits.

The attack sandbox runs the engineer's model code (SACRO-ML trains shadow models with it), so
whatever it writes is sandbox output. The gate reads from SACRO-ML's `report.json` only the
numbers it knows (AUC, advantage, TPR at a low FPR) of the attacks it knows, recognised by
comparing names to its own list, and the ROC arrays from the `.npz` files the report names
when the name has the shape SACRO-ML gives it. Every figure is bounded, rounded to two
decimals (so each carries at most seven bits) and the ROC is resampled onto the gate's own
grid of 21 false-positive rates. Reasons are composed here from the gate's words and those
rounded figures; nothing the report says as text reaches a person.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.gate.errors import GateError

#: SACRO-ML's names for the attacks the gate runs, and the gate's own names for them.
ATTACK_NAMES = {"LiRA Attack": "lira", "WorstCase attack": "worstcase"}
#: How people read the gate's names.
ATTACK_TITLES = {"lira": "LiRA (likelihood ratio)", "worstcase": "worst-case"}
#: The report's number for each figure the gate reads.
FIGURE_KEYS = {"auc": "AUC", "advantage": "Advantage", "tpr_at_low_fpr": "TPR@0.1%"}
FIGURE_TITLES = {"auc": "AUC", "advantage": "advantage", "tpr_at_low_fpr": "TPR at 0.1 % FPR"}
#: The report is a few kilobytes; anything larger is refused unread.
MAX_REPORT_BYTES = 1 << 20
MAX_ARRAYS_BYTES = 4 << 20
MAX_ROC_POINTS = 100_000
MAX_INSTANCES = 100
#: The false-positive rates the console draws the ROC at.
ROC_GRID = tuple(i / 20 for i in range(21))
_ARRAYS_FILE = re.compile(r"^report_arrays_[0-9a-f-]{1,64}_instance_[0-9]{1,3}\.npz$")


class AttackReportUnreadable(GateError):
    """The attack run left no report the gate can read (missing, too large, malformed, or
    without a figure the gate needs): the check fails closed."""


@dataclass(frozen=True)
class AttackFigures:
    """One attack's figures, worst over its repetitions, rounded to two decimals."""

    attack: str  # the gate's name: "lira" or "worstcase"
    repetitions: int
    auc: float
    advantage: float
    tpr_at_low_fpr: float
    #: TPR at each of ROC_GRID's false-positive rates (empty when the arrays were unreadable).
    roc: tuple[float, ...] = field(default=())

    def figure(self, name: str) -> float:
        value: float = getattr(self, name)
        return value

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "repetitions": self.repetitions, "auc": self.auc,
                "advantage": self.advantage, "tpr_at_low_fpr": self.tpr_at_low_fpr,
                "roc": {"fpr": list(ROC_GRID), "tpr": list(self.roc)} if self.roc else None}


@dataclass(frozen=True)
class Verdict:
    """The figures judged: passed, and the gate's sentence saying why."""

    passed: bool
    reason: str
    #: The policy field that refused, e.g. `model_risk.limits.lira.auc`, where one did.
    limit: str = ""


def read_report(out_dir: Path, attacks: Sequence[str]) -> tuple[AttackFigures, ...]:
    """The figures of each attack in `attacks` from `out_dir/report.json`, in that order."""
    report = _load_json(out_dir / "report.json")
    found: dict[str, list[tuple[dict[str, float], str]]] = {}
    for entry in report.values() if isinstance(report, dict) else ():
        if not isinstance(entry, dict):
            continue
        metadata = entry.get("metadata")
        name = metadata.get("attack_name") if isinstance(metadata, dict) else None
        attack = ATTACK_NAMES.get(name) if isinstance(name, str) else None
        if attack is None or attack not in attacks:
            continue  # an entry the gate did not ask for is not read
        logger = entry.get("attack_experiment_logger")
        instances = logger.get("attack_instance_logger") if isinstance(logger, dict) else None
        if not isinstance(instances, dict) or not 1 <= len(instances) <= MAX_INSTANCES:
            raise AttackReportUnreadable(f"the {ATTACK_TITLES[attack]} attack's report has no "
                                         "readable repetitions")
        for instance in instances.values():
            if not isinstance(instance, dict):
                raise AttackReportUnreadable(f"the {ATTACK_TITLES[attack]} attack's report "
                                             "has a repetition that is not a record")
            figures = {key: _figure(instance.get(source), attack, key)
                       for key, source in FIGURE_KEYS.items()}
            arrays = instance.get("arrays_file")
            found.setdefault(attack, []).append((figures, arrays if isinstance(arrays, str)
                                                 and _ARRAYS_FILE.match(arrays) else ""))
    result = []
    for attack in attacks:
        runs = found.get(attack)
        if not runs:
            raise AttackReportUnreadable(f"the attack run reported no {ATTACK_TITLES[attack]} "
                                         "attack")
        worst = max(runs, key=lambda run: run[0]["auc"])
        result.append(AttackFigures(
            attack=attack, repetitions=len(runs),
            auc=max(r[0]["auc"] for r in runs),
            advantage=max(r[0]["advantage"] for r in runs),
            tpr_at_low_fpr=max(r[0]["tpr_at_low_fpr"] for r in runs),
            roc=_roc(out_dir, worst[1])))
    return tuple(result)


def judge(figures: Sequence[AttackFigures],
          limits: Mapping[str, Mapping[str, float | None]]) -> Verdict:
    """Each figure against its limit; every figure is named in the reason either way."""
    over, said = [], []
    for attack in figures:
        bounds = limits.get(attack.attack, {})
        parts = []
        for name, title in FIGURE_TITLES.items():
            value, limit = attack.figure(name), bounds.get(name)
            if limit is None:
                parts.append(f"{title} {value:.2f}")
            elif value > limit:
                parts.append(f"{title} {value:.2f} is above the limit {limit:.2f}")
                over.append(f"model_risk.limits.{attack.attack}.{name}")
            else:
                parts.append(f"{title} {value:.2f} (at most {limit:.2f})")
        said.append(f"{ATTACK_TITLES[attack.attack]}: {', '.join(parts)}")
    text = "; ".join(said)
    if over:
        return Verdict(False, f"the model gives its training records away: {text}", over[0])
    return Verdict(True, f"membership-inference attacks within the policy's limits: {text}")


def _load_json(path: Path) -> Any:
    try:
        size = path.stat().st_size
    except OSError:
        raise AttackReportUnreadable("the attack run wrote no report") from None
    if size > MAX_REPORT_BYTES:
        raise AttackReportUnreadable(f"the attack report is larger than "
                                     f"{MAX_REPORT_BYTES >> 20} MiB, so it is not read")
    try:
        # SACRO-ML writes NaN for figures it could not compute: read them as missing.
        return json.loads(path.read_bytes(), parse_constant=lambda _: None)
    except (ValueError, RecursionError):
        raise AttackReportUnreadable("the attack report is not JSON") from None


def _figure(value: object, attack: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AttackReportUnreadable(f"the {ATTACK_TITLES[attack]} attack's report has no "
                                     f"{FIGURE_TITLES[key]}")
    if not 0.0 <= value <= 1.0:
        raise AttackReportUnreadable(f"the {ATTACK_TITLES[attack]} attack's "
                                     f"{FIGURE_TITLES[key]} is outside 0 to 1")
    return round(float(value), 2)


def _roc(out_dir: Path, name: str) -> tuple[float, ...]:
    """TPR on ROC_GRID from an arrays file, or () when there is none the gate can read."""
    if not name:
        return ()
    import numpy as np

    path = out_dir / name
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_ARRAYS_BYTES:
            return ()
        with np.load(path, allow_pickle=False) as arrays:
            fpr = np.asarray(arrays["fpr"], dtype=np.float64)
            tpr = np.asarray(arrays["tpr"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        return ()
    if (fpr.ndim != 1 or fpr.shape != tpr.shape or not 2 <= fpr.size <= MAX_ROC_POINTS
            or not (np.isfinite(fpr).all() and np.isfinite(tpr).all())
            or fpr.min() < 0 or fpr.max() > 1 or tpr.min() < 0 or tpr.max() > 1):
        return ()
    order = np.argsort(fpr, kind="stable")
    points = np.interp(np.asarray(ROC_GRID), fpr[order], np.maximum.accumulate(tpr[order]))
    return tuple(round(float(p), 2) for p in points)
