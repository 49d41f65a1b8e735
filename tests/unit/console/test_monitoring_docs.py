"""The monitoring docs hold: the alert rules load and each alert fires on a synthetic series
and stays quiet otherwise (`promtool test rules`), and every Grafana dashboard query is
valid PromQL. That they name only metrics a scrape has is in test_platform_metrics.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.unit.console.test_platform_metrics import DOCS, promtool_path

HERE = Path(__file__).resolve().parent


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool_path(), *args], text=True, capture_output=True,
                          check=False)


def test_the_alert_rules_load() -> None:
    checked = _promtool("check", "rules", str(DOCS / "monitoring" / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_alert_fires_when_it_should_and_only_then() -> None:
    tests = HERE / "monitoring_alerts_test.yml"
    ran = _promtool("test", "rules", str(tests))
    assert ran.returncode == 0 and "SUCCESS" in ran.stdout, ran.stdout + ran.stderr
    rules = yaml.safe_load((DOCS / "monitoring" / "alerts.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    cases = yaml.safe_load(tests.read_text())["tests"]
    fired = {t["alertname"] for case in cases for t in case["alert_rule_test"]
             if t["exp_alerts"]}
    quiet = {t["alertname"] for case in cases for t in case["alert_rule_test"]
             if not t["exp_alerts"]}
    assert fired == alerts and quiet == alerts


def _exprs(panels: list[dict[str, Any]]) -> list[str]:
    found = []
    for panel in panels:
        found += [t["expr"] for t in panel.get("targets", ())]
        found += _exprs(panel.get("panels", []))
    return found


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads((DOCS / "monitoring" / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    exprs = _exprs(dashboard["panels"])
    assert len(exprs) >= 20
    # Grafana's own variable, as Grafana would fill it in.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"sealroom:dashboard_query_{n}:value",
         "expr": e.replace("$__rate_interval", "5m")} for n, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = _promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
