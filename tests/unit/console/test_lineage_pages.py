"""The pages for building on earlier work, through HTTP with the fake backend: the launch form
(dataset versions, inputs, a project), a sandbox's lineage, projects, datasets and their
versions, and who may open each.

Which of the two kinds each new view is (the product's one rule): every one of them shows
only text the console composed itself (ids, owners, statuses, version numbers, digests,
counts, times it recorded), never bytes a sandbox wrote, so none spends the disclosure
budget. `VIEWS` says so per endpoint, a test fails on a new endpoint it does not name, and
another plants sandbox-written strings (outbox names, log text, a file in a project's
workspace) and finds them on none of these pages.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import col, select

from console.core import Sealroom
from console.models import Dataset, DisclosureItem, Sandbox
from console.permissions import declared_permission
from console.services import datasets as dataset_service
from console.services import outbox as outbox_service
from console.services import projects as project_service
from tests.helpers import (
    OPERATOR,
    change_policy,
    csrf_from,
    login,
    recorded,
    supervisor_pass,
    write_dataset,
)
from tests.mocking import FakeBackend

#: Every view of the pages for building on earlier work, and which kind it is: "console"
#: shows only what the console composed itself (there is no "sandbox bytes" view here).
VIEWS = {
    "project_pages.index": "console",
    "project_pages.detail": "console",
    "dataset_pages.index": "console",
    "dataset_pages.detail": "console",
    # the registered files' README, sizes and columns: the platform's people's, not a
    # sandbox's (tests/unit/console/test_dataset_catalog.py)
    "dataset_pages.version": "console",
    "dataset_pages.register": "console",  # POST: answers with the console's own words
    "dataset_pages.retire": "console",  # POST
    "lineage_pages.dataset_version": "console",
    "lineage_pages.sandbox": "console",
}
NEW_BLUEPRINTS = ("project_pages", "dataset_pages", "lineage_pages")
ROLES = {"alice": "engineer", "erin": "engineer", "bob": "approver",
         "sam": "security_officer", "audrey": "auditor", "root": "admin"}
#: What a sandbox writes, which none of these pages may show.
PLANTED = ("PLANTED-outbox-name.bin", "PLANTED log line", "PLANTED-project-file.txt")
_TOKEN = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def _project_workspace(backend: FakeBackend, name: str) -> Path:
    """Where the fake storage keeps a project's workspace (a plain directory)."""
    return backend.storage.projects.workspace(name)


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[0] for name, role in ROLES.items()}


def _launch(client: FlaskClient, **fields: Any) -> Any:
    data: dict[str, Any] = {
        "csrf_token": csrf_from(client, "/sandboxes/new"), "dataset": "demo",
        "source": "example", "example": "mlp", "kind": "single", "ranks": "1",
        "command": "python train.py", "cpus": "1", "memory_mb": "1024", "pids": "128",
        "timeout_s": "600"}
    data.update(fields)
    return client.post("/sandboxes/new", data=data, content_type="multipart/form-data")


def _launched(client: FlaskClient, **fields: Any) -> str:
    response = _launch(client, **fields)
    assert response.status_code == 302, _alerts(response)
    return str(response.headers["Location"].rsplit("/", 1)[1])


def _finish(core: Sealroom, fake_backend: FakeBackend, sandbox_id: str) -> None:
    """The sandbox writes a log line and an outbox file, exits 0, and its outbox is hashed."""
    handle = fake_backend.handle_of(sandbox_id)
    fake_backend.emit(handle, f"{PLANTED[1]}\n".encode())
    (fake_backend.storage.outbox(sandbox_id) / PLANTED[0]).write_bytes(b"weights")
    fake_backend.finish(handle, exit_code=0)
    supervisor_pass(core)
    manifest = outbox_service.schedule_manifest(core, sandbox_id)
    manifest.result(timeout=60)


def _alerts(response: Any) -> str:
    found = re.findall(r'role="alert">([^<]*)<', response.get_data(as_text=True))
    return unescape(" | ".join(found))


def _form_post(client: FlaskClient, page: str, url: str, data: dict[str, Any]) -> Any:
    return client.post(url, data={"csrf_token": csrf_from(client, page), **data},
                       content_type="multipart/form-data")


