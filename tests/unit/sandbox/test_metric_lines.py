"""The metric lines the in-image helper prints (images/base/sealroom.py) and the parser that
reads them back (sandbox/training_metrics.py): a round trip, and every hostile line dropped
for a reason from the fixed list, never echoed."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.training_metrics import MARKER, Dropped, MetricPoint, parse_lines
from tests.helpers import UNTIMED_HEALTH_CHECKS

HELPER = Path(__file__).resolve().parents[3] / "images" / "base" / "sealroom.py"


def _helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sealroom_helper_under_test", HELPER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _line(record: Any) -> bytes:
    return MARKER + json.dumps(record).encode() + b"\n"


names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_./:-]{0,31}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)


# capfd is emptied at the start of each example.
@settings(suppress_health_check=(*UNTIMED_HEALTH_CHECKS, HealthCheck.function_scoped_fixture),
          deadline=None, max_examples=60)
@given(steps=st.lists(st.tuples(st.integers(0, 2**53), st.dictionaries(names, finite,
                                                                        min_size=1, max_size=4)),
                      max_size=8))
def test_what_the_helper_prints_the_console_reads_back(
        steps: list[tuple[int, dict[str, float]]], capfd: pytest.CaptureFixture[str]) -> None:
    helper = _helper()
    capfd.readouterr()
    helper.declare_total_steps(1000)
    for step, values in steps:
        print("ordinary output, kept apart")
        helper.log_metrics(step, **values)
    out = capfd.readouterr().out.encode()
    found = parse_lines(out, ranks=1)
    assert found.total_steps == 1000 and not found.dropped
    assert found.points == [MetricPoint(0, name, step, value)
                            for step, values in steps for name, value in values.items()]


@pytest.mark.parametrize("bad", [{"loss": "0.5"}, {"loss": None}, {"loss": True},
                                 {"loss": [1]}, {"x" * 33: 1.0}, {"a b": 1.0}, {"": 1.0}])
def test_the_helper_refuses_what_the_console_would_drop(bad: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        _helper().log_metrics(1, **bad)
    with pytest.raises(ValueError):
        _helper().log_metrics(1, loss=math.nan)


def test_hostile_lines_are_dropped_by_reason_and_never_echoed() -> None:
    secret = "P00017 diabetes"
    chunk = b"".join([
        _line({"step": 1, "values": {"loss": 0.5}}),
        _line({"step": 2, "values": {"loss": secret}}),  # a string value
        MARKER + b'{"step": 3, "values": {"loss": NaN}}\n',  # NaN spelled out
        _line({"step": 4, "values": {"loss": 10**400}}),  # past a float64
        _line({"step": 5, "values": {"n" * 10_000: 1.0}}),  # a 10 KB name: too long a line
        _line({"step": 6, "values": {secret: 1.0}}),  # a name outside the charset
        _line({"step": 7, "values": {"loss": 1.0}, "note": secret}),  # an extra field
        _line({"step": -1, "values": {"loss": 1.0}}),
        _line({"step": 8, "rank": 3, "values": {"loss": 1.0}}),  # no rank 3 here
        _line([secret]),
        MARKER + secret.encode() + b"\n",
        b"print " + _line({"step": 9, "values": {"loss": 1.0}}),  # not at a line's start
        MARKER + b"\xff\xfe\n",
    ])
    found = parse_lines(chunk, ranks=1)
    assert found.points == [MetricPoint(0, "loss", 1, 0.5)]
    assert found.dropped == {Dropped.VALUE: 3, Dropped.MALFORMED: 6, Dropped.NAME: 1,
                             Dropped.RANK: 1}
    assert all(isinstance(reason, str) and reason in set(Dropped) for reason in found.dropped)


def test_mpirun_tags_name_the_rank_and_lines_past_the_cap_are_counted_unread() -> None:
    chunk = (b"[1,1]<stdout>:" + _line({"step": 1, "rank": 0, "values": {"loss": 2.0}})
             + b"[1,0]<stderr>:" + _line({"step": 1, "values": {"loss": 3.0}})
             + _line({"step": 2, "values": {"loss": 1.0}}) * 5)
    found = parse_lines(chunk, ranks=2, stop_after=2)
    assert found.points == [MetricPoint(1, "loss", 1, 2.0), MetricPoint(0, "loss", 2, 1.0)]
    assert found.dropped == {Dropped.RATE: 4}  # stderr is never a metric line


def test_saved_final_values_are_a_metrics_file_the_gate_accepts(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from sandbox.gate.metrics import check_metrics
    from sandbox.gate.rules import CheckRules

    helper = _helper()
    helper.log_metrics(1, loss=0.9, accuracy=0.5)
    helper.log_metrics(2, loss=0.4, accuracy=0.75)
    helper.log_metrics(2, rank=1, loss=7.0)  # another rank's: not the run's final values
    written = helper.save_metrics(str(tmp_path / "metrics.json"))
    assert written == {"accuracy": 0.75, "loss": 0.4}
    data = (tmp_path / "metrics.json").read_bytes()
    assert json.loads(data) == written
    assert check_metrics(data, ".json", CheckRules()).values == 2
