"""Policies through the API with the fake backend: reading versions, validation that refuses
with the line and changes nothing, every rule kind denying through the real launch, log and
release paths (rule and version in the error and the audit event), dry runs that match what
activation does, restore, and activation seen by another process at once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient

from audit.models import AuditEvent
from console.core import Sealroom
from console.models import ReleaseRequest
from console.services import policy as policy_service
from tests.helpers import (
    bearer,
    change_policy,
    recorded,
    safetensors_bytes,
    supervisor_pass,
)

OTHER_DIGEST = "sha256:" + "cd" * 32


def _details(event: AuditEvent) -> dict[str, Any]:
    return dict(json.loads(event.details))


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("bob", "approver"), ("carol", "approver"),
        ("dave", "approver"), ("sam", "security_officer"), ("audrey", "auditor")]}


def _active_text(client: FlaskClient, token: str) -> str:
    return str(client.get("/api/v1/policy", headers=bearer(token)).get_json()["yaml"])


def _edited(text: str, changes: dict[str, Any]) -> str:
    data = yaml.safe_load(text)
    for section, values in changes.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section].update(values)
        else:
            data[section] = values
    return yaml.safe_dump(data, sort_keys=False)


def _activate(client: FlaskClient, token: str, text: str, reason: str = "tighten") -> Any:
    return client.post("/api/v1/policy/activate", headers=bearer(token),
                       json={"yaml": text, "reason": reason})


def _launch(client: FlaskClient, token: str, **limits: Any) -> Any:
    return client.post("/api/v1/sandboxes", headers=bearer(token),
                       json={"dataset": "demo", "example": "mlp", "limits": limits})


# --- reading --------------------------------------------------------------------------------


def test_fresh_installation_has_the_default_as_version_1(client: FlaskClient, core: Sealroom,
                                                         people: dict[str, str]) -> None:
    versions = client.get("/api/v1/policy/versions", headers=bearer(people["sam"])).get_json()
    # the dataset fixture registered `demo` for engineers: that activated version 2
    assert versions["active"] == 2
    first, second = versions["versions"][1], versions["versions"][0]
    assert (first["version"], first["author"]) == (1, "system")
    assert (second["author"], second["reason"]) == ("cli:test", "dataset demo registered")
    v1 = client.get("/api/v1/policy/versions/1", headers=bearer(people["audrey"])).get_json()
    assert v1["yaml"].startswith("# Sealroom default policy")
    active = client.get("/api/v1/policy", headers=bearer(people["audrey"])).get_json()
    assert active["version"] == 2
    assert active["policy"]["datasets"] == {"demo": {
        "allow": ["role:engineer"], "versions": [], "isolation": "runc", "ssh": True}}
    assert "# Sealroom default policy" in active["yaml"]  # the officer's comments are kept
    assert client.get("/api/v1/policy/versions/9", headers=bearer(people["sam"])
                      ).status_code == 404
    assert [e.target for e in recorded(core, "policy:policy:view")][-2:] == \
        ["policy:1", "policy:2"]
    activations = recorded(core, "policy:policy:activate")
    assert [(e.actor, _details(e).get("version")) for e in activations] == \
        [("system", 1), ("cli:test", 2)]


def test_only_officers_write_and_auditors_read(client: FlaskClient,
                                               people: dict[str, str]) -> None:
    text = _active_text(client, people["sam"])
    assert client.get("/api/v1/policy", headers=bearer(people["alice"])).status_code == 403
    for token in (people["alice"], people["audrey"], people["bob"]):
        assert client.post("/api/v1/policy/validate", headers=bearer(token),
                           json={"yaml": text}).status_code == 403
        assert _activate(client, token, text).status_code == 403
    assert client.get("/api/v1/policy").status_code == 401


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("change, line, fragment", [
    (lambda t: t.replace("  max_pids: 512", "  max_pids: [512"), None, "not valid YAML"),
    (lambda t: t.replace("  leak_scan: true", "  leak_scan: true\n  leak_scna: false"),
     "leak_scna", "unknown field 'leak_scna'"),
    (lambda t: t.replace("max_memory_mb: 8192", "max_memory_mb: -8192"),
     "max_memory_mb: -8192", "greater than or equal to 64"),
    (lambda t: t.replace("demo:\n    allow", "cohort9:\n    allow"), "cohort9:",
     "no dataset named 'cohort9' is registered (registered: demo)"),
    (lambda t: t.replace("single: none", "single: bridge"), "single: bridge",
     "must be 'none'"),
])
def test_invalid_documents_are_refused_with_the_line_and_change_nothing(
        client: FlaskClient, core: Sealroom, people: dict[str, str],
        change: Callable[[str], str], line: str | None, fragment: str) -> None:
    text = change(_active_text(client, people["sam"]))
    expected = next((n for n, row in enumerate(text.splitlines(), 1) if line and line in row),
                    None)
    for path in ("/api/v1/policy/validate", "/api/v1/policy/dry-run", "/api/v1/policy/activate"):
        response = client.post(path, headers=bearer(people["sam"]),
                               json={"yaml": text, "reason": "bad"})
        assert response.status_code == 400, path
        error = response.get_json()["error"]
        assert error["code"] == "invalid_policy"
        assert fragment in error["message"]
        if expected:
            assert error["line"] == expected and error["message"].startswith(f"line {expected}:")
        assert error["problems"][0]["line"] == error["line"]
    assert core.policy.version == 2
    assert len(policy_service.versions(core)) == 2
    for action in ("policy:policy:validate", "policy:policy:dry_run", "policy:policy:activate"):
        assert recorded(core, action)[-1].outcome == "denied"


def test_validate_returns_warnings_and_accepts_raw_yaml(client: FlaskClient,
                                                         people: dict[str, str]) -> None:
    text = _edited(_active_text(client, people["sam"]), {"release": {"approvals_needed": 4}})
    response = client.post("/api/v1/policy/validate", headers={
        **bearer(people["sam"]), "Content-Type": "application/yaml"}, data=text)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["valid"] is True
    assert "only 3 approver(s) exist" in body["warnings"][0]["message"]


def test_activation_needs_a_reason_and_a_change(client: FlaskClient, core: Sealroom,
                                                people: dict[str, str]) -> None:
    text = _active_text(client, people["sam"])
    changed = _edited(text, {"disclosure": {"per_sandbox_bytes": 4096}})
    missing = _activate(client, people["sam"], changed, reason="  ")
    assert missing.status_code == 400 and "reason" in missing.get_json()["error"]["message"]
    same = _activate(client, people["sam"], text)
    assert same.status_code == 409 and "already the active policy" in \
        same.get_json()["error"]["message"]
    stale = client.post("/api/v1/policy/activate", headers=bearer(people["sam"]),
                        json={"yaml": changed, "reason": "x", "base_version": 1})
    assert stale.status_code == 409 and "version 2 was activated after version 1" in \
        stale.get_json()["error"]["message"]
    assert core.policy.version == 2
    done = client.post("/api/v1/policy/activate", headers=bearer(people["sam"]),
                       json={"yaml": changed, "reason": "smaller logs", "base_version": 2})
    assert done.status_code == 201, done.get_json()
    assert done.get_json()["version"] == 3 and done.headers["Location"].endswith("/versions/3")
    event = recorded(core, "policy:policy:activate")[-1]
    assert (event.actor, event.reason, event.target) == ("sam", "smaller logs", "policy:3")
    assert _details(event)["sha256"] == done.get_json()["sha256"]
    assert core.policy.disclosure.per_sandbox_bytes == 4096


# --- every rule kind, through the real paths ------------------------------------------------


@pytest.mark.parametrize("changes, limits, rule", [
    ({"resources": {"roles": {"engineer": {"max_cpus": 0.5}}}}, {"cpus": 1},
     "resources.roles.engineer.max_cpus"),
    ({"resources": {"roles": {"engineer": {"max_memory_mb": 512}}}}, {"memory_mb": 1024},
     "resources.roles.engineer.max_memory_mb"),
    ({"resources": {"roles": {"engineer": {"max_pids": 64}}}}, {"pids": 128},
     "resources.roles.engineer.max_pids"),
    ({"resources": {"roles": {"engineer": {"max_timeout_s": 60}}}}, {"timeout_s": 600},
     "resources.roles.engineer.max_timeout_s"),
    ({"resources": {"roles": {"engineer": {"max_concurrent": 0}}}}, {},
     "resources.roles.engineer.max_concurrent"),
    ({"resources": {"users": {"alice": {"max_cpus": 0.25}}}}, {"cpus": 0.5},
     "resources.users.alice.max_cpus"),
    ({}, {"gpus": 1}, "resources.default.max_gpus"),
    ({"datasets": {"demo": {"allow": ["bob"]}}}, {}, "datasets.demo.allow"),
    ({"groups": {"team": ["carol"]}, "datasets": {"demo": {"allow": ["group:team"]}}}, {},
     "datasets.demo.allow"),
    ({"launch": {"roles": ["approver"]}}, {}, "launch.roles"),
    ({"images": {"allow_registered": False, "digests": [OTHER_DIGEST]}}, {}, "images.digests"),
])
def test_each_launch_rule_denies_through_the_launch_path(
        client: FlaskClient, core: Sealroom, people: dict[str, str],
        changes: dict[str, Any], limits: dict[str, Any], rule: str) -> None:
    if changes:
        activated = _activate(client, people["sam"],
                              _edited(_active_text(client, people["sam"]), changes))
        assert activated.status_code == 201, activated.get_json()
    version = core.policy.version
    response = _launch(client, people["alice"], **limits)
    assert response.status_code == 403, response.get_json()
    error = response.get_json()["error"]
    assert (error["code"], error["rule"], error["policy_version"]) == \
        ("policy_denied", rule, version)
    event = recorded(core, "sandbox:sandbox:launch")[-1]
    assert event.outcome == "denied" and event.reason == error["message"]
    assert (_details(event)["rule"], _details(event)["policy_version"]) == (rule, version)


def test_allowed_launch_records_the_deciding_version(client: FlaskClient, core: Sealroom,
                                                     people: dict[str, str]) -> None:
    assert _launch(client, people["alice"], cpus=2).status_code == 201
    details = _details(recorded(core, "sandbox:sandbox:launch")[-1])
    assert (details["rule"], details["policy_version"], details["network"]) == \
        ("launch", 2, "none")
    # a policy may allow GPUs, but this installation has none to give: a clear refusal
    change_policy(core, {"resources": {"default": {"max_gpus": 1}}})
    response = _launch(client, people["alice"], gpus=1)
    assert response.status_code == 400
    assert "GPUs" in response.get_json()["error"]["message"]


def test_log_viewing_budget(client: FlaskClient, core: Sealroom, people: dict[str, str],
                            fake_backend: Any) -> None:
    """Log text is sandbox bytes shown to a person: it spends the disclosure budget (in
    256-byte blocks), and once nothing new fits the channel answers 403 with the rule."""
    change_policy(core, {"disclosure": {"per_sandbox_bytes": 512}})
    sandbox_id = _launch(client, people["alice"]).get_json()["id"]
    fake_backend.emit(fake_backend.handle_of(sandbox_id), b"x" * 1000)  # 10 + 1000 bytes
    url = f"/api/v1/sandboxes/{sandbox_id}/logs"
    first = client.get(url, headers=bearer(people["alice"]))
    assert first.get_data() == (b"epoch 1/1\n" + b"x" * 1000)[:512]
    assert first.headers["X-Log-Total"] == "1010"
    assert client.get(url, headers=bearer(people["alice"])).get_data() == first.get_data()
    refused = client.get(url + "?offset=512", headers=bearer(people["alice"]))
    assert refused.status_code == 403
    error = refused.get_json()["error"]
    assert error["rule"] == "disclosure.per_sandbox_bytes" and "512 bytes" in error["message"]
    assert client.get(url + "?offset=-3", headers=bearer(people["alice"])).status_code == 403
    event = recorded(core, "sandbox:logs:view")[-1]
    assert event.outcome == "denied"
    assert (_details(event)["rule"], _details(event)["policy_version"]) == \
        ("disclosure.per_sandbox_bytes", core.policy.version)


@pytest.fixture
def finished(client: FlaskClient, people: dict[str, str], core: Sealroom,
             fake_backend: Any) -> Callable[..., str]:
    def make(files: dict[str, bytes]) -> str:
        sandbox_id = str(_launch(client, people["alice"]).get_json()["id"])
        fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
        for name, data in files.items():
            (core.settings.sandboxes_dir / sandbox_id / "outbox" / name).write_bytes(data)
        supervisor_pass(core)  # after the files exist: the exit schedules the hashing
        client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(people["alice"]))
        return sandbox_id

    return make


MODEL = safetensors_bytes({"w": [0.5, -1.25, 3.0]})
METRICS = json.dumps({"accuracy": 0.9, "n_test": 2000}).encode()


def _request_release(client: FlaskClient, token: str, sandbox_id: str,
                     files: list[str]) -> dict[str, Any]:
    response = client.post("/api/v1/releases", headers=bearer(token), json={
        "sandbox": sandbox_id, "files": files, "justification": "paper"})
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


@pytest.mark.parametrize("changes, files, rule", [
    ({"release": {"metrics_types": [".csv"]}}, {"metrics.json": METRICS}, "release.file_types"),
    ({"release": {"small_count_k": 5000}}, {"metrics.json": METRICS}, "release.small_count_k"),
    ({"release": {"max_metric_values": 1}}, {"metrics.json": METRICS},
     "release.max_metric_values"),
    ({"release": {"max_total_mb": 1, "max_file_mb": 1}},
     {"model.safetensors": safetensors_bytes({"w": [0.0] * 200_000}),
      "model2.safetensors": safetensors_bytes({"w": [0.0] * 200_000})},
     "release.max_total_mb"),
    ({}, {"model.pt": b"\x80\x04K\x01."}, "release.allow_pickle"),
])
def test_each_release_rule_denies_through_the_release_path(
        client: FlaskClient, core: Sealroom, people: dict[str, str],
        finished: Callable[..., str], changes: dict[str, Any], files: dict[str, bytes],
        rule: str) -> None:
    if changes:
        change_policy(core, changes)
    release = _request_release(client, people["alice"], finished(files), list(files))
    assert release["status"] == "checks_failed"
    assert release["policy_version"] == core.policy.version
    failed = [r for r in release["checks"]["results"] if not r["passed"]]
    assert failed and failed[0]["rule"] == rule, failed
    event = recorded(core, "release:request:check")[-1]
    assert event.outcome == "denied"
    assert (_details(event)["rule"], _details(event)["policy_version"]) == \
        (rule, core.policy.version)


def test_approvals_needed_comes_from_the_policy(client: FlaskClient, core: Sealroom,
                                               people: dict[str, str],
                                               finished: Callable[..., str]) -> None:
    change_policy(core, {"release": {"approvals_needed": 3}})
    release = _request_release(client, people["alice"], finished({"model.safetensors": MODEL}),
                               ["model.safetensors"])
    assert release["approvals_needed"] == 3
    for name in ("bob", "carol"):
        approved = client.post(f"/api/v1/releases/{release['id']}/approve",
                               headers=bearer(people[name])).get_json()
        assert approved["status"] == "in_review"
    details = _details(recorded(core, "release:request:approve")[-1])
    assert (details["rule"], details["needed"]) == ("release.approvals_needed", 3)
    last = client.post(f"/api/v1/releases/{release['id']}/approve",
                       headers=bearer(people["dave"])).get_json()
    assert last["status"] == "released"


# --- dry run, activation, restore -----------------------------------------------------------


def test_dry_run_lists_exactly_what_activation_then_does(
        client: FlaskClient, core: Sealroom, people: dict[str, str],
        finished: Callable[..., str]) -> None:
    with_metrics = _request_release(client, people["alice"],
                                    finished({"model.safetensors": MODEL,
                                              "metrics.json": METRICS}),
                                    ["model.safetensors", "metrics.json"])
    model_only = _request_release(client, people["alice"],
                                  finished({"model.safetensors": MODEL}), ["model.safetensors"])
    big = _launch(client, people["alice"], cpus=2).get_json()["id"]
    small = _launch(client, people["alice"], cpus=1).get_json()["id"]
    third = _launch(client, people["alice"], cpus=1).get_json()["id"]
    text = _edited(_active_text(client, people["sam"]), {
        "resources": {"roles": {"engineer": {"max_cpus": 1.5, "max_concurrent": 2}}},
        "release": {"metrics_types": [".csv"], "approvals_needed": 3}})

    dry = client.post("/api/v1/policy/dry-run", headers=bearer(people["sam"]),
                      json={"yaml": text})
    assert dry.status_code == 200, dry.get_json()
    result = dry.get_json()
    assert result["version"] == 3
    assert {(f["id"], f["rule"]) for f in result["sandboxes"]} == {
        (big, "resources.roles.engineer.max_cpus"),
        (third, "resources.roles.engineer.max_concurrent")}  # the third one started last
    assert small not in {f["id"] for f in result["sandboxes"]}
    # What changes, against the active version, as the dry-run page shows it.
    assert result["against"] == 2
    diff = result["diff"].splitlines()
    assert diff[:2] == ["--- version 2 (active)", "+++ version 3 (this dry run)"]
    assert any(line.startswith("-") and "max_cpus: 2.0" in line for line in diff)
    assert any(line.startswith("+") and "max_cpus: 1.5" in line for line in diff)
    assert [(f["id"], f["rule"], f["denied"]) for f in result["releases"]] == [
        (with_metrics["id"], "release.file_types", True),
        (model_only["id"], "release.approvals_needed", False)]
    assert core.policy.version == 2  # a dry run changes nothing
    assert recorded(core, "policy:policy:dry_run")[-1].outcome == "ok"

    activated = _activate(client, people["sam"], text, "metrics as CSV only")
    assert activated.status_code == 201
    assert activated.get_json()["dry_run"] == {k: v for k, v in result.items()
                                               if k not in ("against", "diff")}
    decided = {(e.target, _details(e)["rule"]) for e in recorded(core, "policy:decision:deny")
               if _details(e)["policy_version"] == 3}
    assert decided == {(f"{f['kind']}:{f['id']}", f["rule"])
                       for f in result["sandboxes"] + result["releases"]}
    with core.transaction() as session:
        denied = session.get(ReleaseRequest, with_metrics["id"])
        raised = session.get(ReleaseRequest, model_only["id"])
    assert denied is not None and raised is not None
    assert denied.status == "checks_failed"
    assert denied.reason.startswith("policy version 3 denies it (release.file_types)")
    assert (raised.status, raised.approvals_needed) == ("in_review", 3)
    # the running sandboxes keep running, listed for the officer
    assert {f.id for f in policy_service.forbidden_sandboxes(core)} == {big, third}


def test_restore_a_previous_version(client: FlaskClient, core: Sealroom,
                                    people: dict[str, str]) -> None:
    v2 = _active_text(client, people["sam"])
    assert _activate(client, people["sam"], _edited(v2, {
        "resources": {"roles": {"engineer": {"max_cpus": 0.5}}}})).status_code == 201
    assert _launch(client, people["alice"], cpus=1).status_code == 403
    restored = client.post("/api/v1/policy/versions/2/restore", headers=bearer(people["sam"]),
                           json={"reason": "too strict for the course"})
    assert restored.status_code == 201, restored.get_json()
    body = restored.get_json()
    assert (body["version"], body["restored_from"]) == (4, 2)
    assert client.get("/api/v1/policy", headers=bearer(people["sam"])).get_json()["yaml"] == v2
    assert _launch(client, people["alice"], cpus=1).status_code == 201
    event = recorded(core, "policy:policy:restore")[-1]
    assert (event.target, event.reason, _details(event)["restored_from"]) == \
        ("policy:4", "too strict for the course", 2)
    again = client.post("/api/v1/policy/versions/4/restore", headers=bearer(people["sam"]),
                        json={"reason": "again"})
    assert again.status_code == 409  # it is the active text already
    assert client.post("/api/v1/policy/versions/2/restore", headers=bearer(people["sam"]),
                       json={}).status_code == 400  # a reason is required


def test_another_process_sees_an_activation_at_once(client: FlaskClient, core: Sealroom,
                                                    people: dict[str, str],
                                                    fake_backend: Any) -> None:
    other = Sealroom(core.settings, backend=fake_backend)
    try:
        assert other.policy.version == 2
        change_policy(other, {"resources": {"roles": {"engineer": {"max_cpus": 0.5}}}})
        assert core.policy.version == 3
        assert _launch(client, people["alice"], cpus=1).get_json()["error"]["policy_version"] \
            == 3
    finally:
        other.close()
