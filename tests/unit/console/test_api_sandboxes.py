"""The sandbox API through HTTP with the fake backend: happy path, isolation between users,
and every refusal answered with a clear 4xx/503, audited, leaving no row or container."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlmodel import select

from audit.models import AuditEvent
from console.core import Sealroom
from console.models import Sandbox
from tests.helpers import bearer, wait_for_outbox


def _events(core: Sealroom, action: str) -> list[AuditEvent]:
    with core.transaction() as session:
        return list(session.exec(select(AuditEvent).where(AuditEvent.action == action)).all())


def _sandboxes(core: Sealroom) -> list[Sandbox]:
    with core.transaction() as session:
        return list(session.exec(select(Sandbox)).all())


def test_launch_list_get_logs_outbox_stop(client: FlaskClient, alice: str, core: Sealroom,
                                          fake_backend: Any) -> None:
    created = client.post("/api/v1/sandboxes", headers=bearer(alice),
                          json={"dataset": "demo", "example": "mlp"})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["status"] == "running"
    assert created.headers["Location"] == f"/api/v1/sandboxes/{body['id']}"
    listed = client.get("/api/v1/sandboxes", headers=bearer(alice)).get_json()["sandboxes"]
    assert [s["id"] for s in listed] == [body["id"]]
    assert client.get(f"/api/v1/sandboxes/{body['id']}/logs", headers=bearer(alice)).status_code \
        == 200
    outbox = client.get(f"/api/v1/sandboxes/{body['id']}/outbox", headers=bearer(alice))
    assert outbox.status_code == 403  # not listed while it runs (the policy's default)
    assert outbox.get_json()["error"]["rule"] == "disclosure.outbox.list_while_running"
    stopped = client.post(f"/api/v1/sandboxes/{body['id']}/stop", headers=bearer(alice))
    assert stopped.get_json()["status"] == "stopped"
    listing = wait_for_outbox(client, alice, body["id"])
    assert (listing["state"], listing["files"]) == ("ready", [])
    assert [e.outcome for e in _events(core, "sandbox:sandbox:launch")] == ["ok"]


def test_other_users_sandboxes_are_invisible(client: FlaskClient, alice: str,
                                             make_user: Callable[..., tuple[str, str]]) -> None:
    sandbox_id = client.post("/api/v1/sandboxes", headers=bearer(alice),
                             json={"dataset": "demo", "example": "mlp"}).get_json()["id"]
    _, mallory = make_user("mallory")
    for method, path in [("get", ""), ("get", "/logs"), ("get", "/outbox"), ("post", "/stop")]:
        response = getattr(client, method)(f"/api/v1/sandboxes/{sandbox_id}{path}",
                                           headers=bearer(mallory))
        assert response.status_code == 404, path
    assert client.get("/api/v1/sandboxes", headers=bearer(mallory)).get_json()["sandboxes"] \
        == []
    nonexistent = client.get("/api/v1/sandboxes/sb-000000000000", headers=bearer(mallory))
    assert nonexistent.get_json() == client.get(f"/api/v1/sandboxes/{sandbox_id}",
                                                headers=bearer(mallory)).get_json()


def _refused(client: FlaskClient, core: Sealroom, fake_backend: Any, token: str,
             status: int, fragment: str, **kwargs: Any) -> dict[str, Any]:
    before = len(_events(core, "sandbox:sandbox:launch"))
    response = client.post("/api/v1/sandboxes", headers=bearer(token), **kwargs)
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert fragment in body["error"]["message"]
    events = _events(core, "sandbox:sandbox:launch")
    assert len(events) == before + 1 and events[-1].outcome in ("denied", "failed")
    assert _sandboxes(core) == []
    assert fake_backend.sandboxes == {}
    assert list(core.settings.sandboxes_dir.iterdir()) == []
    return body


@pytest.mark.parametrize("payload, status, fragment", [
    ({"dataset": "nope", "example": "mlp"}, 400, "unknown dataset"),
    ({"example": "mlp"}, 400, "choose a dataset"),
    ({"dataset": "demo"}, 400, "upload a script"),
    ({"dataset": "demo", "example": "nope"}, 400, "unknown example"),
    ({"dataset": "demo", "example": "mlp", "limits": {"cpus": 64}}, 403, "CPUs"),
    ({"dataset": "demo", "example": "mlp", "limits": {"memory_mb": 10**6}}, 403, "memory"),
    ({"dataset": "demo", "example": "mlp", "limits": {"timeout_s": 10**5}}, 403, "run time"),
    ({"dataset": "demo", "example": "mlp", "limits": {"cpus": "many"}}, 400, "number"),
    ({"dataset": "demo", "example": "mlp", "limits": {"memory_mb": 1}}, 400, "memory_mb"),
    ({"dataset": "demo", "example": "mlp", "command": "'unbalanced"}, 400, "invalid"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_launch_requests(client: FlaskClient, alice: str, core: Sealroom,
                             fake_backend: Any, payload: Any, status: int,
                             fragment: str) -> None:
    _refused(client, core, fake_backend, alice, status, fragment, json=payload)


def test_dataset_not_allowed(client: FlaskClient, core: Sealroom, fake_backend: Any,
                             make_user: Callable[..., tuple[str, str]], tmp_path: Any) -> None:
    from console.services import datasets
    from tests.helpers import OPERATOR, write_dataset

    _, bob = make_user("bob")
    make_user("carol")
    datasets.register_dataset(core, OPERATOR, write_dataset(tmp_path / "p"), "private",
                              ["carol"])
    body = _refused(client, core, fake_backend, bob, 403, "not allowed",
                    json={"dataset": "private", "example": "mlp"})
    assert body["error"]["rule"] == "datasets.private.allow"


def test_engine_down(client: FlaskClient, alice: str, core: Sealroom, fake_backend: Any) -> None:
    fake_backend.engine_up = False
    _refused(client, core, fake_backend, alice, 503, "engine is not available",
             json={"dataset": "demo", "example": "mlp"})


def test_oversized_upload(client: FlaskClient, alice: str, core: Sealroom,
                          fake_backend: Any) -> None:
    big = io.BytesIO(b"#" * (core.policy.uploads.max_code_mb * 1024 * 1024 + 1))
    _refused(client, core, fake_backend, alice, 413, "larger than",
             data={"request": json.dumps({"dataset": "demo"}), "code": (big, "train.py")},
             content_type="multipart/form-data")


def test_request_over_the_hard_cap(client: FlaskClient, alice: str, core: Sealroom) -> None:
    huge = io.BytesIO(b"#" * (core.settings.max_request_mb * 1024 * 1024 + 1))
    response = client.post("/api/v1/sandboxes", headers=bearer(alice),
                           data={"request": "{}", "code": (huge, "train.py")},
                           content_type="multipart/form-data")
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert _events(core, "sandbox:code:upload")[-1].outcome == "denied"
    assert _sandboxes(core) == []


def test_path_traversal_zip_is_refused(client: FlaskClient, alice: str, core: Sealroom,
                                       fake_backend: Any) -> None:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../etc/cron.d/evil", "x")
    buffer.seek(0)
    _refused(client, core, fake_backend, alice, 400, "escapes",
             data={"request": json.dumps({"dataset": "demo"}), "code": (buffer, "code.zip")},
             content_type="multipart/form-data")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sr_wrong"},
                                     {"Authorization": "Basic YWxpY2U6eA=="}])
def test_api_needs_a_valid_token(client: FlaskClient, core: Sealroom,
                                 headers: dict[str, str]) -> None:
    response = client.get("/api/v1/sandboxes", headers=headers)
    assert response.status_code == 401
    assert "token" in response.get_json()["error"]["message"]
    assert _events(core, "auth:request:deny")[-1].reason == "missing or invalid API token"


def test_api_ignores_the_session_cookie(client: FlaskClient, alice: str) -> None:
    from tests.helpers import login

    assert login(client, "alice").status_code == 302
    assert client.get("/api/v1/sandboxes").status_code == 401


def test_roles_without_the_permission_are_refused(client: FlaskClient, core: Sealroom,
                                                  make_user: Callable[..., tuple[str, str]],
                                                  dataset: str) -> None:
    _, auditor = make_user("audrey", "auditor")
    response = client.post("/api/v1/sandboxes", headers=bearer(auditor),
                           json={"dataset": "demo", "example": "mlp"})
    assert response.status_code == 403
    assert _events(core, "auth:request:deny")[-1].actor == "audrey"


def test_metrics_need_an_admin_token(client: FlaskClient, alice: str,
                                     make_user: Callable[..., tuple[str, str]]) -> None:
    client.post("/api/v1/sandboxes", headers=bearer(alice),
                json={"dataset": "demo", "example": "mlp"})
    client.post("/api/v1/sandboxes", headers=bearer(alice), json={"dataset": "nope"})
    assert client.get("/metrics", headers=bearer(alice)).status_code == 403
    _, admin = make_user("root", "admin")
    text = client.get("/metrics", headers=bearer(admin)).get_data(as_text=True)
    assert 'sealroom_sandboxes{kind="single",status="running"} 1.0' in text
    assert 'sealroom_sandbox_launches_total{outcome="denied"} 1.0' in text
    assert "sealroom_audit_head_event_id " in text
