"""Console pages through HTTP: login and its audit, CSRF, rate limiting, cookie flags,
the launch form, and pages that list outputs without any way to download them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlmodel import select

from audit.models import AuditEvent
from console.app import create_app
from console.core import Sealroom
from tests.helpers import csrf_from, login


def _last(core: Sealroom, action: str) -> AuditEvent:
    with core.transaction() as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.action == action)).all()
    return events[-1]


@pytest.fixture
def alice(make_user: Callable[..., tuple[str, str]], dataset: str) -> str:
    return make_user("alice")[0]


def test_login_logout_are_audited(client: FlaskClient, alice: str, core: Sealroom) -> None:
    response = login(client, "alice")
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert _last(core, "auth:session:login").outcome == "ok"
    page = client.get("/sandboxes")
    assert page.status_code == 200 and "My sandboxes" in page.get_data(as_text=True)
    token = csrf_from(client, "/sandboxes")
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert _last(core, "auth:session:logout").actor == "alice"
    assert client.get("/sandboxes").status_code == 302


def test_wrong_password_is_refused_and_audited(client: FlaskClient, alice: str,
                                               core: Sealroom) -> None:
    response = login(client, "alice", "not the password")
    assert response.status_code == 401
    assert "Wrong user name or password" in response.get_data(as_text=True)
    event = _last(core, "auth:session:login")
    assert (event.outcome, event.actor, event.source) == ("denied", "alice", "127.0.0.1")
    unknown = login(client, "nobody", "whatever")
    assert unknown.status_code == 401
    assert _last(core, "auth:session:login").target == "user:nobody"


def test_secure_cookie_over_https(core: Sealroom, alice: str) -> None:
    import dataclasses

    core.settings = dataclasses.replace(core.settings, https=True)
    client = create_app(sealroom=core).test_client()
    assert "Secure" in login(client, "alice").headers["Set-Cookie"]


def test_forms_need_a_csrf_token(client: FlaskClient, alice: str, core: Sealroom) -> None:
    response = client.post("/login", data={"username": "alice", "password": "x"})
    assert response.status_code == 400
    assert _last(core, "auth:request:deny").reason.startswith("CSRF")
    login(client, "alice")
    assert client.post("/sandboxes/new", data={"dataset": "demo"}).status_code == 400


def test_login_is_rate_limited(core: Sealroom, alice: str) -> None:
    import dataclasses

    core.settings = dataclasses.replace(core.settings, login_rate="3 per minute")
    client = create_app(sealroom=core).test_client()
    statuses = [login(client, "alice", "wrong password").status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    assert login(client, "alice").status_code == 429
    assert _last(core, "auth:session:login").reason == "too many attempts (rate limited)"


def test_open_redirect_after_login_is_refused(client: FlaskClient, alice: str) -> None:
    import re

    page = client.get("/login?next=//evil.example/").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token
    response = client.post("/login?next=//evil.example/", data={
        "username": "alice", "password": "correct horse battery", "csrf_token": token.group(1)})
    assert response.headers["Location"] == "/"


def _launch(client: FlaskClient, **fields: Any) -> Any:
    data = {"csrf_token": csrf_from(client, "/sandboxes/new"), "dataset": "demo",
            "source": "example", "command": "python train.py", "cpus": "1",
            "memory_mb": "1024", "pids": "128", "timeout_s": "600"}
    data.update(fields)
    return client.post("/sandboxes/new", data=data, content_type="multipart/form-data")


def test_launch_through_the_form(client: FlaskClient, alice: str, core: Sealroom) -> None:
    login(client, "alice")
    response = _launch(client)
    assert response.status_code == 302, response.get_data(as_text=True)
    detail = client.get(response.headers["Location"])
    html = detail.get_data(as_text=True)
    assert "running" in html and "Outbox" in html
    assert "download" not in html.lower()
    live = client.get(response.headers["Location"] + "/live?outbox=1").get_json()
    assert live["sandbox"]["status"] == "running"


def test_form_limits_over_the_maximum_show_the_reason(client: FlaskClient, alice: str) -> None:
    login(client, "alice")
    response = _launch(client, cpus="32")
    assert response.status_code == 403
    assert "32 CPUs asked, at most 2 allowed" in response.get_data(as_text=True)


def test_form_dataset_not_offered_is_refused(client: FlaskClient, alice: str) -> None:
    login(client, "alice")
    response = _launch(client, dataset="secret")
    assert response.status_code == 400
    assert "Check the form" in response.get_data(as_text=True)


def test_other_roles_cannot_open_engineer_pages(client: FlaskClient, core: Sealroom,
                                                make_user: Callable[..., tuple[str, str]]) -> None:
    make_user("audrey", "auditor")
    login(client, "audrey")
    assert client.get("/").status_code == 200
    assert client.get("/sandboxes/new").status_code == 403
    assert _last(core, "auth:request:deny").actor == "audrey"


def test_security_headers(client: FlaskClient) -> None:
    response = client.get("/login")
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Request-Id"]
