"""No sandbox-written text reaches a person through the console before approval, except
bytes the disclosure budget paid for.

A sandbox leaves a random canary in every field of its outputs that can hold text: file
names (withheld by the name rule), metrics keys, CSV header cells, safetensors tensor names
and `__metadata__`, then the engineer requests a release (by position) and reads everything
the console offers them: the API's answers, the sandbox and release pages, and the CLI's
audit export. None of it holds the canary, plain or hex- or base64-encoded. Which of the two
each view is: names, check reasons, labels, positions, sizes and hashes are text the console
composed; nothing here is budgeted content (the budget for names is spent only on names the
rule allows, and these names are refused by it).
"""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from console.core import Sealroom
from tests.helpers import (
    UNTIMED_HEALTH_CHECKS,
    bearer,
    login,
    recorded,
    safetensors_bytes,
    supervisor_pass,
    wait_for_outbox,
)

canaries = st.text(string.ascii_letters + string.digits, min_size=16, max_size=32).map(
    lambda text: "CANARY" + text)


def _forms(canary: str) -> list[str]:
    raw = canary.encode()
    forms = [canary, raw.hex(), raw.hex().upper()]
    for cut in range(3):  # base64 of the canary at each alignment, minus the edges
        encoded = base64.b64encode(b"x" * cut + raw).decode()
        forms.append(encoded[4:-4])
    return forms


def _outputs(canary: str) -> dict[str, bytes]:
    return {
        f"{canary} notes.txt": b"",  # a name the rule withholds
        "metrics.json": json.dumps({"accuracy": 0.9, canary: 1.0,
                                    "nested": {canary: {"n_test": 3}}}).encode(),
        "table.csv": f"accuracy,{canary}\n0.9,1\n".encode(),
        "model.safetensors": safetensors_bytes({canary: [0.5, 1.5]},
                                               metadata={canary: canary}),
        # an unknown dtype: the format check's reason once echoed the tensor's name
        "bad.safetensors": safetensors_bytes({canary: [1.0]}).replace(b'"F32"', b'"Q99"'),
    }


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("bob", "approver"), ("carol", "approver")]}


@settings(max_examples=4, deadline=None, database=None,
          suppress_health_check=[*UNTIMED_HEALTH_CHECKS, HealthCheck.function_scoped_fixture])
@given(canary=canaries)
def test_no_canary_reaches_the_engineer(canary: str, client: FlaskClient, core: Sealroom,
                                        people: dict[str, str], fake_backend: Any,
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = people["alice"]
    created = client.post("/api/v1/sandboxes", headers=bearer(alice),
                          json={"dataset": "demo", "example": "mlp"})
    sandbox_id = created.get_json()["id"]
    outbox = core.settings.sandboxes_dir / sandbox_id / "outbox"
    for name, data in _outputs(canary).items():
        (outbox / name).write_bytes(data)
    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
    supervisor_pass(core)
    seen: list[str] = [json.dumps(client.get(f"/api/v1/sandboxes/{sandbox_id}",
                                             headers=bearer(alice)).get_json())]
    listing = wait_for_outbox(client, alice, sandbox_id)
    seen.append(json.dumps(listing))
    positions = [f"#{f['position']}" for f in listing["files"] if f["kind"] == "file"]
    release = client.post("/api/v1/releases", headers=bearer(alice), json={
        "sandbox": sandbox_id, "files": positions, "justification": "canary"})
    assert release.status_code == 201, release.get_json()
    body = release.get_json()
    assert body["status"] == "checks_failed"  # the bad dtype at least
    seen.append(json.dumps(body))
    seen.append(json.dumps(client.get("/api/v1/releases", headers=bearer(alice)).get_json()))
    seen.append(json.dumps(client.get(f"/api/v1/releases/{body['id']}",
                                      headers=bearer(alice)).get_json()))
    browser = client.application.test_client()  # a fresh session for every example
    login(browser, "alice")
    for page in (f"/sandboxes/{sandbox_id}", f"/releases/{body['id']}", "/releases",
                 "/sandboxes"):
        seen.append(browser.get(page).get_data(as_text=True))
    seen.extend(f"{e.actor} {e.target} {e.reason} {e.details}" for e in recorded(core))
    from console.cli import main

    monkeypatch.setenv("SEALROOM_HOME", str(core.settings.home))
    exported = CliRunner().invoke(main, ["audit", "export"])
    assert exported.exit_code == 0, exported.output
    seen.append(exported.output)
    everything = "\n".join(seen)
    for form in _forms(canary):
        assert form not in everything, form
