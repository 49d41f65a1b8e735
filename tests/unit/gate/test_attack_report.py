"""The attack report read as numbers only (sandbox/gate/attack_report.py).

A report SACRO-ML really wrote (tests/data, from a LiRA and a worst-case attack on an
overfitted MLP) is read to its figures and ROC; a hostile report, text in every field it can
hold, yields reasons made only of the gate's own words and two-decimal figures. This is the
first kind of view of sandbox output: text the console composed itself."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sandbox.gate.attack_report import (
    ROC_GRID,
    AttackReportUnreadable,
    judge,
    read_report,
)

REAL = Path(__file__).parents[2] / "data"
LIMITS: dict[str, dict[str, float | None]] = {"lira": {"auc": 0.6}, "worstcase": {"auc": 0.75}}
#: What a reason may be made of: the gate's words, digits and a little punctuation.
COMPOSED = re.compile(r"^[A-Za-z0-9 ().,:;%\-]*$")
SECRET = "patient 4711 Jane Roe, DOB 1970-01-01"


@pytest.fixture
def real_report(tmp_path: Path) -> Path:
    shutil.copy(REAL / "sacroml-report.json", tmp_path / "report.json")
    shutil.copy(REAL / "report_arrays_864e4ba4_instance_0.npz", tmp_path)
    return tmp_path


def test_a_real_sacroml_report_reads_to_rounded_figures_and_a_roc_on_the_gates_grid(
        real_report: Path) -> None:
    lira, worst = read_report(real_report, ["lira", "worstcase"])
    assert (lira.attack, lira.repetitions, lira.auc, lira.advantage) == ("lira", 1, 0.73, 0.28)
    assert len(lira.roc) == len(ROC_GRID) and lira.roc[0] == 0.0 and lira.roc[-1] == 1.0
    assert list(lira.roc) == sorted(lira.roc)
    assert worst.repetitions == 5 and worst.roc == ()  # its arrays files are not here
    verdict = judge([lira, worst], LIMITS)
    assert not verdict.passed and verdict.limit == "model_risk.limits.lira.auc"
    assert "AUC 0.73 is above the limit 0.60" in verdict.reason
    assert judge([lira, worst], {"lira": {"auc": 0.8}, "worstcase": {"auc": 0.8}}).passed


def _hostile(tmp_path: Path) -> Path:
    instance: dict[str, Any] = {key: SECRET for key in ("TPR", "FPR", "ACC")}
    instance.update({"AUC": 0.9, "Advantage": 0.5, "TPR@0.1%": 0.25,
                     "arrays_file": f"../{SECRET}.npz", SECRET: SECRET})
    report = {f"{SECRET}_x": {"log_id": SECRET, "metadata": {
        "attack_name": "LiRA Attack", "attack_params": {"output_dir": SECRET},
        "global_metrics": {"AUC_sig": SECRET}, "target_model": SECRET},
        "attack_experiment_logger": {"attack_instance_logger": {SECRET: instance}}},
        SECRET: {"metadata": {"attack_name": SECRET}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    return tmp_path


def test_a_hostile_report_shows_no_text_of_its_own(tmp_path: Path) -> None:
    (figures,) = read_report(_hostile(tmp_path), ["lira"])
    assert figures.roc == ()  # an arrays file by any other name is not opened
    verdict = judge([figures], LIMITS)
    assert not verdict.passed
    assert COMPOSED.match(verdict.reason) and SECRET not in verdict.reason
    assert "4711" not in json.dumps(figures.to_dict())


@pytest.mark.parametrize("change, message", [
    (lambda r: r.clear(), "reported no LiRA"),
    (lambda r: _instance(r).update({"AUC": SECRET}), "has no AUC"),
    (lambda r: _instance(r).update({"AUC": True}), "has no AUC"),
    (lambda r: _instance(r).update({"AUC": 7.5}), "outside 0 to 1"),
    (lambda r: _instance(r).pop("Advantage"), "has no advantage"),
    (lambda r: _lira(r)["attack_experiment_logger"].update(attack_instance_logger=[]),
     "no readable repetitions"),
])
def test_a_report_without_the_figures_fails_closed_in_the_gates_words(
        real_report: Path, change: Any, message: str) -> None:
    path = real_report / "report.json"
    report = json.loads(path.read_text())
    change(report)
    path.write_text(json.dumps(report))
    with pytest.raises(AttackReportUnreadable, match=message) as caught:
        read_report(real_report, ["lira"])
    assert SECRET not in caught.value.user_message


def test_no_report_a_huge_one_or_not_json_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(AttackReportUnreadable, match="wrote no report"):
        read_report(tmp_path, ["lira"])
    (tmp_path / "report.json").write_bytes(b"{" * 100)
    with pytest.raises(AttackReportUnreadable, match="not JSON"):
        read_report(tmp_path, ["lira"])
    (tmp_path / "report.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(AttackReportUnreadable, match="larger than"):
        read_report(tmp_path, ["lira"])


def test_roc_arrays_out_of_range_or_pickled_are_not_drawn(real_report: Path) -> None:
    arrays = real_report / "report_arrays_864e4ba4_instance_0.npz"
    np.savez(arrays, fpr=np.array([0.0, 2.0]), tpr=np.array([0.0, 1.0]))
    assert read_report(real_report, ["lira"])[0].roc == ()
    np.savez(arrays, fpr=np.array([{"a": 1}, {"b": 2}], dtype=object), tpr=np.array([0.0, 1.0]))
    assert read_report(real_report, ["lira"])[0].roc == ()


def _lira(report: dict[str, Any]) -> dict[str, Any]:
    return next(v for v in report.values() if v["metadata"]["attack_name"] == "LiRA Attack")


def _instance(report: dict[str, Any]) -> dict[str, Any]:
    instances: dict[str, Any] = _lira(report)["attack_experiment_logger"][
        "attack_instance_logger"]
    return next(iter(instances.values()))
