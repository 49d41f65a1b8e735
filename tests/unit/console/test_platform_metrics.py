"""The platform in Prometheus: /metrics after real activity through HTTP (fake backend),
parsed with prometheus-client's parser and linted by `promtool`; refused without a token
(audited); served without one on a bind address of its own.

Which of the two /metrics is (the product's one rule): text the console composed itself.
Its label values are ids and fixed vocabularies (user ids, never names; rule ids, check names,
channels), never sandbox output: no log bytes, file names or commands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import select

from audit.events import Actor, AuditAction, Outcome
from console.cli import main
from console.core import Sealroom
from console.metrics import MetricsServer
from console.models import User
from console.services import audit_log
from console.services.platform_metrics import registry_for
from console.settings import Settings, SettingsError
from tests.helpers import (
    OPERATOR,
    bearer,
    free_port,
    login,
    recorded,
    supervisor_pass,
    wait_for_outbox,
)

ROOT = Path(__file__).resolve().parents[3]
PICKLE = b"\x80\x04K\x01."
METRICS_FILE = json.dumps({"accuracy": 0.9, "n_test": 2000}).encode()
SECRET = "P00017-diabetes"  # what an insider would print or name a file after

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def promtool_path() -> str:
    """promtool from SEALROOM_PROMTOOL, PATH, or where images/host/ensure-promtool.sh puts it;
    a test that needs it fails under `make test` when it is missing, else is skipped."""
    found = os.environ.get("SEALROOM_PROMTOOL") or shutil.which("promtool")
    cached = ROOT / ".cache" / "prometheus" / "usr" / "bin" / "promtool"
    if not found and os.access(cached, os.X_OK):
        found = str(cached)
    if not found:
        reason = "no promtool; run images/host/ensure-promtool.sh"
        if os.environ.get("SEALROOM_REQUIRE_ENGINE") == "1":
            pytest.fail(f"{reason} (make test requires it)")
        pytest.skip(reason)
    return found


@pytest.fixture
def promtool() -> str:
    return promtool_path()


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("bob", "approver"), ("carol", "approver"),
        ("root", "admin")]}


def _launch(client: FlaskClient, token: str) -> str:
    created = client.post("/api/v1/sandboxes", headers=bearer(token),
                          json={"dataset": "demo", "example": "mlp",
                                "command": f"echo {SECRET}"})
    assert created.status_code == 201, created.get_json()
    return str(created.get_json()["id"])


def _finished_with(client: FlaskClient, core: Sealroom, token: str, fake_backend: Any,
                   files: dict[str, bytes]) -> str:
    sandbox_id = _launch(client, token)
    outbox = core.settings.sandboxes_dir / sandbox_id / "outbox"
    for name, data in files.items():
        (outbox / name).write_bytes(data)
    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
    supervisor_pass(core)
    assert wait_for_outbox(client, token, sandbox_id)["state"] == "ready"
    return sandbox_id


def _release(client: FlaskClient, token: str, sandbox_id: str, files: list[str]) -> str:
    response = client.post("/api/v1/releases", headers=bearer(token), json={
        "sandbox": sandbox_id, "files": files, "justification": "paper"})
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


@pytest.fixture
def activity(client: FlaskClient, core: Sealroom, people: dict[str, str],
             fake_backend: Any) -> dict[str, str]:
    """A launch still running with log bytes read, a refused launch, a finished sandbox with
    two release requests (one rejected, one failing the pickle scan), a failed login, a
    verified chain and a checkpoint."""
    running = _launch(client, people["alice"])
    fake_backend.emit(fake_backend.handle_of(running), f"{SECRET}\n".encode())
    assert client.get(f"/api/v1/sandboxes/{running}/logs",
                      headers=bearer(people["alice"])).status_code == 200
    refused = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]),
                          json={"dataset": "demo", "example": "mlp",
                                "limits": {"cpus": 64}})
    assert refused.status_code == 403, refused.get_json()
    finished = _finished_with(client, core, people["alice"], fake_backend,
                              {"metrics.json": METRICS_FILE, "model.pt": PICKLE})
    reviewed = _release(client, people["alice"], finished, ["metrics.json"])
    assert client.post(f"/api/v1/releases/{reviewed}/reject", headers=bearer(people["bob"]),
                       json={"reason": "not now"}).status_code == 200
    _release(client, people["alice"], finished, ["model.pt"])
    assert login(client, "alice", "wrong password").status_code == 401
    audit_log.verify_chain(core, OPERATOR)
    core.checkpoint_if_due(force=True)
    return {"running": running, "finished": finished,
            "refused_rule": refused.get_json()["error"].get("rule") or "none"}


def _scrape(client: FlaskClient, token: str) -> str:
    response = client.get("/metrics", headers=bearer(token))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return response.get_data(as_text=True)


def test_a_scrape_after_activity_shows_it(client: FlaskClient, core: Sealroom,
                                          people: dict[str, str],
                                          activity: dict[str, str]) -> None:
    text = _scrape(client, people["root"])
    found = samples(text)
    assert value(found, "sealroom_sandboxes", status="running", kind="single") == 1
    assert value(found, "sealroom_sandboxes", status="succeeded", kind="single") == 1
    assert value(found, "sealroom_sandboxes", status="running", kind="mpi") == 0
    assert value(found, "sealroom_sandbox_launches_total", outcome="ok") == 2
    assert value(found, "sealroom_sandbox_launches_total", outcome="denied") == 1
    assert activity["refused_rule"] == "resources.roles.engineer.max_cpus"  # not the message
    assert value(found, "sealroom_sandbox_launch_refusals_total",
                 rule=activity["refused_rule"]) == 1
    assert value(found, "sealroom_sandbox_launch_duration_seconds_count") == 2
    assert value(found, "sealroom_sandbox_launch_duration_seconds_bucket", le="+Inf") == 2
    assert value(found, "sealroom_release_requests", status="rejected") == 1
    assert value(found, "sealroom_release_requests", status="checks_failed") == 1
    assert value(found, "sealroom_release_requests", status="in_review") == 0
    assert value(found, "sealroom_release_check_failures_total", check="file_type") == 1
    assert value(found, "sealroom_release_check_failures_total", check="leak_scan") == 0
    assert value(found, "sealroom_release_decision_seconds_count") == 1
    assert value(found, "sealroom_login_failures_total", kind="credentials") == 1
    assert value(found, "sealroom_audit_events_total", action="auth:session:login",
                 outcome="denied") == 1
    assert value(found, "sealroom_audit_chain_verification_ok") == 1
    verified = value(found, "sealroom_audit_chain_verified_up_to_event_id")
    assert 0 < verified < value(found, "sealroom_audit_head_event_id")
    assert value(found, "sealroom_audit_checkpoint_tree_size") > verified
    assert value(found, "sealroom_audit_checkpoint_timestamp_seconds") > 0
    with core.read() as session:
        alice = str(session.exec(select(User).where(User.name == "alice")).one().id)
    spent = value(found, "sealroom_disclosure_user_spent_today_bytes", user_id=alice,
                  channel="log")
    assert spent > 0
    # a user is an id in every label, never a name
    assert not {v for _, labels in found for _, v in labels} & set(people)
    assert value(found, "sealroom_disclosure_spent_bytes", channel="log") >= spent
    assert value(found, "sealroom_disclosure_user_daily_limit_bytes") == \
        core.policy.disclosure.per_user_daily_bytes
    assert value(found, "sealroom_ssh_sessions_open") == 0
    assert value(found, "sealroom_engine_up") == 1
    assert value(found, "sealroom_build_info", version="0.1.0",
                 policy_version=str(core.policy.version)) == 1
    assert SECRET not in text and "model.pt" not in text and "not now" not in text


def test_counters_carry_on_and_every_process_tells_the_same(
        client: FlaskClient, core: Sealroom, people: dict[str, str]) -> None:
    before = samples(_scrape(client, people["root"]))
    for _ in range(2):
        login(client, "alice", "wrong password")
    after = samples(_scrape(client, people["root"]))  # only the new events are tallied
    assert value(after, "sealroom_login_failures_total", kind="credentials") == \
        value(before, "sealroom_login_failures_total", kind="credentials") + 2
    from prometheus_client import generate_latest

    fresh = samples(generate_latest(registry_for(core)).decode())  # another process
    for key in ("sealroom_login_failures_total", "sealroom_sandbox_launches_total"):
        assert {k: v for k, v in fresh.items() if k[0] == key} == \
            {k: v for k, v in after.items() if k[0] == key}


def test_the_engine_down_is_reported_and_launches_fail_by_class(
        client: FlaskClient, core: Sealroom, people: dict[str, str], fake_backend: Any) -> None:
    _launch(client, people["alice"])
    fake_backend.engine_up = False
    supervisor_pass(core)  # the supervisor sees the engine stop
    failed = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]),
                         json={"dataset": "demo", "example": "mlp"})
    assert failed.status_code == 503
    found = samples(_scrape(client, people["root"]))
    assert value(found, "sealroom_engine_up") == 0
    assert value(found, "sealroom_sandbox_launches_total", outcome="failed") == 1
    assert value(found, "sealroom_sandbox_launch_failures_total",
                 reason="engine_unavailable") == 1


def test_sessions_ended_and_counted_login_refusals_are_tallied(
        client: FlaskClient, core: Sealroom, people: dict[str, str]) -> None:
    """Events as the gateway and the flood ledger write them (their own tests make them for
    real): the tally reads their outcome, rule and counts, never their text."""
    system, user = Actor.system("ssh-gateway"), Actor("alice", "engineer", "ssh-key")
    core.record(user, AuditAction.SSH_END, target="terminal:ssh-1", outcome=Outcome.DENIED,
                reason=f"ended: {SECRET}", rule="ssh.max_session_s")
    core.record(user, AuditAction.SSH_END, target="terminal:ssh-2", reason="closed", rule="")
    core.record(system, AuditAction.SSH_AUTH, target="ssh:mallory", outcome=Outcome.DENIED,
                reason="unknown key")
    core.record(Actor.anonymous("10.0.0.9"), AuditAction.LOGIN, target="user:alice",
                outcome=Outcome.DENIED, reason="too many attempts", limit="per_address")
    core.record(Actor.anonymous("10.0.0.9"), AuditAction.REQUEST_DENIED,
                target="source:10.0.0.9", outcome=Outcome.DENIED, reason="counted",
                count=7, suppressed=True, actions={"auth:session:login": 5, "x:y:z": 2})
    text = _scrape(client, people["root"])
    found = samples(text)
    assert value(found, "sealroom_ssh_sessions_ended_total", outcome="denied",
                 rule="ssh.max_session_s") == 1
    assert value(found, "sealroom_ssh_sessions_ended_total", outcome="ok", rule="none") == 1
    assert value(found, "sealroom_ssh_auth_refusals_total") == 1
    assert value(found, "sealroom_login_failures_total", kind="rate_limited") == 6
    assert SECRET not in text


def test_promtool_finds_no_problem_in_a_real_scrape(client: FlaskClient, people: dict[str, str],
                                                    activity: dict[str, str],
                                                    promtool: str) -> None:
    text = _scrape(client, people["root"])
    checked = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                             capture_output=True, check=False)
    assert checked.returncode == 0 and not checked.stdout.strip(), \
        checked.stdout + checked.stderr


def test_metrics_are_refused_without_the_permission_and_audited(
        client: FlaskClient, core: Sealroom, people: dict[str, str]) -> None:
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401
    engineer = client.get("/metrics", headers=bearer(people["alice"]))
    assert engineer.status_code == 403
    denied = [e for e in recorded(core, "auth:request:deny") if e.target == "GET /metrics"]
    assert [(e.actor, e.outcome) for e in denied] == [("anonymous", "denied"),
                                                      ("alice", "denied")]
    assert all(json.loads(e.details)["permission"] == "system:metrics:read" for e in denied)


def test_the_bind_address_serves_metrics_without_a_token(core: Sealroom) -> None:
    exporter = MetricsServer(core, "127.0.0.1:0")
    try:
        host, port = exporter.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
            assert answer.status == 200
            text = answer.read().decode()
    finally:
        exporter.stop()
    assert value(samples(text), "sealroom_engine_up") == 1
    assert "sealroom_build_info" in text


@pytest.mark.parametrize("bind", ["9464", "host:", ":9464", "host:port", "host:70000"])
def test_a_bad_metrics_bind_is_refused(tmp_path: Path, bind: str) -> None:
    with pytest.raises(SettingsError, match="SEALROOM_METRICS_BIND"):
        Settings.from_env(home=tmp_path, metrics_bind=bind)


DOCS = ROOT / "docs"
#: Where the monitoring docs name metrics: the dashboard's queries, the alert rules, prose.
NAMED_IN = (DOCS / "monitoring" / "grafana-dashboard.json", DOCS / "monitoring" / "alerts.yml",
            DOCS / "monitoring.md")


def _exposed(text: str) -> set[str]:
    """Every series name a scrape can hold: families, counters' `_total`, histograms' parts."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{part}" for part in ("_bucket", "_sum", "_count"))
    return names


