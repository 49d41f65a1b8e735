"""The policy editor's dry run and restore through HTTP: the dry run shows what changes against
the active version (a diff the console composed from officers' policy text, never sandbox
output) ahead of what it would deny, and the document once; restore goes through the same dry
run and is activated from it; no restore for a version whose document is the active one."""

from __future__ import annotations

import html as markup
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from console.core import Sealroom
from console.services import policy as policy_service
from policies.schema import policy_sha256
from tests.helpers import OPERATOR, change_policy, csrf_from, login, recorded

ENGINEER_CPUS = "      max_cpus: 2.0"  # the default policy's engineer entry, as indented


@pytest.fixture
def sam(make_user: Callable[..., tuple[str, str]], dataset: str, client: FlaskClient) -> str:
    make_user("sam", "security_officer")
    login(client, "sam")
    return "sam"


def _html(response: Any) -> str:
    return str(response.get_data(as_text=True))


def _post(client: FlaskClient, path: str, **form: str) -> Any:
    return client.post(path, data={"csrf_token": csrf_from(client, "/policy/edit"), **form})


def _activation_form(html: str) -> dict[str, str]:
    """The hidden fields of the dry run's activation form, as the browser would send them."""
    block = re.search(r'<form[^>]*id="activate-form"(.*?)</form>', html, re.S)
    assert block, "no activation form"
    fields = re.findall(r'<input type="hidden" name="([a-z_0-9]+)" value="([^"]*)"',
                        block.group(1))
    return {name: markup.unescape(value) for name, value in fields}


def test_dry_run_shows_the_diff_first_and_the_document_once(
        client: FlaskClient, core: Sealroom, sam: str) -> None:
    text = policy_service.active_version(core).text
    new = text.replace(ENGINEER_CPUS, "      max_cpus: 1.5")
    response = _post(client, "/policy/dry-run", yaml=new, base_version="2")
    html = _html(response)
    assert response.status_code == 200
    assert "What changes against version 2 (active)" in html
    assert '<span class="head">--- version 2 (active)</span>' in html
    assert '<span class="head">+++ version 3 (this dry run)</span>' in html
    assert '<span class="del">-      max_cpus: 2.0</span>' in html
    assert '<span class="add">+      max_cpus: 1.5</span>' in html
    assert re.search(r'<span class="hunk">@@ -\d+,\d+ \+\d+,\d+ @@</span>', html)
    # the diff comes first, then what it denies, the activation form, then the one editor
    order = [html.index(mark) for mark in ('id="dry-run-diff"', 'id="dry-run-no-sandboxes"',
                                           'id="activate-form"', 'id="policy-text"')]
    assert order == sorted(order)
    assert html.count("<textarea") == 1
    assert "Activate version 3" in html and core.policy.version == 2
    assert _activation_form(html)["yaml"] == new


def test_a_dry_run_of_the_active_document_offers_no_activation(
        client: FlaskClient, core: Sealroom, sam: str) -> None:
    text = policy_service.active_version(core).text
    html = _html(_post(client, "/policy/dry-run", yaml=text, base_version="2"))
    assert "This document is the active policy (version 2) already" in html
    assert 'id="activate-form"' not in html and 'id="dry-run-diff"' not in html


def test_a_browsers_line_breaks_are_the_same_document(
        client: FlaskClient, core: Sealroom, sam: str) -> None:
    """A textarea posts CRLF: the document (its hash, its diff) is the same as with LF."""
    text = policy_service.active_version(core).text
    new = text.replace(ENGINEER_CPUS, "      max_cpus: 1.5")
    html = _html(_post(client, "/policy/dry-run", yaml=new.replace("\n", "\r\n"),
                       base_version="2"))
    assert _activation_form(html)["dry_run_sha256"] == policy_sha256(new)
    assert html.count('<span class="del">') == 1 and html.count('<span class="add">') == 1