def _html(client: FlaskClient, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response.get_data(as_text=True)


def _row(core: Sealroom, sandbox_id: str) -> Sandbox:
    with core.read() as session:
        row = session.get(Sandbox, sandbox_id)
    assert row is not None
    return row


def _second_version(core: Sealroom, tmp_path: Path) -> None:
    dataset_service.register_dataset(core, OPERATOR, write_dataset(tmp_path / "v2", 120),
                                     "demo", [])


# --- every view is declared and classified ---------------------------------------------------


def test_every_new_view_declares_a_permission_and_which_kind_it_is(app: Flask) -> None:
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()
                 if rule.endpoint.split(".")[0] in NEW_BLUEPRINTS}
    assert endpoints == set(VIEWS), "classify each new view in VIEWS (the one rule)"
    for endpoint in endpoints:
        assert declared_permission(app.view_functions[endpoint]), endpoint
    assert set(VIEWS.values()) == {"console"}


# --- who may open what -----------------------------------------------------------------------


def test_each_page_opens_for_its_roles_and_is_403_for_the_others(
        app: Flask, core: Sealroom, people: dict[str, str], fake_backend: FakeBackend) -> None:
    owner = app.test_client()
    login(owner, "alice")
    project_service.create(core, _caller(core, "alice"), "cohort", 64)
    sandbox_id = _launched(owner, project="cohort")
    pages = {
        "/projects": {"engineer"},
        "/projects/cohort": {"engineer"},
        "/datasets": {"engineer", "security_officer", "auditor", "admin"},
        "/datasets/demo": {"engineer", "security_officer", "auditor", "admin"},
        "/datasets/demo/versions/1": {"security_officer", "auditor", "admin"},
        f"/lineage/sandboxes/{sandbox_id}": {"security_officer", "auditor", "admin"},
    }
    for name, role in ROLES.items():
        client = app.test_client()
        login(client, name)
        for url, roles in pages.items():
            status = client.get(url).status_code
            if role in roles:
                # erin shares no project with alice: her project page is not found
                expected = 404 if (name, url) == ("erin", "/projects/cohort") else 200
            else:
                expected = 403
            assert status == expected, (name, url, status)
    denied = recorded(core, "auth:request:deny")
    assert {e.actor for e in denied} >= {"bob", "sam", "audrey", "root", "alice"}


def test_changing_views_refuse_roles_without_their_permission(
        client: FlaskClient, core: Sealroom, people: dict[str, str]) -> None:
    login(client, "audrey")  # an auditor reads datasets and lineage, changes nothing
    token = csrf_from(client, "/datasets")
    upload = {"csrf_token": token, "name": "demo", "data": (io.BytesIO(b"x"), "x.csv")}
    assert client.post("/datasets", data=upload,
                       content_type="multipart/form-data").status_code == 403
    assert client.post("/datasets/demo/versions/1/retire",
                       data={"csrf_token": token, "confirm": "y"}).status_code == 403
    assert client.post("/projects", data={"csrf_token": token, "name": "p",
                                          "quota_mb": "64"}).status_code == 403
    with core.read() as session:
        assert [d.retired_at for d in session.exec(select(Dataset)).all()] == [None]


def test_forms_need_a_csrf_token(app: Flask, people: dict[str, str], core: Sealroom) -> None:
    alice, sam = app.test_client(), app.test_client()
    login(alice, "alice")
    assert alice.post("/projects", data={"name": "p", "quota_mb": "64"}).status_code == 400
    assert project_service.listing(core, _caller(core, "alice")) == []
    login(sam, "sam")
    assert sam.post("/datasets/demo/versions/1/retire",
                    data={"confirm": "y"}).status_code == 400
    with core.read() as session:
        assert [d.retired_at for d in session.exec(select(Dataset)).all()] == [None]


# --- the launch form -------------------------------------------------------------------------