def test_the_monitoring_docs_name_only_metrics_a_scrape_has(
        client: FlaskClient, people: dict[str, str], activity: dict[str, str]) -> None:
    exposed = _exposed(_scrape(client, people["root"]))
    for path in NAMED_IN:
        named = set(re.findall(r"\bsealroom_\w+", path.read_text()))
        assert named, path
        unknown = sorted(n for n in named if n not in exposed)
        assert unknown == [], f"{path.name} names metrics no scrape has: {unknown}"
    documented = set(re.findall(r"\bsealroom_\w+", (DOCS / "monitoring.md").read_text()))
    families = {n for n in exposed if not n.endswith(("_bucket", "_sum", "_count"))}
    assert sorted(families - documented) == [], "metrics docs/monitoring.md does not explain"


def test_the_gateway_alone_serves_metrics_on_its_bind_address(tmp_path: Path) -> None:
    env = {**os.environ, "SEALROOM_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "console.cli", "ssh-gateway", "--port", str(free_port()),
         "--metrics-bind", "127.0.0.1:0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:  # it prints the address once it listens
            if line.startswith("Prometheus metrics on "):
                url = line.split()[3]
                break
        else:
            raise AssertionError("the gateway never served metrics")
        with urllib.request.urlopen(url, timeout=20) as answer:
            text = answer.read().decode()
    finally:
        process.terminate()
        process.wait(timeout=60)
    found = samples(text)
    assert value(found, "sealroom_ssh_sessions_open") == 0
    assert value(found, "sealroom_audit_events_total", action="system:ssh_gateway:start",
                 outcome="ok") == 1


def test_a_bad_metrics_bind_stops_the_gateway_with_exit_2(tmp_path: Path) -> None:
    done = CliRunner().invoke(main, ["ssh-gateway", "--port", str(free_port()),
                                     "--metrics-bind", "nowhere"],
                              env={"SEALROOM_HOME": str(tmp_path / "home")})
    assert done.exit_code == 2
    assert "metrics cannot be served on nowhere" in done.output
