"""Run names and tags, the sandbox list's search and filters, and the links between
sandboxes, releases and audit timelines, through HTTP with the fake backend (and the CLI
against a served console).

Names and tags are typed by the engineer in the console (launch form, API, CLI, the
sandbox page's rename form), never written by the sandbox: showing them discloses nothing a
sandbox chose, so no view here spends the disclosure budget."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import select

from console.cli import main
from console.core import Sealroom
from console.models import Sandbox
from console.services import labels
from console.services.errors import BadRequest
from tests.helpers import bearer, csrf_from, login, recorded, safetensors_bytes, supervisor_pass
from tests.mocking import FakeBackend


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("erin", "engineer"), ("bob", "approver"),
        ("audrey", "auditor")]}


def _api_launch(client: FlaskClient, token: str, **body: Any) -> Any:
    return client.post("/api/v1/sandboxes", headers=bearer(token),
                       json={"dataset": "demo", "example": "mlp", **body})


def _launched(client: FlaskClient, token: str, **body: Any) -> str:
    response = _api_launch(client, token, **body)
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def _form_launch(client: FlaskClient, **fields: Any) -> Any:
    data = {"csrf_token": csrf_from(client, "/sandboxes/new"), "dataset": "demo",
            "source": "example", "example": "mlp", "command": "python train.py",
            "command_kind": "program", "kind": "single", "ranks": "1", "cpus": "1",
            "memory_mb": "1024", "pids": "128", "timeout_s": "600"}
    data.update(fields)
    return client.post("/sandboxes/new", data=data, content_type="multipart/form-data")


def _rows(core: Sealroom) -> list[Sandbox]:
    with core.read() as session:
        return list(session.exec(select(Sandbox)).all())


def _html(client: FlaskClient, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    return response.get_data(as_text=True)


def _ids(html: str) -> list[str]:
    """The sandbox ids the list's table shows, in order."""
    table = html.split('id="sandboxes"', 1)[1].split("</table>", 1)[0] \
        if 'id="sandboxes"' in html else ""
    return re.findall(r'<td class="nowrap"><a href="/sandboxes/(sb-[0-9a-f]+)">', table)


# --- what a name and a tag may be ----------------------------------------------------------


def test_names_are_printable_text_of_at_most_80_characters() -> None:
    assert labels.parse_name("  Baseline, 5 epochs — cohort ü  ") == \
        "Baseline, 5 epochs — cohort ü"
    assert labels.parse_name("") == "" and labels.parse_name("   ") == ""
    assert labels.parse_name("x" * 80) == "x" * 80
    for bad, said in [("x" * 81, "at most 80 characters"),
                      ("line\nbreak", "U+000A"), ("bell\x07", "U+0007"),
                      ("right\u202eto left", "U+202E"), ("zero\u200bwidth", "U+200B")]:
        with pytest.raises(BadRequest, match=re.escape(said)):
            labels.parse_name(bad)


def test_tags_are_short_lowercase_labels_each_once_at_most_8() -> None:
    assert labels.parse_tags(["Baseline", "cohort-1", "v1.2_b", "baseline"]) == \
        ("baseline", "cohort-1", "v1.2_b")
    assert labels.split_tags("a, b  c,,d") == ["a", "b", "c", "d"]
    assert labels.parse_tags([f"t{i}" for i in range(8)]) == tuple(f"t{i}" for i in range(8))
    for bad in ["-lead", ".x", "has space", "ünï", "a" * 33, "", "semi;colon", '"q"']:
        with pytest.raises(BadRequest, match="is not a tag"):
            labels.parse_tags([bad])
    with pytest.raises(BadRequest, match="at most 8 tags"):
        labels.parse_tags([f"t{i}" for i in range(9)])


# --- set at launch -------------------------------------------------------------------------