def test_the_form_offers_versions_own_finished_sandboxes_and_projects(
        client: FlaskClient, core: Sealroom, people: dict[str, str],
        fake_backend: FakeBackend, tmp_path: Path) -> None:
    _second_version(core, tmp_path)
    login(client, "alice")
    project_service.create(core, _caller(core, "alice"), "cohort", 64)
    running = _launched(client)
    done = _launched(client, dataset="demo@1")
    _finish(core, fake_backend, done)
    html = _html(client, "/sandboxes/new")
    options = dict(re.findall(r'<option[^>]*value="([^"]*)">([^<]*)</option>', html))
    assert options["demo"].startswith("demo — version 2 (newest)")
    assert options["demo@1"].startswith("demo@1, ")
    assert done in options and running not in options  # only finished sandboxes are inputs
    assert re.match(rf"{done} — succeeded, launched \d{{4}}-\d\d-\d\d \d\d:\d\d UTC, "
                    r"example:mlp$", options[done])
    assert options[""] == "None: a fresh workspace"
    assert options["cohort"] == "cohort (owner alice, 64 MB)"
    # "Build on this sandbox" and "Launch in this project" preselect the form
    chosen = _html(client, f"/sandboxes/new?input={done}&project=cohort&input=sb-nope")
    assert f'<option selected value="{done}">' in chosen
    assert '<option selected value="cohort">' in chosen
    assert 'value="sb-nope"' not in chosen


def test_the_form_passes_version_inputs_and_project_to_the_launch(
        client: FlaskClient, core: Sealroom, people: dict[str, str],
        fake_backend: FakeBackend, tmp_path: Path) -> None:
    _second_version(core, tmp_path)
    login(client, "alice")
    project_service.create(core, _caller(core, "alice"), "cohort", 64)
    first = _launched(client, dataset="demo@1")
    _finish(core, fake_backend, first)
    second = _launched(client, dataset="demo@1")
    _finish(core, fake_backend, second)
    sandbox_id = _launched(client, dataset="demo", inputs=[first], other_inputs=f" {second}, ",
                           project="cohort")
    row = _row(core, sandbox_id)
    assert [(d["name"], d["version"]) for d in json.loads(row.datasets)] == [("demo", 2)]
    assert [i["sandbox"] for i in json.loads(row.inputs)] == [first, second]
    assert row.project == "cohort"
    spec = fake_backend.created_specs[-1]
    assert [i.sandbox_id for i in spec.inputs] == [first, second]
    assert spec.project == "cohort"
    assert _row(core, first).datasets.count('"version": 1') == 1


def test_refusals_show_on_the_form_with_their_rule(
        client: FlaskClient, core: Sealroom, people: dict[str, str],
        fake_backend: FakeBackend) -> None:
    login(client, "alice")
    project_service.create(core, _caller(core, "alice"), "cohort", 64)
    done = _launched(client)
    _finish(core, fake_backend, done)
    busy = _launched(client, project="cohort")

    in_use = _launch(client, project="cohort")
    assert in_use.status_code == 409
    assert f"project 'cohort' is in use by {busy}" in _alerts(in_use)

    version = change_policy(core, {"inputs": {"enabled": False}})
    refused = _launch(client, inputs=[done])
    assert refused.status_code == 403
    assert f"(policy version {version}, rule inputs.enabled)" in _alerts(refused)

    assert _launch(client, other_inputs="not/an-id").status_code == 400
    unknown = _launch(client, other_inputs="sb-000000000000")
    assert unknown.status_code == 400 and "no sandbox 'sb-000000000000'" in _alerts(unknown)
    not_offered = _launch(client, inputs=["sb-000000000000"])  # not among the choices
    assert not_offered.status_code == 400 and "Check the form" in _alerts(not_offered)
    with core.read() as session:
        assert len(session.exec(select(Sandbox)).all()) == 2


# --- a sandbox's lineage ---------------------------------------------------------------------


