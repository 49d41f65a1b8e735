"""The model-risk check through HTTP with the fake backend: a model with a target description
waits in `submitted` while the attack sandbox runs, then is judged from the numbers of the
report it wrote; without a description it is refused or passed as the policy says; every
outcome audited. (The same flow on the real engine, with real attacks, is
tests/integration/test_model_risk_engine.py.)

The check's reason is text the console composed itself, with two-decimal figures: a hostile
report's text never reaches the engineer or the approver."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from audit.events import Actor
from console.core import Caller, Sealroom
from console.services import images as images_service
from console.services import model_risk
from tests.helpers import (
    bearer,
    change_policy,
    login,
    recorded,
    safetensors_bytes,
    supervisor_pass,
)

DATA = Path(__file__).parents[2] / "data"
SECRET = "Jane Roe 1970-01-01"
TARGET = json.dumps({"version": 1}).encode()  # the fake attack run does not read it


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("bob", "approver"), ("carol", "approver")]}


@pytest.fixture
def attack_runs(core: Sealroom, fake_backend: Any, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[list[Path | None]]:
    """What each next attack run writes to its outbox (a report directory, or None for
    nothing); runs happen synchronously, in the request that started them."""
    images_service.register_image(core, Caller(Actor.system()), "sacroml", "sealroom/sacroml:t",
                                  "sha256:" + "5" * 64)
    planned: list[Path | None] = []
    original = fake_backend.start

    def start(state: Any) -> Any:
        spec = fake_backend.created_specs[-1]
        if not spec.sandbox_id.startswith("atk-"):  # the sandbox the model comes from
            return original(state)
        assert spec.network.value == "none" and spec.inputs[0].sandbox_id
        source = planned.pop(0)
        if source is not None:
            shutil.copytree(source, core.storage.outbox(spec.sandbox_id), dirs_exist_ok=True)
        started = original(state)
        fake_backend.finish(fake_backend.handle_of(spec.sandbox_id), exit_code=0)
        return started

    monkeypatch.setattr(fake_backend, "start", start)
    monkeypatch.setattr(model_risk, "start",
                        lambda core, release_id: model_risk._run_guarded(core, release_id))
    yield planned
    assert not planned, "an attack run that was planned did not happen"


@pytest.fixture
def finished(client: FlaskClient, people: dict[str, str], core: Sealroom,
             fake_backend: Any) -> Callable[..., str]:
    def make(files: dict[str, bytes]) -> str:
        created = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]),
                              json={"dataset": "demo", "example": "mlp"})
        sandbox_id: str = created.get_json()["id"]
        fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
        outbox = core.settings.sandboxes_dir / sandbox_id / "outbox"
        for name, data in files.items():
            (outbox / name).write_bytes(data)
        supervisor_pass(core)
        return sandbox_id

    return make


def _model() -> dict[str, bytes]:
    return {"model.safetensors": safetensors_bytes({"w": [0.5, -1.25]}),
            "model.safetensors.target.json": TARGET}


def _request(client: FlaskClient, token: str, sandbox_id: str) -> Any:
    response = client.post("/api/v1/releases", headers=bearer(token), json={
        "sandbox": sandbox_id, "files": ["model.safetensors"], "justification": "the paper"})
    assert response.status_code == 201, response.get_json()
    return client.get(f"/api/v1/releases/{response.get_json()['id']}",
                      headers=bearer(token)).get_json()


def _risk(body: dict[str, Any]) -> dict[str, Any]:
    (result,) = [r for r in body["checks"]["results"] if r["check"] == "model_risk"]
    return dict(result)


def _report(tmp_path: Path) -> Path:
    directory = tmp_path / "report"
    directory.mkdir()
    shutil.copy(DATA / "sacroml-report.json", directory / "report.json")
    shutil.copy(DATA / "report_arrays_864e4ba4_instance_0.npz", directory)
    return directory


def test_an_overfitted_model_fails_the_check_with_its_figures(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str], attack_runs: list[Path | None], tmp_path: Path) -> None:
    attack_runs.append(_report(tmp_path))  # LiRA AUC 0.73, worst-case 0.74
    body = _request(client, people["alice"], finished(_model()))
    assert body["status"] == "checks_failed"
    risk = _risk(body)
    assert risk["rule"] == "release.model_risk.limits.lira.auc"
    assert "LiRA (likelihood ratio): AUC 0.73 is above the limit 0.60" in risk["reason"]
    figures = body["checks"]["model_risk"]
    assert figures["image"] == "sha256:" + "5" * 64
    (lira, worst) = figures["attacks"]["model.safetensors"]
    assert (lira["attack"], lira["auc"], len(lira["roc"]["tpr"])) == ("lira", 0.73, 21)
    assert worst["attack"] == "worstcase"
    login(client, "bob")  # the approver's page: the figures and the console's ROC drawing
    page = client.get(f"/releases/{body['id']}").get_data(as_text=True)
    assert 'id="model-risk"' in page and "0.73" in page and "(limit 0.60)" in page
    assert page.count('class="roc-curve') == 1  # LiRA's; the worst case's arrays are absent
    (event,) = recorded(core, "release:request:model-risk")
    assert (event.outcome, event.actor) == ("denied", "system")
    assert json.loads(event.details)["rule"] == "release.model_risk.limits.lira.auc"


def test_within_the_limits_the_request_goes_to_review_with_its_figures(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str], attack_runs: list[Path | None], tmp_path: Path) -> None:
    change_policy(core, {"release": {"model_risk": {"limits": {
        "lira": {"auc": 0.8}, "worstcase": {"auc": 0.8}}}}})
    attack_runs.append(_report(tmp_path))
    body = _request(client, people["alice"], finished(_model()))
    assert body["status"] == "in_review"
    assert _risk(body)["passed"]
    assert "within the policy's limits" in _risk(body)["reason"]
    assert [e.outcome for e in recorded(core, "release:request:model-risk")] == ["ok"]

    # Approved and sealed: the figures and the attack image are in the signed provenance,
    # and the offline verifier prints them.
    client.post(f"/api/v1/releases/{body['id']}/approve", headers=bearer(people["bob"]))
    client.post(f"/api/v1/releases/{body['id']}/approve", headers=bearer(people["carol"]))
    bundle = client.get(f"/api/v1/releases/{body['id']}/bundle", headers=bearer(people["bob"]))
    assert bundle.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(bundle.data)) as tar:
        tar.extractall(tmp_path / "out", filter="data")
    key = tmp_path / "release.pem"
    key.write_bytes(client.get("/api/v1/keys/release.pem").data)
    verified = subprocess.run([sys.executable, "-m", "console.cli", "release", "verify",
                               str(tmp_path / "out" / body["id"]), "--key", str(key)],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"Model risk  attacked with image sha256:{'5' * 64}" in verified.stdout
    assert "lira       AUC 0.73  advantage 0.28" in verified.stdout


def test_a_hostile_report_shows_no_text_to_anyone(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str], attack_runs: list[Path | None], tmp_path: Path) -> None:
    report = json.loads((DATA / "sacroml-report.json").read_text())
    for entry in report.values():
        entry["metadata"]["target_model"] = SECRET
        for instance in entry["attack_experiment_logger"]["attack_instance_logger"].values():
            instance.update({k: SECRET for k, v in instance.items()
                             if k not in ("AUC", "Advantage", "TPR@0.1%")})
    directory = tmp_path / "hostile"
    directory.mkdir()
    (directory / "report.json").write_text(json.dumps(
        {f"{SECRET} {n}": v for n, v in enumerate(report.values())}))
    attack_runs.append(directory)
    sandbox_id = finished(_model())
    body = _request(client, people["alice"], sandbox_id)
    assert SECRET not in json.dumps(body)
    assert body["status"] == "checks_failed"
    api = client.get(f"/api/v1/releases/{body['id']}", headers=bearer(people["bob"]))
    assert SECRET not in api.get_data(as_text=True)
    login(client, "bob")
    page = client.get(f"/releases/{body['id']}").get_data(as_text=True)
    assert 'id="model-risk"' in page and SECRET not in page
    assert all(SECRET not in (e.reason + e.details) for e in recorded(core))


def test_no_report_fails_closed(client: FlaskClient, people: dict[str, str],
                                finished: Callable[..., str],
                                attack_runs: list[Path | None]) -> None:
    attack_runs.append(None)
    body = _request(client, people["alice"], finished(_model()))
    assert body["status"] == "checks_failed"
    assert _risk(body)["reason"] == "the attack run wrote no report"


@pytest.mark.parametrize("required", [False, True])
def test_a_model_without_a_target_description_is_refused_or_allowed_as_the_policy_says(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str], attack_runs: list[Path | None], required: bool) -> None:
    change_policy(core, {"release": {"model_risk": {"required": required}}})
    body = _request(client, people["alice"], finished(
        {"model.safetensors": safetensors_bytes({"w": [1.0]})}))
    risk = _risk(body)
    assert risk["passed"] is not required
    if required:
        assert body["status"] == "checks_failed"
        assert risk["rule"] == "release.model_risk.required"
        assert "sealroom.save_target" in risk["reason"]
    else:
        assert body["status"] == "in_review"
        assert "not attacked" in risk["reason"]
    assert recorded(core, "release:request:model-risk") == []  # nothing was attacked


def test_without_the_attack_image_a_described_model_is_refused(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_risk, "start",
                        lambda core, release_id: model_risk._run_guarded(core, release_id))
    body = _request(client, people["alice"], finished(_model()))
    assert body["status"] == "checks_failed"
    assert "attack image" in _risk(body)["reason"]


def test_the_cli_requests_waits_and_prints_the_attacks(
        served: str, people: dict[str, str], finished: Callable[..., str],
        attack_runs: list[Path | None], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from console.cli import main

    attack_runs.append(_report(tmp_path))
    sandbox_id = finished(_model())
    alice = ["--url", served, "--token", people["alice"]]
    requested = CliRunner().invoke(main, ["release", "request", sandbox_id, "model.safetensors",
                                          "-j", "the paper", *alice])
    assert requested.exit_code == 1, requested.output  # its checks failed
    waiting, first = requested.output.splitlines()[:2]
    assert waiting.endswith("the gate is attacking the model(s); waiting ...")
    assert first.startswith("rel-") and "checks failed" in first
    assert "✗ model_risk" in requested.output
    assert "[rule release.model_risk.limits.lira.auc]" in requested.output
    assert "lira       AUC 0.73  advantage 0.28" in requested.output
    shown = CliRunner().invoke(main, ["release", "show", first.split()[0], *alice])
    assert shown.exit_code == 1 and shown.output == requested.output.split("\n", 1)[1]
    missing = CliRunner().invoke(main, ["release", "show", "rel-000000000000", *alice])
    assert missing.exit_code == 1 and "error:" in missing.output


def test_attacks_cut_short_by_a_stop_run_again_when_the_console_starts(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        finished: Callable[..., str], attack_runs: list[Path | None], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox_id = finished(_model())
    with monkeypatch.context() as stopped:  # the console dies before the attacks run
        stopped.setattr(model_risk, "start", lambda core, release_id: None)
        body = _request(client, people["alice"], sandbox_id)
    assert body["status"] == "submitted"
    attack_runs.append(_report(tmp_path))
    model_risk.resume(core)  # what `sealroom up` does
    again = client.get(f"/api/v1/releases/{body['id']}", headers=bearer(people["alice"]))
    assert again.get_json()["status"] == "checks_failed"
    assert len(recorded(core, "release:request:model-risk")) == 1


def test_the_release_form_does_not_offer_a_target_description(
        client: FlaskClient, people: dict[str, str], finished: Callable[..., str]) -> None:
    sandbox_id = finished({**_model(), "metrics.json": b'{"accuracy": 0.9}'})
    login(client, "alice")
    page = client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    form = page[page.index('id="release-form"'):page.index("</form>", page.index(
        'id="release-form"'))]
    assert 'value="model.safetensors"' in form and 'value="metrics.json"' in form
    assert 'value="model.safetensors.target.json"' not in form
    assert "Not offered: model.safetensors.target.json, the description the gate attacks " \
           "its model with before review; it stays inside." in form