def test_the_api_launch_keeps_the_name_and_tags_and_records_them(
        client: FlaskClient, people: dict[str, str], core: Sealroom) -> None:
    response = _api_launch(client, people["alice"], name="Baseline run",
                           tags=["Baseline", "cohort-1"])
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["name"], body["tags"]) == ("Baseline run", ["baseline", "cohort-1"])
    shown = client.get(f"/api/v1/sandboxes/{body['id']}", headers=bearer(people["alice"]))
    assert (shown.get_json()["name"], shown.get_json()["tags"]) == \
        ("Baseline run", ["baseline", "cohort-1"])
    [launch] = [e for e in recorded(core, "sandbox:sandbox:launch") if e.outcome == "ok"]
    details = json.loads(launch.details)
    assert (details["name"], details["tags"]) == ("Baseline run", ["baseline", "cohort-1"])
    plain = client.get(f"/api/v1/sandboxes/{_launched(client, people['alice'])}",
                       headers=bearer(people["alice"])).get_json()
    assert (plain["name"], plain["tags"]) == (None, [])


@pytest.mark.parametrize(("body", "said"), [
    ({"name": "n" * 81}, "at most 80 characters"),
    ({"name": "two\nlines"}, "printable text"),
    ({"tags": ["ok", "Not OK"]}, "'not ok' is not a tag"),
    ({"tags": [f"t{i}" for i in range(9)]}, "at most 8 tags"),
    ({"name": 7}, "name must be a string"),
    ({"tags": "baseline"}, "tags must be a list of strings"),
])
def test_a_bad_name_or_tags_refuse_the_api_launch_audited_with_nothing_made(
        client: FlaskClient, people: dict[str, str], core: Sealroom, fake_backend: FakeBackend,
        body: dict[str, Any], said: str) -> None:
    response = _api_launch(client, people["alice"], **body)
    assert response.status_code == 400
    assert said in response.get_json()["error"]["message"]
    [refusal] = recorded(core, "sandbox:sandbox:launch")
    assert (refusal.outcome, refusal.actor, refusal.target) == ("denied", "alice", "sandbox:")
    assert said in refusal.reason
    assert _rows(core) == [] and fake_backend.sandboxes == {}


def test_the_form_launches_with_a_name_and_tags(client: FlaskClient, people: dict[str, str],
                                                core: Sealroom) -> None:
    login(client, "alice")
    form = _html(client, "/sandboxes/new")
    assert 'name="name"' in form and 'name="tags"' in form
    response = _form_launch(client, name="Form run", tags="Baseline, cohort-1 baseline")
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    [row] = _rows(core)
    assert (row.name, labels.tags_of(row)) == ("Form run", ["baseline", "cohort-1"])
    page = _html(client, response.headers["Location"])
    assert "Form run" in page and 'href="/sandboxes?tag=cohort-1"' in page


def test_a_refused_form_keeps_the_name_and_tags_and_is_audited(
        client: FlaskClient, people: dict[str, str], core: Sealroom) -> None:
    login(client, "alice")
    response = _form_launch(client, name="Keep this name", tags="good, Bad Tag!",
                            command="python other.py")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "&#39;tag!&#39; is not a tag" in html or "'tag!' is not a tag" in html
    assert 'value="Keep this name"' in html and 'value="good, Bad Tag!"' in html
    assert 'value="python other.py"' in html  # the other values stay too
    [refusal] = recorded(core, "sandbox:sandbox:launch")
    assert refusal.outcome == "denied" and "is not a tag" in refusal.reason
    assert _rows(core) == []
    too_long = _form_launch(client, name="n" * 81, tags="fine")
    assert too_long.status_code == 400
    assert f'value="{"n" * 81}"' in too_long.get_data(as_text=True)
    assert len(recorded(core, "sandbox:sandbox:launch")) == 2 and _rows(core) == []


# --- renamed later -------------------------------------------------------------------------