def test_the_detail_page_links_lineage_both_ways(
        client: FlaskClient, core: Sealroom, people: dict[str, str],
        fake_backend: FakeBackend) -> None:
    login(client, "alice")
    project_service.create(core, _caller(core, "alice"), "cohort", 64)
    first = _launched(client, project="cohort")
    _finish(core, fake_backend, first)
    second = _launched(client, inputs=[first], project="cohort")

    later = _html(client, f"/sandboxes/{second}")
    assert f'<a href="/sandboxes/{first}">{first}</a>' in _part(later, "lineage-inputs")
    assert '<a href="/projects/cohort">cohort</a>' in _part(later, "lineage-project")
    assert f'<a href="/sandboxes/{first}">{first}</a>' in _part(later, "lineage-parent")
    assert f'<a href="/sandboxes/{first}">{first}</a>' in _part(later, "lineage-ancestors")
    assert '<a href="/datasets/demo">demo@1</a>' in _part(later, "lineage-datasets")
    assert "demo@1" in _part(later, "lineage-descends")

    earlier = _html(client, f"/sandboxes/{first}")
    used_by = _part(earlier, "lineage-used-by")
    assert f'<a href="/sandboxes/{second}">{second}</a>' in used_by
    assert "continued its project" in used_by
    assert f'href="/sandboxes/new?input={first}"' in earlier  # build on it
    assert len(recorded(core, "sandbox:lineage:view")) >= 2


def test_another_users_sandbox_is_named_but_not_linked(
        app: Flask, core: Sealroom, people: dict[str, str], fake_backend: FakeBackend) -> None:
    change_policy(core, {"groups": {"team": ["alice", "erin"]},
                         "inputs": {"share_groups": ["team"]}})
    erin, alice = app.test_client(), app.test_client()
    login(erin, "erin")
    login(alice, "alice")
    theirs = _launched(erin)
    _finish(core, fake_backend, theirs)
    mine = _launched(alice, other_inputs=theirs)

    inputs = _part(_html(alice, f"/sandboxes/{mine}"), "lineage-inputs")
    assert f"<code>{theirs}</code>" in inputs and "<a " not in inputs
    used_by = _part(_html(erin, f"/sandboxes/{theirs}"), "lineage-used-by")
    assert f"<code>{mine}</code>" in used_by and "alice" in used_by and "<a " not in used_by
    assert erin.get(f"/sandboxes/{mine}").status_code == 404


def test_lineage_readers_follow_any_sandbox_and_dataset_version(
        app: Flask, core: Sealroom, people: dict[str, str], fake_backend: FakeBackend) -> None:
    alice = app.test_client()
    login(alice, "alice")
    first = _launched(alice)
    _finish(core, fake_backend, first)
    second = _launched(alice, inputs=[first])
    for name in ("sam", "audrey", "root"):
        reader = app.test_client()
        login(reader, name)
        version = _html(reader, "/datasets/demo/versions/1")
        table = _part(version, "descendants")
        for sandbox_id in (first, second):
            assert f'<a href="/lineage/sandboxes/{sandbox_id}">{sandbox_id}</a>' in table
        assert "mounted it" in table
        page = _html(reader, f"/lineage/sandboxes/{second}")
        assert f'<a href="/lineage/sandboxes/{first}">{first}</a>' in \
            _part(page, "lineage-inputs")
        assert '<a href="/datasets/demo/versions/1">demo@1</a>' in \
            _part(page, "lineage-datasets")
        back = _html(reader, f"/lineage/sandboxes/{first}")
        assert f'<a href="/lineage/sandboxes/{second}">{second}</a>' in \
            _part(back, "lineage-used-by")
        assert reader.get("/lineage/sandboxes/sb-000000000000").status_code == 404
        assert reader.get("/datasets/demo/versions/9").status_code == 404
    views = recorded(core, "sandbox:lineage:view")
    assert {(e.actor, e.target) for e in views} >= {
        ("audrey", "dataset:demo@1"), ("sam", f"sandbox:{second}")}


# --- projects --------------------------------------------------------------------------------


