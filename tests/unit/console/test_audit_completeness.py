"""Completeness: every endpoint in `app.url_map`, called by a user whose role holds its
permission and by one whose role does not, leaves an audit event for that very call.

New endpoints are covered automatically; only the declared public ones are exempt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import IntegerConverter

from console.core import Sealroom
from console.models import Role
from console.permissions import PUBLIC, declared_permission, role_has
from tests.helpers import bearer, csrf_from, login, recorded

#: Public endpoints: no permission, nobody to refuse. Login is audited by its own service;
#: static files, the health probe and the public release key would only flood the log.
UNAUDITED_PUBLIC = {"static", "healthz", "auth.login", "api.release_key", "releases.keys"}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _calls(app: Flask) -> Iterator[tuple[str, str, str, str]]:
    """(endpoint, method, url, permission) for every rule, placeholders for arguments."""
    for rule in app.url_map.iter_rules():
        permission = declared_permission(app.view_functions[rule.endpoint]) or ""
        values: dict[str, Any] = {}
        for argument in rule.arguments:
            converter = rule._converters[argument]  # noqa: SLF001
            values[argument] = 1 if isinstance(converter, IntegerConverter) else "x1"
        with app.test_request_context():
            from flask import url_for

            url = url_for(rule.endpoint, **values)
        for method in sorted(set(rule.methods or ()) & set(METHODS)):
            yield rule.endpoint, method, url, permission


def _callers(permission: str) -> list[tuple[Role | None, str]]:
    """A role that holds `permission`, one that does not (if any), and nobody at all."""
    allowed = [r for r in Role if role_has(r, permission)]  # type: ignore[arg-type]
    denied = [r for r in Role if not role_has(r, permission)]  # type: ignore[arg-type]
    assert allowed, f"no role holds {permission}"
    return [(allowed[0], "allowed"), *[(r, "disallowed") for r in denied[:1]],
            (None, "disallowed")]


@pytest.fixture
def users(make_user: Callable[..., tuple[str, str]]) -> dict[Role, tuple[str, str]]:
    return {role: make_user(f"u-{role.value.replace('_', '-')}", role.value) for role in Role}


def _call(app: Flask, user: tuple[str, str] | None, method: str, url: str) -> Any:
    response = _open(app, user, method, url)
    response.get_data()  # a streamed body keeps its request context until it is read
    response.close()
    return response


def _open(app: Flask, user: tuple[str, str] | None, method: str, url: str) -> Any:
    client: FlaskClient = app.test_client()
    if user is None:
        return client.open(url, method=method)
    name, token = user
    if url.startswith("/api/") or url == "/metrics":
        return client.open(url, method=method, headers=bearer(token))
    login(client, name)
    # every page's log-out form carries the session's CSRF token; /keys renders for anyone
    data = {"csrf_token": csrf_from(client, "/keys")} if method != "GET" else None
    return client.open(url, method=method, data=data)


def test_every_call_to_every_endpoint_is_audited(app: Flask, core: Sealroom,
                                                 users: dict[Role, tuple[str, str]],
                                                 dataset: str) -> None:
    missing, wrong_outcome, checked = [], [], 0
    for endpoint, method, url, permission in _calls(app):
        if permission == PUBLIC:
            assert endpoint in UNAUDITED_PUBLIC, f"{endpoint} is public: declare why here"
            continue
        for role, who in _callers(permission):
            response = _call(app, users[role] if role else None, method, url)
            request_id = response.headers["X-Request-Id"]
            events = recorded(core, request_id=request_id)
            checked += 1
            if not events:
                missing.append(f"{method} {url} as {who} {role or 'anonymous'} "
                               f"-> {response.status_code}")
            elif who == "disallowed" and not any(e.outcome == "denied" for e in events):
                wrong_outcome.append(f"{method} {url} as {role}: "
                                     f"{[(e.action, e.outcome) for e in events]}")
    assert checked > 40
    assert missing == [], "calls that left no audit event:\n" + "\n".join(missing)
    assert wrong_outcome == [], "refusals not recorded as denied:\n" + "\n".join(wrong_outcome)


def test_a_caller_cannot_choose_the_request_id(client: FlaskClient,
                                               make_user: Callable[..., tuple[str, str]]) -> None:
    _, token = make_user("eve", "engineer")
    first = client.get("/api/v1/sandboxes", headers=bearer(token))
    again = client.get("/api/v1/sandboxes",
                       headers={**bearer(token), "X-Request-Id": first.headers["X-Request-Id"]})
    assert again.headers["X-Request-Id"] != first.headers["X-Request-Id"]


def test_a_listing_is_recorded_with_its_outcome(client: FlaskClient, core: Sealroom,
                                                make_user: Callable[..., tuple[str, str]]) -> None:
    _, token = make_user("eve", "engineer")
    response = client.get("/api/v1/sandboxes/sb-nope", headers=bearer(token))
    assert response.status_code == 404
    [event] = recorded(core, request_id=response.headers["X-Request-Id"])
    assert (event.actor, event.outcome, event.target) == ("eve", "denied",
                                                          "GET /api/v1/sandboxes/sb-nope")


def test_reads_fail_closed_when_the_audit_log_cannot_be_written(
        client: FlaskClient, core: Sealroom,
        make_user: Callable[..., tuple[str, str]]) -> None:
    _, token = make_user("eve", "engineer")
    with core.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit_event "
            "BEGIN SELECT RAISE(ABORT, 'audit store unwritable'); END")
    response = client.get("/api/v1/sandboxes", headers=bearer(token))
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "audit_unavailable"
    assert "sandboxes" not in response.get_json()