def test_the_owner_renames_and_retags_on_the_page_audited(
        client: FlaskClient, people: dict[str, str], core: Sealroom) -> None:
    sandbox_id = _launched(client, people["alice"], name="first", tags=["old"])
    login(client, "alice")
    page = _html(client, f"/sandboxes/{sandbox_id}")
    assert 'id="label-form"' in page and 'value="first"' in page and 'value="old"' in page
    response = client.post(f"/sandboxes/{sandbox_id}/label", data={
        "csrf_token": csrf_from(client, f"/sandboxes/{sandbox_id}"), "name": "second",
        "tags": "new, Other"})
    assert response.status_code == 303
    page = _html(client, response.headers["Location"])
    assert "Name and tags saved." in page and "second" in page
    assert re.search(r'id="run-tags">.*new.*other', page)
    [event] = recorded(core, "sandbox:sandbox:label")
    assert (event.actor, event.target, event.outcome) == ("alice", f"sandbox:{sandbox_id}", "ok")
    assert json.loads(event.details) == {"before": {"name": "first", "tags": ["old"]},
                                         "after": {"name": "second", "tags": ["new", "other"]}}
    # The same values again change nothing and record nothing.
    client.post(f"/sandboxes/{sandbox_id}/label", data={
        "csrf_token": csrf_from(client, f"/sandboxes/{sandbox_id}"), "name": "second",
        "tags": "other new"})
    assert len(recorded(core, "sandbox:sandbox:label")) == 1


def test_a_bad_rename_is_a_form_error_that_keeps_what_was_typed(
        client: FlaskClient, people: dict[str, str], core: Sealroom) -> None:
    sandbox_id = _launched(client, people["alice"], name="kept", tags=["kept"])
    login(client, "alice")
    response = client.post(f"/sandboxes/{sandbox_id}/label", data={
        "csrf_token": csrf_from(client, f"/sandboxes/{sandbox_id}"), "name": "new name",
        "tags": " ".join(f"t{i}" for i in range(9))})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert 'id="label-error"' in html and "At most 8 tags" in html
    assert 'value="new name"' in html and 'value="t0 t1 t2' in html
    [row] = _rows(core)
    assert (row.name, labels.tags_of(row)) == ("kept", ["kept"])
    [refusal] = recorded(core, "sandbox:sandbox:label")
    assert (refusal.outcome, refusal.target) == ("denied", f"sandbox:{sandbox_id}")


def test_only_the_owner_relabels_through_the_api(client: FlaskClient, people: dict[str, str],
                                                core: Sealroom) -> None:
    sandbox_id = _launched(client, people["alice"])
    renamed = client.patch(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(people["alice"]),
                           json={"name": "api name", "tags": ["x1"]})
    assert renamed.status_code == 200, renamed.get_json()
    assert (renamed.get_json()["name"], renamed.get_json()["tags"]) == ("api name", ["x1"])
    only_tags = client.patch(f"/api/v1/sandboxes/{sandbox_id}",
                             headers=bearer(people["alice"]), json={"tags": []})
    assert (only_tags.get_json()["name"], only_tags.get_json()["tags"]) == ("api name", [])
    other = client.patch(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(people["erin"]),
                         json={"name": "mine now"})
    assert other.status_code == 404
    assert recorded(core, "sandbox:sandbox:label")[-1].outcome == "denied"
    empty = client.patch(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(people["alice"]),
                         json={})
    assert empty.status_code == 400
    assert recorded(core, "auth:request:deny")[-1].reason == "send name and/or tags"
    approver = client.patch(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(people["bob"]),
                            json={"name": "x"})
    assert approver.status_code == 403
    [row] = _rows(core)
    assert (row.name, labels.tags_of(row)) == ("api name", [])


# --- search and filters ----------------------------------------------------------------------


