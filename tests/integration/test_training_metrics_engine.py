"""Training curves against the real engine: the helper baked into the image prints metric
lines, the console reads them from the engine's log, keeps what the policy allows, pays for
it and audits it. A hostile job's strings, NaNs, huge names and a flood are dropped and
counted, and never shown. (Sandbox output spending the ledger: see the unit tests' note.)"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from console.core import Sealroom
from console.services import accounts, datasets
from tests.helpers import OPERATOR, PASSWORD, bearer, recorded, write_dataset
from tests.integration.test_api_launch import wait_for

pytestmark = pytest.mark.docker

SECRET = "P00017 diabetes"

TRAIN = b"""
from sealroom import declare_total_steps, log_metrics
declare_total_steps(20)
for step in range(1, 21):
    log_metrics(step, loss=1.0 / step, accuracy=step / 20)
print("done")
"""

HOSTILE = f"""
import json, os
def line(record):
    os.write(1, b"SEALROOM-METRIC " + json.dumps(record).encode() + b"\\n")
line({{"step": 1, "values": {{"loss": "{SECRET}"}}}})
os.write(1, b'SEALROOM-METRIC {{"step": 1, "values": {{"loss": NaN}}}}\\n')
line({{"step": 1, "values": {{"n" * 10240: 1.0}}}})
line({{"step": 1, "values": {{"{SECRET}": 1.0}}}})
flood = b'SEALROOM-METRIC {{"step":2,"values":{{"loss":0.5}}}}\\n' * 100_000
os.write(1, flood)  # 100,000 points in one go
""".encode()


@pytest.fixture
def engineer(docker_core: Sealroom, tmp_path: Path) -> str:
    accounts.create_user(docker_core, OPERATOR, "alice", "engineer", PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "src", 200),
                              "demo", ["alice"])
    return accounts.create_token(docker_core, OPERATOR, "alice")


def _run(client: Any, token: str, code: bytes) -> str:
    response = client.post("/api/v1/sandboxes", headers=bearer(token), data={
        "request": json.dumps({"dataset": "demo", "command": "python job.py",
                               "limits": {"cpus": 1, "memory_mb": 512}}),
        "code": (io.BytesIO(code), "job.py")}, content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()
    sandbox_id = str(response.get_json()["id"])
    final = wait_for(client, sandbox_id, token, lambda b: b["status"] != "running")
    assert final["status"] == "succeeded", final
    return sandbox_id


def _all_of(client: Any, token: str, sandbox_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/v1/sandboxes/{sandbox_id}/metrics",
                                      headers=bearer(token)).get_json()
    while body["more"]:
        body = client.get(f"/api/v1/sandboxes/{sandbox_id}/metrics?since={body['cursor']}",
                          headers=bearer(token)).get_json()
    return body


def test_the_helper_in_the_image_draws_curves_paid_for(docker_app: Flask, engineer: str,
                                                       docker_core: Sealroom) -> None:
    client = docker_app.test_client()
    sandbox_id = _run(client, engineer, TRAIN)
    body = _all_of(client, engineer, sandbox_id)
    loss = next(s for s in body["series"] if s["name"] == "loss")
    assert loss["points"][0] == [1, 1.0] and len(loss["points"]) == 20
    assert body["progress"]["step"] == body["progress"]["total_steps"] == 20
    assert body["dropped"] == {}
    assert body["spent"] == 40 * 16 + len("loss") + len("accuracy")
    assert recorded(docker_core, "sandbox:metrics:view")


def test_a_hostile_job_is_capped_and_shows_no_text(docker_app: Flask, engineer: str,
                                                   docker_core: Sealroom) -> None:
    client = docker_app.test_client()
    sandbox_id = _run(client, engineer, HOSTILE)
    body = _all_of(client, engineer, sandbox_id)
    assert body["points"] == 600  # the first minute's rate
    assert body["dropped"] == {"malformed": 1, "name": 1, "rate": 100_000 - 600, "value": 2}
    shown = json.dumps(body) + "".join(f"{e.reason}{e.details}" for e in recorded(docker_core))
    assert SECRET not in shown and "nnnn" not in shown
    assert {e.outcome for e in recorded(docker_core, "sandbox:metrics:drop")} == {"denied"}