def test_projects_are_created_from_the_page_and_refusals_shown(
        client: FlaskClient, core: Sealroom, people: dict[str, str],
        fake_backend: FakeBackend) -> None:
    login(client, "alice")
    created = _form_post(client, "/projects", "/projects", {"name": "cohort", "quota_mb": "64"})
    assert created.status_code == 302 and created.headers["Location"] == "/projects/cohort"
    listing = _html(client, "/projects")
    assert '<a href="/projects/cohort">cohort</a>' in listing and "64 MB" in listing

    too_big = _form_post(client, "/projects", "/projects", {"name": "big",
                                                            "quota_mb": "999999"})
    assert too_big.status_code == 403
    assert "rule projects.max_quota_mb)" in _alerts(too_big)
    again = _form_post(client, "/projects", "/projects", {"name": "cohort", "quota_mb": "64"})
    assert again.status_code == 409 and "already exists" in _alerts(again)
    bad = _form_post(client, "/projects", "/projects", {"name": "Not OK", "quota_mb": "64"})
    assert bad.status_code == 400 and "lower-case letters" in _alerts(bad)
    assert [p.name for p in project_service.listing(core, _caller(core, "alice"))] == ["cohort"]
    assert recorded(core, "sandbox:project:create")[-1].outcome == "denied"


def test_a_project_page_shows_its_sandboxes_newest_first_and_its_lineage(
        client: FlaskClient, core: Sealroom, people: dict[str, str],
        fake_backend: FakeBackend) -> None:
    login(client, "alice")
    project_service.create(core, _caller(core, "alice"), "cohort", 64)
    first = _launched(client, project="cohort")
    _finish(core, fake_backend, first)
    second = _launched(client, project="cohort")
    html = _html(client, "/projects/cohort")
    assert _part(html, "project-owner") == "alice"
    assert _part(html, "project-quota") == "64 MB"
    assert f'<a href="/sandboxes/{second}">{second}</a>' in _part(html, "project-in-use")
    table = _part(html, "project-sandboxes")
    assert table.index(second) < table.index(first)
    assert f'<a href="/sandboxes/{first}">{first}</a>' in table
    assert '<a href="/datasets/demo">demo@1</a>' in _part(html, "project-descends")
    assert 'href="/sandboxes/new?project=cohort"' in html
    assert client.get("/projects/nope").status_code == 404


# --- datasets --------------------------------------------------------------------------------


def test_engineers_see_the_datasets_they_may_use(
        app: Flask, core: Sealroom, people: dict[str, str], tmp_path: Path) -> None:
    dataset_service.register_dataset(core, OPERATOR, write_dataset(tmp_path / "s", 50),
                                     "secret", ["sam"])
    alice, sam = app.test_client(), app.test_client()
    login(alice, "alice")
    login(sam, "sam")
    mine = _html(alice, "/datasets")
    assert 'id="versions-demo"' in mine and "secret" not in mine
    assert 'href="/datasets/demo/versions/1"' not in mine  # the lineage page is not theirs
    assert 'href="/datasets/demo/versions/1/catalog"' in mine  # what the version holds is
    assert alice.get("/datasets/secret").status_code == 404
    everything = _html(sam, "/datasets")
    assert 'id="versions-secret"' in everything and 'id="versions-demo"' in everything
    assert '<a href="/datasets/demo/versions/1">demo@1</a>' in everything
    with core.read() as session:
        row = session.exec(select(Dataset).where(Dataset.name == "demo")).one()
    versions = _part(mine, "versions-demo")
    assert row.digest[:19] in versions and f"{row.size_bytes:,}" in versions
    assert "active" in versions and "cli:test" in versions