@pytest.fixture
def several(client: FlaskClient, people: dict[str, str], core: Sealroom,
            fake_backend: FakeBackend) -> dict[str, str]:
    """Alice's five sandboxes (listed newest first), two of them ended (at most four run
    at once), and one of Erin's."""

    def ended(sandbox_id: str, exit_code: int) -> str:
        fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=exit_code)
        supervisor_pass(core)
        return sandbox_id

    return {
        "base": _launched(client, people["alice"], name="Baseline", tags=["baseline", "c1"]),
        "wide": ended(_launched(client, people["alice"], name="Wide net", tags=["c1"]), 0),
        "plain": ended(_launched(client, people["alice"]), 1),
        "odd": _launched(client, people["alice"], name="100% done_ok", tags=["odd"]),
        "last": _launched(client, people["alice"], name="baseline again",
                          tags=["baseline"]),
        "erins": _launched(client, people["erin"], name="Baseline", tags=["baseline"]),
    }


def test_the_list_searches_names_and_ids_and_filters_by_tag_status_dataset_kind(
        client: FlaskClient, several: dict[str, str]) -> None:
    login(client, "alice")
    s = several
    everything = _html(client, "/sandboxes")
    assert _ids(everything) == [s["last"], s["odd"], s["plain"], s["wide"], s["base"]]
    assert "Wide net" in everything and 'href="/sandboxes?tag=c1"' in everything
    assert _ids(_html(client, "/sandboxes?q=BASELINE")) == [s["last"], s["base"]]
    assert _ids(_html(client, f"/sandboxes?q={s['plain'][3:9]}")) == [s["plain"]]
    # LIKE's wildcards are plain characters in a search.
    assert _ids(_html(client, "/sandboxes?q=100%25")) == [s["odd"]]
    assert _ids(_html(client, "/sandboxes?q=_ok")) == [s["odd"]]
    assert _ids(_html(client, "/sandboxes?tag=c1")) == [s["wide"], s["base"]]
    assert _ids(_html(client, "/sandboxes?tag=c1&tag=baseline")) == [s["base"]]
    assert _ids(_html(client, "/sandboxes?tag=c")) == []  # a whole tag, not a part
    assert _ids(_html(client, "/sandboxes?status=succeeded")) == [s["wide"]]
    assert _ids(_html(client, "/sandboxes?status=failed")) == [s["plain"]]
    assert _ids(_html(client, "/sandboxes?status=running&q=base")) == [s["last"], s["base"]]
    assert _ids(_html(client, "/sandboxes?dataset=demo&kind=single")) == _ids(everything)
    assert _ids(_html(client, "/sandboxes?dataset=dem")) == []
    assert _ids(_html(client, "/sandboxes?kind=mpi")) == []
    assert "No sandbox of yours matches" in _html(client, "/sandboxes?kind=mpi")
    assert s["erins"] not in everything


@pytest.mark.parametrize(("query", "said"), [
    ("status=nonsense", "status must be one of"),
    ("tag=Not%20a%20tag", "is not a tag"),
    ("dataset=../etc", "is not a dataset name"),
    ("kind=vm", "kind must be"),
    ("page=0", "page must be a whole number"),
    ("page=%C2%B2", "page must be a whole number"),
    ("q=" + "x" * 81, "the search text: a name has at most 80 characters"),
])
def test_bad_filters_are_a_page_message_and_a_400_audited(
        client: FlaskClient, people: dict[str, str], core: Sealroom, query: str,
        said: str) -> None:
    login(client, "alice")
    html = _html(client, f"/sandboxes?{query}", status=400)
    assert 'id="search-error"' in html and said in html.replace("&#39;", "'")
    assert 'id="sandbox-search"' in html  # the search form, to put it right
    refusal = recorded(core, "auth:request:deny")[-1]
    assert (refusal.actor, refusal.target) == ("alice", "GET /sandboxes")
    assert said in refusal.reason
    api = client.get(f"/api/v1/sandboxes?{query}", headers=bearer(people["alice"]))
    assert api.status_code == 400 and said in api.get_json()["error"]["message"]
    assert recorded(core, "auth:request:deny")[-1].target == "GET /api/v1/sandboxes"


