"""Accounts that can be revoked, through HTTP: revoked and expired API tokens and deactivated
users are refused on the next request (token and console session both), each with a clear
401 and an audit event; password changes end the other sessions; token listings show only
one's own; admin pages are for admins."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from console.core import Sealroom
from console.models import ApiToken
from console.services import accounts
from console.services.errors import Conflict
from tests.helpers import OPERATOR, PASSWORD, bearer, csrf_from, login, recorded

MakeUser = Callable[..., tuple[str, str]]
NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
def alice(make_user: MakeUser) -> str:
    return make_user("alice")[1]


@pytest.fixture
def admin(make_user: MakeUser) -> str:
    return make_user("root", "admin")[1]


def _logged_in(app: Flask, name: str, password: str = PASSWORD) -> FlaskClient:
    client = app.test_client()
    assert login(client, name, password).status_code == 302
    return client


def _post(client: FlaskClient, path: str, data: dict[str, str] | None = None,
          page: str = "/account") -> Any:
    return client.post(path, data={"csrf_token": csrf_from(client, page), **(data or {})})


def _denials(core: Sealroom, response: Any) -> list[Any]:
    return [e for e in recorded(core, request_id=response.headers["X-Request-Id"])
            if e.outcome == "denied"]


# --- API tokens -----------------------------------------------------------------------------


def test_a_revoked_token_is_refused_on_the_next_request(client: FlaskClient, core: Sealroom,
                                                        alice: str) -> None:
    assert client.get("/api/v1/sandboxes", headers=bearer(alice)).status_code == 200
    [mine] = client.get("/api/v1/tokens", headers=bearer(alice)).get_json()["tokens"]
    revoked = client.delete(f"/api/v1/tokens/{mine['id']}", headers=bearer(alice))
    assert revoked.status_code == 200 and revoked.get_json()["state"] == "revoked"
    [event] = recorded(core, "admin:token:revoke")
    assert (event.actor, event.target, event.outcome) == ("alice", f"token:{mine['id']}", "ok")

    refused = client.get("/api/v1/sandboxes", headers=bearer(alice))
    assert refused.status_code == 401
    error = refused.get_json()["error"]
    assert error["code"] == "token_revoked" and "revoked at" in error["message"]
    [denied] = _denials(core, refused)
    assert "revoked" in denied.reason and "of alice" in denied.reason


def test_an_expired_token_is_refused_on_the_next_request(client: FlaskClient, core: Sealroom,
                                                         alice: str) -> None:
    assert client.get("/api/v1/sandboxes", headers=bearer(alice)).status_code == 200
    # As if its lifetime had passed: the token's expiry is now a minute ago.
    with core.transaction() as session:
        row = session.get(ApiToken, 1)
        assert row is not None
        row.expires_at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        session.add(row)
    refused = client.get("/api/v1/sandboxes", headers=bearer(alice))
    assert refused.status_code == 401
    error = refused.get_json()["error"]
    assert error["code"] == "token_expired" and "expired at" in error["message"]
    [denied] = _denials(core, refused)
    assert "expired" in denied.reason and "of alice" in denied.reason


def test_a_new_token_has_the_default_lifetime_a_name_and_is_shown_once(
        client: FlaskClient, core: Sealroom, alice: str) -> None:
    made = client.post("/api/v1/tokens", headers=bearer(alice), json={"name": "ci"})
    assert made.status_code == 201
    body = made.get_json()
    assert body["name"] == "ci" and body["state"] == "active" and body["token"].startswith("sr_")
    lifetime = datetime.fromisoformat(body["expires_at"]) - datetime.fromisoformat(
        body["created_at"])
    # the making token (the fixture's, default 90 days) was made first: the new one cannot
    # outlive it, so it expires at most then
    assert timedelta(days=89) < lifetime <= timedelta(days=core.settings.token_ttl_days)
    assert client.get("/api/v1/sandboxes", headers=bearer(body["token"])).status_code == 200
    listed = client.get("/api/v1/tokens", headers=bearer(alice)).get_json()["tokens"]
    assert [t["name"] for t in listed] == ["ci", "unnamed"]
    assert all("token" not in t and "token_hash" not in t for t in listed)
    assert listed[1]["last_used_at"] is not None  # the fixture's token has been used


def test_a_token_made_with_a_token_does_not_outlive_it(client: FlaskClient,
                                                       alice: str) -> None:
    short = client.post("/api/v1/tokens", headers=bearer(alice),
                        json={"name": "short", "expires_in_days": 2}).get_json()
    child = client.post("/api/v1/tokens", headers=bearer(short["token"]),
                        json={"name": "child", "expires_in_days": 300}).get_json()
    assert child["expires_at"] == short["expires_at"]


@pytest.mark.parametrize("body, message", [
    ({"expires_in_days": 0}, "from 1 to 365"),
    ({"expires_in_days": 366}, "from 1 to 365"),
    ({"expires_in_days": "7"}, "whole number"),
    ({"name": "x" * 65}, "1-64 characters"),
    ({"name": 5}, "must be a string"),
])
def test_bad_token_requests_are_refused_and_audited(client: FlaskClient, core: Sealroom,
                                                    alice: str, body: dict[str, Any],
                                                    message: str) -> None:
    response = client.post("/api/v1/tokens", headers=bearer(alice), json=body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]["message"]
    assert _denials(core, response)
    assert len(accounts.list_tokens(core, "alice")) == 1  # nothing half-made


def test_token_lists_show_only_ones_own(client: FlaskClient, core: Sealroom,
                                        make_user: MakeUser, alice: str, admin: str) -> None:
    _, bob = make_user("bob")
    mine = client.get("/api/v1/tokens", headers=bearer(alice)).get_json()["tokens"]
    assert {t["owner"] for t in mine} == {"alice"}
    assert client.get("/api/v1/tokens?user=bob", headers=bearer(alice)).status_code == 403
    assert client.get("/api/v1/tokens?all=1", headers=bearer(alice)).status_code == 403
    everyone = client.get("/api/v1/tokens?all=1", headers=bearer(admin)).get_json()["tokens"]
    assert {t["owner"] for t in everyone} == {"alice", "bob", "root"}
    # someone else's token is not found, and keeps working
    [bobs] = client.get("/api/v1/tokens?user=bob", headers=bearer(admin)).get_json()["tokens"]
    stolen = client.post(f"/api/v1/tokens/{bobs['id']}/revoke", headers=bearer(alice))
    assert stolen.status_code == 404 and _denials(core, stolen)
    assert client.get("/api/v1/sandboxes", headers=bearer(bob)).status_code == 200
    # the console page lists one's own too
    page = _logged_in(client.application, "alice").get("/account").get_data(as_text=True)
    assert f'id="token-{mine[0]["id"]}"' in page and f'id="token-{bobs["id"]}"' not in page
    # an admin revokes anyone's
    assert client.post(f"/api/v1/tokens/{bobs['id']}/revoke",
                       headers=bearer(admin)).status_code == 200
    assert client.get("/api/v1/sandboxes", headers=bearer(bob)).status_code == 401


def test_tokens_made_and_revoked_on_the_account_page(app: Flask, core: Sealroom,
                                                     alice: str) -> None:
    client = _logged_in(app, "alice")
    made = _post(client, "/account/tokens", {"name": "laptop", "expires_in_days": "7"})
    assert made.status_code == 201
    page = made.get_data(as_text=True)
    secret = re.search(r'id="new-token-secret">(sr_[^<]+)<', page)
    assert secret and "shown only this once" in page
    assert client.get("/api/v1/sandboxes", headers=bearer(secret.group(1))).status_code == 200
    assert secret.group(1) not in client.get("/account").get_data(as_text=True)
    [laptop] = [t for t in accounts.list_tokens(core, "alice") if t.name == "laptop"]
    bad = _post(client, "/account/tokens", {"name": "x", "expires_in_days": "9999"})
    assert bad.status_code == 400 and "from 1 to 365" in bad.get_data(as_text=True)
    assert _denials(core, bad)
    assert _post(client, f"/account/tokens/{laptop.id}/revoke").status_code == 303
    assert client.get("/api/v1/sandboxes", headers=bearer(secret.group(1))).status_code == 401
    again = _post(client, f"/account/tokens/{laptop.id}/revoke")
    assert again.status_code == 409 and "already revoked" in again.get_data(as_text=True)


# --- deactivation ---------------------------------------------------------------------------


def test_a_deactivated_user_is_refused_on_the_next_request(app: Flask, core: Sealroom,
                                                           alice: str, admin: str) -> None:
    session = _logged_in(app, "alice")
    assert session.get("/sandboxes").status_code == 200
    api = app.test_client()
    assert api.get("/api/v1/sandboxes", headers=bearer(alice)).status_code == 200

    root = _logged_in(app, "root")
    done = _post(root, "/admin/users/alice/deactivate", page="/admin/users")
    assert done.status_code == 303
    [event] = recorded(core, "admin:user:deactivate")
    assert (event.actor, event.target, event.outcome) == ("root", "user:alice", "ok")

    # the console session: ended at its next request, audited, and told why
    ended = session.get("/sandboxes")
    assert ended.status_code == 302 and "/login" in ended.headers["Location"]
    logout = recorded(core, "auth:session:logout")[-1]
    assert (logout.actor, logout.reason) == ("alice",
                                             "session ended: the account was deactivated")
    assert "account was deactivated" in session.get("/login").get_data(as_text=True)
    # the token: refused
    refused = api.get("/api/v1/sandboxes", headers=bearer(alice))
    assert refused.status_code == 401 and _denials(core, refused)
    # and no new login
    assert login(app.test_client(), "alice").status_code == 401

    # reactivated: a new login works; the old session and the old token stay dead
    assert _post(root, "/admin/users/alice/activate", page="/admin/users").status_code == 303
    assert session.get("/sandboxes").status_code == 302
    assert api.get("/api/v1/sandboxes", headers=bearer(alice)).status_code == 401
    assert _logged_in(app, "alice").get("/sandboxes").status_code == 200


def test_a_token_of_a_deactivated_user_is_refused_even_if_not_revoked(
        core: Sealroom, client: FlaskClient, alice: str) -> None:
    accounts.set_active(core, OPERATOR, "alice", False)
    # Deactivation revokes; undo that to reach the check that stands on its own.
    with core.transaction() as session:
        row = session.get(ApiToken, 1)
        assert row is not None
        row.revoked_at = None
        session.add(row)
    refused = client.get("/api/v1/sandboxes", headers=bearer(alice))
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "account_inactive"
    assert "deactivated" in _denials(core, refused)[0].reason


def test_deactivation_refusals(app: Flask, core: Sealroom, admin: str, alice: str) -> None:
    root = _logged_in(app, "root")
    page = "/admin/users"
    yourself = _post(root, "/admin/users/root/deactivate", page=page)
    assert yourself.status_code == 403 and "cannot deactivate yourself" in yourself.get_data(
        as_text=True)
    assert _post(root, "/admin/users/nobody/deactivate", page=page).status_code == 404
    assert _post(root, "/admin/users/alice/activate", page=page).status_code == 409
    accounts.create_user(core, OPERATOR, "root2", "admin", PASSWORD)
    accounts.set_active(core, OPERATOR, "root2", False)
    with pytest.raises(Conflict, match="last active admin"):
        accounts.set_active(core, OPERATOR, "root", False)
    assert len([e for e in recorded(core, "admin:user:deactivate")
                if e.outcome == "denied"]) == 3


# --- passwords ------------------------------------------------------------------------------


def test_changing_ones_password_ends_other_sessions_and_the_old_one_stops_working(
        app: Flask, core: Sealroom, alice: str) -> None:
    here, elsewhere = _logged_in(app, "alice"), _logged_in(app, "alice")
    wrong = _post(here, "/account/password",
                  {"current": "not my password", "new": NEW_PASSWORD, "again": NEW_PASSWORD})
    assert wrong.status_code == 403 and "current password is wrong" in wrong.get_data(
        as_text=True)
    short = _post(here, "/account/password",
                  {"current": PASSWORD, "new": "short", "again": "short"})
    assert short.status_code == 400 and "at least 10" in short.get_data(as_text=True)
    differ = _post(here, "/account/password",
                   {"current": PASSWORD, "new": NEW_PASSWORD, "again": NEW_PASSWORD + "!"})
    assert differ.status_code == 400

    changed = _post(here, "/account/password",
                    {"current": PASSWORD, "new": NEW_PASSWORD, "again": NEW_PASSWORD})
    assert changed.status_code == 303
    assert here.get("/sandboxes").status_code == 200  # this session goes on
    stale = elsewhere.get_cookie("sealroom_session")
    assert stale is not None
    assert elsewhere.get("/sandboxes").status_code == 302  # the other one has ended
    for _ in range(3):  # its cookie replayed: refused each time, its end recorded once
        elsewhere.set_cookie("sealroom_session", stale.value)
        assert elsewhere.get("/sandboxes").status_code == 302
    assert [e.reason for e in recorded(core, "auth:session:logout")] == [
        "session ended: the password was changed, or the account deactivated, since it began"]
    assert login(app.test_client(), "alice", PASSWORD).status_code == 401
    assert login(app.test_client(), "alice", NEW_PASSWORD).status_code == 302
    events = [(e.actor, e.outcome) for e in recorded(core, "admin:user:set_password")]
    assert events == [("alice", "denied"), ("alice", "denied"), ("alice", "ok")]
    assert client_token_still_works(app, alice)


def client_token_still_works(app: Flask, token: str) -> bool:
    """A password change leaves API tokens alone: they are revoked one by one."""
    return app.test_client().get("/api/v1/sandboxes", headers=bearer(token)).status_code == 200


def test_an_admin_resets_a_password_and_the_users_sessions_end(
        app: Flask, core: Sealroom, alice: str, admin: str) -> None:
    session = _logged_in(app, "alice")
    root = _logged_in(app, "root")
    short = _post(root, "/admin/users/alice/password", {"password": "short"}, page="/admin/users")
    assert short.status_code == 400
    assert _post(root, "/admin/users/alice/password", {"password": NEW_PASSWORD},
                 page="/admin/users").status_code == 303
    assert session.get("/sandboxes").status_code == 302
    assert login(app.test_client(), "alice", NEW_PASSWORD).status_code == 302
    own = _post(root, "/admin/users/root/password", {"password": NEW_PASSWORD},
                page="/admin/users")
    assert own.status_code == 403 and "account page" in own.get_data(as_text=True)


def test_a_session_from_before_epochs_is_refused(app: Flask, core: Sealroom,
                                                 alice: str) -> None:
    from flask import g

    from console.guards import load_session_user

    with app.test_request_context("/sandboxes"):
        g.request_id = "before-epochs"
        assert load_session_user(core, "1.0") is not None
        # how sessions named their user before migration 0011: no epoch, no session
        assert load_session_user(core, "1") is None
    assert recorded(core, "auth:session:logout")[-1].actor == "alice"


# --- admin pages ----------------------------------------------------------------------------

ADMIN_PAGES = ("/admin/users", "/admin/tokens", "/admin/datasets")


@pytest.mark.parametrize("role", ["engineer", "approver", "security_officer", "auditor"])
def test_admin_pages_are_403_for_everyone_else(app: Flask, core: Sealroom,
                                               make_user: MakeUser, role: str) -> None:
    make_user("someone", role)
    client = _logged_in(app, "someone")
    for path in ADMIN_PAGES:
        response = client.get(path)
        assert response.status_code == 403, path
        assert _denials(core, response)
    page = client.get("/account").get_data(as_text=True)
    assert 'href="/admin/users"' not in page and 'id="account-link"' in page


def test_admin_pages_render_for_admins(app: Flask, admin: str, alice: str) -> None:
    client = _logged_in(app, "root")
    for path in ADMIN_PAGES:
        assert client.get(path).status_code == 200, path
    assert 'id="user-alice"' in client.get("/admin/users").get_data(as_text=True)
    assert "alice" in client.get("/admin/tokens").get_data(as_text=True)
    assert 'href="/admin/users"' in client.get("/account").get_data(as_text=True)
    assert app.test_client().get("/admin/users").status_code == 302  # anonymous: log in


def test_an_admin_creates_a_user_with_a_role(app: Flask, core: Sealroom, admin: str) -> None:
    root = _logged_in(app, "root")
    page = "/admin/users"
    form = {"name": "dora", "role": "approver", "password": PASSWORD, "again": PASSWORD}
    assert _post(root, page, form, page=page).status_code == 303
    assert login(app.test_client(), "dora").status_code == 302
    for bad, status, message in [({"name": "dora"}, 409, "already exists"),
                                 ({"name": "Bad Name"}, 400, "user names are"),
                                 ({"name": "eve", "role": "wizard"}, 400, "unknown role"),
                                 ({"name": "eve", "again": "other"}, 400, "differ")]:
        response = _post(root, page, {**form, **bad}, page=page)
        assert response.status_code == status and message in response.get_data(as_text=True)
    assert login(app.test_client(), "eve").status_code == 401  # nothing half-made
    assert [e.outcome for e in recorded(core, "admin:user:create")
            if e.actor == "root"] == ["ok", "denied", "denied", "denied"]


def test_the_password_form_is_no_way_to_guess_the_password(app: Flask, core: Sealroom,
                                                          alice: str) -> None:
    client = _logged_in(app, "alice")
    form = {"current": "a guess at it", "new": NEW_PASSWORD, "again": NEW_PASSWORD}
    statuses = [_post(client, "/account/password", form).status_code
                for _ in range(accounts.PASSWORD_GUESSES)]
    assert statuses == [403] * accounts.PASSWORD_GUESSES
    # even the right password is refused now, and the refusal is on record
    blocked = _post(client, "/account/password", {**form, "current": PASSWORD})
    assert blocked.status_code == 429 and "wrong current passwords" in blocked.get_data(
        as_text=True)
    assert recorded(core, "admin:user:set_password")[-1].outcome == "denied"
    assert login(app.test_client(), "alice", NEW_PASSWORD).status_code == 401