def test_restore_goes_through_the_dry_run_then_activates(
        client: FlaskClient, core: Sealroom, sam: str) -> None:
    change_policy(core, {"disclosure": {"per_sandbox_bytes": 1024}})  # version 3
    history = _html(client.get("/policy"))
    assert "Restore 2" in history and "Restore 1" in history and "Restore 3" not in history

    dry = _post(client, "/policy/versions/2/restore")
    html = _html(dry)
    assert dry.status_code == 200 and core.policy.version == 3  # nothing activated yet
    assert "<h1>Restore policy version 2</h1>" in html
    assert "Dry run: version 4 (restores version 2)" in html
    assert "What changes against version 3 (active)" in html
    assert re.search(r'<span class="del">-\s+per_sandbox_bytes: 1024</span>', html)
    assert 'data-confirm="Restore version 2 as version 4? It becomes the active policy' in html
    event = recorded(core, "policy:policy:dry_run")[-1]
    assert (event.actor, event.target, json.loads(event.details)["restores"]) == \
        ("sam", "policy:2", 2)

    form = _activation_form(html)
    assert (form["restored_from"], form["base_version"]) == ("2", "3")
    # sent as a browser sends it (CRLF), with the officer's reason
    form["yaml"] = form["yaml"].replace("\n", "\r\n")
    done = client.post("/policy/activate", data={**form, "reason": "back to version 2"},
                       follow_redirects=True)
    assert "Policy version 4 is active" in _html(done)
    active = policy_service.active_version(core)
    assert (active.restored_from, active.text) == (2, policy_service.get_version(core, 2).text)
    restored = recorded(core, "policy:policy:restore")[-1]
    assert (restored.actor, restored.target, restored.reason) == \
        ("sam", "policy:4", "back to version 2")


def test_an_edited_restore_is_a_new_document(client: FlaskClient, core: Sealroom,
                                             sam: str) -> None:
    change_policy(core, {"disclosure": {"per_sandbox_bytes": 1024}})
    old = policy_service.get_version(core, 2).text
    edited = old.replace(ENGINEER_CPUS, "      max_cpus: 1.5")
    html = _html(_post(client, "/policy/dry-run", yaml=edited, base_version="3",
                       restored_from="2"))
    assert "Dry run: version 4</h2>" in html and "Activate version 4" in html
    assert "restored_from" not in _activation_form(html)
    done = client.post("/policy/activate", data={**_activation_form(html), "reason": "x"})
    assert done.status_code == 302
    assert policy_service.active_version(core).restored_from is None
    assert recorded(core, "policy:policy:activate")[-1].target == "policy:4"


def test_no_restore_for_a_version_identical_to_the_active_one(
        client: FlaskClient, core: Sealroom, sam: str) -> None:
    change_policy(core, {"disclosure": {"per_sandbox_bytes": 1024}})  # 3
    policy_service.restore(core, OPERATOR, 2, "undo")  # 4, as 2
    history = _html(client.get("/policy"))
    assert "Restore 2" not in history and "Restore 4" not in history
    assert "Restore 3" in history and "same text as active" in history
    version = _html(client.get("/policy/versions/2"))
    assert "Restore 2" not in version and "This document is the active one (version 4)" in version
    assert "Restore 3" in _html(client.get("/policy/versions/3"))

    refused = _post(client, "/policy/versions/2/restore")
    assert refused.status_code == 409
    assert "version 2's document is the active policy already (version 4)" in \
        markup.unescape(_html(refused))
    event = recorded(core, "policy:policy:dry_run")[-1]
    assert (event.target, event.outcome) == ("policy:2", "denied")
    assert core.policy.version == 4


def test_restore_refuses_bad_input(client: FlaskClient, core: Sealroom, sam: str) -> None:
    change_policy(core, {"disclosure": {"per_sandbox_bytes": 1024}})  # 3
    missing = _post(client, "/policy/versions/99/restore")
    assert missing.status_code == 404 and "there is no policy version 99" in _html(missing)
    assert client.post("/policy/versions/2/restore").status_code == 400  # no CSRF token

    html = _html(_post(client, "/policy/versions/2/restore"))
    form = _activation_form(html)
    no_reason = client.post("/policy/activate", data={**form, "reason": " "})
    assert no_reason.status_code == 400 and core.policy.version == 3
    assert "say why this policy is activated" in _html(no_reason)

    change_policy(core, {"disclosure": {"per_sandbox_bytes": 2048}})  # 4, meanwhile
    stale = client.post("/policy/activate", data={**form, "reason": "undo"})
    assert stale.status_code == 409 and core.policy.version == 4
    assert "version 4 was activated after version 3" in _html(stale)
    assert recorded(core, "policy:policy:restore")[-1].outcome == "denied"