def test_the_list_comes_a_page_at_a_time_keeping_the_search(
        client: FlaskClient, people: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from console.services import sandbox_search

    made = [_launched(client, people["alice"], tags=["many"]) for _ in range(3)]
    newest_first = list(reversed(made))
    api = client.get("/api/v1/sandboxes?tag=many&per_page=2", headers=bearer(people["alice"]))
    body = api.get_json()
    assert ([x["id"] for x in body["sandboxes"]], body["total"], body["pages"]) == \
        (newest_first[:2], 3, 2)
    second = client.get("/api/v1/sandboxes?tag=many&per_page=2&page=2",
                        headers=bearer(people["alice"])).get_json()
    assert [x["id"] for x in second["sandboxes"]] == newest_first[2:]
    past = client.get("/api/v1/sandboxes?per_page=2&page=9",
                      headers=bearer(people["alice"])).get_json()
    assert past["page"] == 2  # past the end: the last page

    login(client, "alice")
    assert 'id="pages"' not in _html(client, "/sandboxes?tag=many")  # 3 fit on a page of 50
    monkeypatch.setattr(sandbox_search, "PAGE_SIZE", 2)
    first = _html(client, "/sandboxes?tag=many")
    assert _ids(first) == newest_first[:2] and "1–2 of 3 sandboxes found" in first
    assert 'href="/sandboxes?tag=many&amp;page=2" rel="next"' in first
    last = _html(client, "/sandboxes?tag=many&page=2")
    assert _ids(last) == newest_first[2:] and "Page 2 of 2" in last
    assert 'href="/sandboxes?tag=many" rel="prev"' in last


def test_page_links_keep_the_search() -> None:
    from console.services.sandbox_search import SandboxQuery

    query = SandboxQuery.parse(q="base", status="running", tags=["b", "a"], page="3")
    assert query.arguments(page=4) == {"q": "base", "status": "running", "tag": ["a", "b"],
                                       "page": 4}
    assert query.arguments(page=1) == {"q": "base", "status": "running", "tag": ["a", "b"]}
    assert query.arguments(tag=["z"]) == {"q": "base", "status": "running", "tag": ["z"]}
    assert SandboxQuery.parse().arguments() == {}


# --- links between sandboxes, releases and audit timelines -------------------------------


@pytest.fixture
def released_from(client: FlaskClient, people: dict[str, str], core: Sealroom,
                  fake_backend: FakeBackend) -> tuple[str, str]:
    """A finished sandbox of alice's and a release request made from it: (sandbox, release)."""
    sandbox_id = _launched(client, people["alice"], name="Paper weights", tags=["paper"])
    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
    outbox = core.settings.sandboxes_dir / sandbox_id / "outbox"
    (outbox / "model.safetensors").write_bytes(safetensors_bytes({"w": [0.5, -1.25]}))
    supervisor_pass(core)
    response = client.post("/api/v1/releases", headers=bearer(people["alice"]), json={
        "sandbox": sandbox_id, "files": ["model.safetensors"],
        "justification": "weights for the paper"})
    assert response.status_code == 201, response.get_json()
    return sandbox_id, str(response.get_json()["id"])


def test_sandbox_and_release_pages_link_each_other(client: FlaskClient,
                                                   released_from: tuple[str, str]) -> None:
    sandbox_id, release_id = released_from
    login(client, "alice")
    sandbox_page = _html(client, f"/sandboxes/{sandbox_id}")
    releases_part = sandbox_page.split('id="run-releases">', 1)[1].split("</dd>", 1)[0]
    assert f'<a href="/releases/{release_id}">{release_id}</a>' in releases_part
    release_page = _html(client, f"/releases/{release_id}")
    sandbox_part = release_page.split('id="release-sandbox">', 1)[1].split("</dd>", 1)[0]
    assert f'<a href="/sandboxes/{sandbox_id}">{sandbox_id}</a>' in sandbox_part
    assert "Paper weights" in sandbox_part
    assert 'id="audit-timeline"' not in release_page + sandbox_page  # engineers: no audit
    listing = _html(client, "/releases")
    assert f'<a href="/sandboxes/{sandbox_id}">{sandbox_id}</a>' in listing
    assert f'<a href="/sandboxes/{sandbox_id}">' in _html(client, "/sandboxes?tag=paper")


def test_an_approver_sees_the_sandbox_id_unlinked_and_the_auditor_every_link(
        client: FlaskClient, app: Flask, released_from: tuple[str, str]) -> None:
    sandbox_id, release_id = released_from
    login(client, "bob")
    for page in (_html(client, f"/releases/{release_id}"), _html(client, "/releases")):
        assert sandbox_id in page and f'href="/sandboxes/{sandbox_id}"' not in page
    client = app.test_client()
    login(client, "audrey")
    release_page = _html(client, f"/releases/{release_id}")
    assert f'href="/sandboxes/{sandbox_id}"' in release_page
    assert f'id="audit-timeline" href="/audit/timeline/release/{release_id}"' in release_page
    sandbox_page = _html(client, f"/sandboxes/{sandbox_id}")
    assert f'href="/releases/{release_id}"' in sandbox_page
    assert f'id="audit-timeline" href="/audit/timeline/sandbox/{sandbox_id}"' in sandbox_page
    assert 'id="label-form"' not in sandbox_page  # read-only: no renaming
    assert 'href="/sandboxes?tag=paper"' not in sandbox_page  # not the auditor's list
    assert client.post(f"/sandboxes/{sandbox_id}/label", data={
        "csrf_token": csrf_from(client, "/"), "name": "x"}).status_code == 403


# --- the CLI -----------------------------------------------------------------------------


def test_the_cli_launches_lists_filters_and_relabels(served: str, people: dict[str, str],
                                                    core: Sealroom) -> None:
    def cli(*args: str) -> Any:
        return CliRunner().invoke(main, ["sandbox", *args],
                                  env={"SEALROOM_URL": served,
                                       "SEALROOM_TOKEN": people["alice"]})

    launched = cli("launch", "--dataset", "demo", "--example", "mlp", "--name", "CLI run",
                   "--tag", "cli", "--tag", "Baseline")
    assert launched.exit_code == 0, launched.output
    sandbox_id = launched.output.strip()
    other = cli("launch", "--dataset", "demo", "--example", "mlp").output.strip()
    listed = cli("list")
    assert listed.exit_code == 0, listed.output
    assert [line.split()[0] for line in listed.output.splitlines()] == [other, sandbox_id]
    assert "CLI run #baseline #cli" in listed.output
    assert cli("list", "--tag", "cli").output.split()[0] == sandbox_id
    assert cli("list", "--search", "cli run", "--status", "running").output.split()[0] == \
        sandbox_id
    assert cli("list", "--tag", "nothing").output.strip() == "no sandbox matches"
    refused = cli("list", "--status", "sleeping")
    assert refused.exit_code == 1 and "status must be one of" in refused.output
    relabelled = cli("label", sandbox_id, "--name", "renamed", "--tag", "final")
    assert relabelled.exit_code == 0, relabelled.output
    assert relabelled.output.strip() == f"{sandbox_id}: renamed; tags: final"
    cleared = cli("label", sandbox_id, "--no-tags")
    assert cleared.output.strip() == f"{sandbox_id}: renamed; tags: none"
    bad = cli("launch", "--dataset", "demo", "--example", "mlp", "--tag", "no way")
    assert bad.exit_code == 1 and "'no way' is not a tag" in bad.output
    assert cli("label", sandbox_id).exit_code == 1