def test_an_officer_registers_a_version_and_retires_one_from_the_pages(
        client: FlaskClient, core: Sealroom, people: dict[str, str]) -> None:
    login(client, "sam")
    page = _html(client, "/datasets/demo")
    assert "Register a new version" in page and "Retire" in page
    registered = _form_post(client, "/datasets/demo", "/datasets", {
        "name": "demo", "from": "detail", "allow": "",
        "data": (io.BytesIO(b"id,value\n1,2\n"), "rows.csv")})
    assert registered.status_code == 302, _alerts(registered)
    page = _html(client, "/datasets/demo")
    assert "Registered demo version 2 (1 files, 13 bytes)." in page
    assert 'id="version-demo-2"' in page

    same = _form_post(client, "/datasets/demo", "/datasets", {
        "name": "demo", "from": "detail",
        "data": (io.BytesIO(b"id,value\n1,2\n"), "rows.csv")})
    assert same.status_code == 409 and "already version 2" in _alerts(same)
    assert "Register a new version" in same.get_data(as_text=True)

    unconfirmed = _form_post(client, "/datasets/demo", "/datasets/demo/versions/1/retire", {})
    assert unconfirmed.status_code == 400 and "Tick the box" in _alerts(unconfirmed)
    retired = _form_post(client, "/datasets/demo", "/datasets/demo/versions/1/retire",
                         {"confirm": "y"})
    assert retired.status_code == 302
    with core.read() as session:
        rows = {d.version: d for d in session.exec(select(Dataset)
                                                   .where(Dataset.name == "demo")).all()}
    assert rows[1].retired_at is not None and rows[2].retired_at is None
    state = _part(_html(client, "/datasets/demo"), "version-demo-1")
    assert "retired" in state and "/retire" not in state  # no second Retire button
    twice = _form_post(client, "/datasets/demo", "/datasets/demo/versions/1/retire",
                       {"confirm": "y"})
    assert twice.status_code == 409 and "already retired" in _alerts(twice)

    new = _form_post(client, "/datasets", "/datasets", {
        "name": "fresh", "allow": "role:engineer",
        "data": (io.BytesIO(b"a,b\n3,4\n"), "fresh.csv")})
    assert new.status_code == 302 and new.headers["Location"] == "/datasets/fresh"
    nofile = _form_post(client, "/datasets", "/datasets", {"name": "other"})
    assert nofile.status_code == 400 and "Choose the dataset's files" in _alerts(nofile)


# --- the one rule ----------------------------------------------------------------------------


def test_no_sandbox_written_string_reaches_these_pages(
        app: Flask, core: Sealroom, people: dict[str, str], fake_backend: FakeBackend) -> None:
    alice = app.test_client()
    login(alice, "alice")
    project_service.create(core, _caller(core, "alice"), "cohort", 64)
    first = _launched(alice, project="cohort")
    _finish(core, fake_backend, first)
    (_project_workspace(fake_backend, "cohort") / PLANTED[2]).write_bytes(b"a note left")
    second = _launched(alice, inputs=[first], project="cohort")
    _finish(core, fake_backend, second)
    release = _form_post(alice, f"/sandboxes/{first}", f"/sandboxes/{first}/release",
                         {"files": "#1", "justification": "test"})
    assert release.status_code == 302

    pages = {
        "alice": ["/projects", "/projects/cohort", "/datasets", "/datasets/demo",
                  "/sandboxes/new"],
        "sam": ["/datasets", "/datasets/demo", "/datasets/demo/versions/1",
                f"/lineage/sandboxes/{first}", f"/lineage/sandboxes/{second}"],
        "audrey": ["/datasets/demo/versions/1", f"/lineage/sandboxes/{second}"],
    }
    for name, urls in pages.items():
        client = alice
        if name != "alice":
            client = app.test_client()
            login(client, name)
        for url in urls:
            html = _html(client, url)
            for planted in PLANTED:
                assert planted not in html, (name, url, planted)
    # The engineer's own detail page lists the outbox (through the ledger); its lineage
    # section, the console's own words, does not.
    detail = _html(alice, f"/sandboxes/{second}")
    lineage = detail[detail.index('id="lineage"'):detail.index("<h2>Log</h2>")]
    assert not any(planted in lineage for planted in PLANTED)
    with core.read() as session:
        spent = session.exec(select(DisclosureItem).where(
            col(DisclosureItem.user).in_(["sam", "audrey"]))).all()
    assert spent == []  # lineage readers were shown no sandbox byte at all


# --- helpers ---------------------------------------------------------------------------------


def _caller(core: Sealroom, name: str) -> Any:
    from audit.events import Actor
    from console.core import Caller

    return Caller(Actor(name, ROLES[name], "session", "127.0.0.1"))


def _part(html: str, element_id: str) -> str:
    """The inner HTML of the element with this id (the first closing tag of its kind)."""
    match = re.search(rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"[^>]*>', html)
    assert match, f"no element #{element_id}"
    end = html.index(f"</{match.group(1)}>", match.end())
    return html[match.end():end].strip()
