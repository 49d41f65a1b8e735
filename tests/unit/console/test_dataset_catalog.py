"""The dataset catalog through HTTP with the fake backend: what a version holds (description,
README, files with sizes, column names), for the people the policy lets use the dataset.

Which kind of view this is (the product's one rule): the catalog shows the files of a dataset
as it was registered by the platform's own people (a security officer or an admin, from an
upload, the host's import directory or the CLI), never anything a sandbox wrote: datasets are
mounted read-only, and no sandbox output ever becomes a dataset version. So it spends no
disclosure budget; it is audited as a dataset view (`admin:dataset:view`). The README is
shown as escaped plain text, and every read is bounded.
"""

from __future__ import annotations

import io
import re
import tracemalloc
import zipfile
from collections.abc import Callable
from html import unescape
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from console.cli import main
from console.core import Sealroom
from console.services import dataset_catalog
from console.services import datasets as dataset_service
from tests.helpers import OPERATOR, bearer, csrf_from, login, recorded

ROLES = {"alice": "engineer", "sam": "security_officer", "audrey": "auditor", "bob": "approver"}
HOSTILE_README = ("# Notes\n\nCardiology <b>cohort</b> <script>alert('x')</script> "
                  "vitals.\n\nSecond paragraph.\n")


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in ROLES.items()}


def _register(core: Sealroom, tmp_path: Path, name: str, files: dict[str, bytes],
              allow: list[str]) -> None:
    source = tmp_path / f"src-{name}"
    for relative, data in files.items():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes(data)
    dataset_service.register_dataset(core, OPERATOR, source, name, allow)


def _page(client: FlaskClient, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, (url, response.status_code)
    return response.get_data(as_text=True)


def _as(app: Flask, name: str) -> FlaskClient:
    client = app.test_client()
    login(client, name)
    return client


def test_an_engineer_sees_description_files_sizes_columns_and_readme(
        app: Flask, core: Sealroom, people: dict[str, str]) -> None:
    alice = _as(app, "alice")
    html = _page(alice, "/datasets/demo")
    catalog = re.search(r'<table class="list" id="catalog-files">.*?</table>', html, re.S)
    assert catalog, "no files table"
    cells = unescape(catalog.group(0))
    columns = re.findall(r'<code class="column">([^<]*)</code>', cells)
    assert columns == [*(f"f{i}" for i in range(16)), "label"]
    stored = next(Path(p) for p in (core.settings.datasets_dir).iterdir() if p.name.startswith(
        "demo-v1-"))
    size = (stored / "train.csv").stat().st_size
    assert f"{size:,}" in cells and "README.txt" in cells
    description = re.search(r'id="catalog-description"[^>]*>([^<]*)<', html)
    assert description and description.group(1).startswith("train.csv holds 200 rows")
    assert "Sealroom demo dataset\n=====" in unescape(html)  # the README, whole, as text
    event = recorded(core, "admin:dataset:view")[-1]
    assert (event.actor, event.target, event.outcome) == ("alice", "dataset:demo@1", "ok")


def test_the_readme_is_shown_as_text_never_as_html(
        app: Flask, core: Sealroom, people: dict[str, str], tmp_path: Path) -> None:
    _register(core, tmp_path, "notes", {"README.md": HOSTILE_README.encode(),
                                        "vitals.tsv": b"patient\theart rate\r\n1\t60\r\n"},
              ["role:engineer"])
    html = _page(_as(app, "alice"), "/datasets/notes/versions/1/catalog")
    assert "<script>alert" not in html and "<b>cohort</b>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "&lt;b&gt;cohort&lt;/b&gt;" in html
    description = re.search(r'id="catalog-description"[^>]*>([^<]*)<', html)
    assert description and unescape(description.group(1)).startswith("Cardiology <b>cohort")
    assert re.findall(r'<code class="column">([^<]*)</code>', html) == ["patient", "heart rate"]


def test_an_engineer_cannot_see_a_dataset_the_policy_does_not_let_them_use(
        app: Flask, core: Sealroom, people: dict[str, str], tmp_path: Path) -> None:
    _register(core, tmp_path, "secret", {"README.md": b"# Secret\n\nWard 7 admissions.\n",
                                         "admissions.csv": b"mrn,ward\n"}, ["sam"])
    alice = _as(app, "alice")
    for url in ("/datasets/secret", "/datasets/secret/versions/1/catalog"):
        assert "Ward 7" not in _page(alice, url, 404)
    for url in ("/api/v1/datasets/secret", "/api/v1/datasets/secret/versions/1"):
        response = alice.get(url, headers=bearer(people["alice"]))
        assert response.status_code == 404 and "Ward 7" not in response.get_data(as_text=True)
    assert "secret" not in _page(alice, "/datasets")
    refused = [e for e in recorded(core, "admin:dataset:view") if e.actor == "alice"
               and e.target.startswith("dataset:secret")]
    assert len(refused) == 4 and {e.outcome for e in refused} == {"denied"}
    # the officer the policy names, and an auditor (who reads every dataset), see it
    assert "Ward 7 admissions." in _page(_as(app, "sam"), "/datasets/secret")
    assert "Ward 7 admissions." in _page(_as(app, "audrey"), "/datasets/secret/versions/1/catalog")
    # an approver has no dataset pages at all
    assert _as(app, "bob").get("/datasets/secret").status_code == 403


def test_a_huge_single_line_file_is_read_only_as_far_as_the_bound(tmp_path: Path) -> None:
    """A 4 GiB file without a newline (sparse: it costs no disk) and a 4 GiB README: each
    is read for at most its bound, and memory stays small."""
    root = tmp_path / "huge"
    root.mkdir()
    for name in ("wide.csv", "README.md"):
        with (root / name).open("wb") as handle:
            handle.truncate(4 << 30)
    (root / "README.md").write_bytes(b"Huge.\n" + b"x" * 100)  # rewritten short, then:
    with (root / "README.md").open("r+b") as handle:
        handle.truncate(4 << 30)
    tracemalloc.start()
    try:
        catalog = dataset_catalog.read_catalog(root, "sha256:huge")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, peak
    wide = next(f for f in catalog.files if f.path == "wide.csv")
    assert wide.bytes == 4 << 30 and wide.columns is None
    assert "longer than 64 KiB" in wide.note
    assert catalog.readme_truncated and len(catalog.readme) <= dataset_catalog.MAX_README_BYTES
    assert catalog.description.startswith("Huge.")


def test_links_are_never_followed_and_listing_is_capped(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "d"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside.csv").write_text("password,secret\n")
    (root / "link.csv").symlink_to(tmp_path / "outside.csv")
    (root / "sub" / "linked").symlink_to(tmp_path)
    for i in range(5):
        (root / "sub" / f"part-{i}.csv").write_text(f"c{i}\n")
    monkeypatch.setattr(dataset_catalog, "MAX_FILES_LISTED", 3)
    catalog = dataset_catalog.read_catalog(root, "sha256:links")
    assert [f.path for f in catalog.files] == ["sub/part-0.csv", "sub/part-1.csv",
                                               "sub/part-2.csv"]
    assert catalog.files_not_listed and catalog.readme == ""
    assert all("password" not in (f.columns or ()) for f in catalog.files)


def test_the_api_answers_with_the_same_catalog_and_keeps_its_contract(
        client: FlaskClient, core: Sealroom, people: dict[str, str], tmp_path: Path) -> None:
    dataset_service.register_dataset(core, OPERATOR, _second_version(tmp_path), "demo", [])
    body = client.get("/api/v1/datasets/demo", headers=bearer(people["alice"])).get_json()
    assert {"name", "versions", "pinned_versions", "usable"} <= set(body)
    assert [v["version"] for v in body["versions"]] == [2, 1]
    catalog = body["catalog"]
    assert catalog["version"] == 2 and catalog["readme_file"] == "README.txt"
    (train,) = [f for f in catalog["files"] if f["path"] == "train.csv"]
    assert train["columns"][-1] == "label" and train["bytes"] > 0
    old = client.get("/api/v1/datasets/demo/versions/1", headers=bearer(people["alice"]))
    assert old.status_code == 200
    assert old.get_json()["version"] == 1 and old.get_json()["catalog"]["available"]
    assert client.get("/api/v1/datasets/demo/versions/9",
                      headers=bearer(people["alice"])).status_code == 404
    targets = [e.target for e in recorded(core, "admin:dataset:view") if e.outcome == "ok"]
    assert targets[-2:] == ["dataset:demo@2", "dataset:demo@1"]


def _second_version(tmp_path: Path) -> Path:
    from tests.helpers import write_dataset

    return write_dataset(tmp_path / "v2", 120)


def test_an_uploaded_zip_with_a_readme_is_catalogued(
        app: Flask, core: Sealroom, people: dict[str, str]) -> None:
    sam = _as(app, "sam")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("README.md", "# Trials\n\nTrial arms and outcomes.\n")
        zipped.writestr("arms.csv", '"arm id","outcome, 30 days"\n1,0\n')
    archive.seek(0)
    response = sam.post("/datasets", data={
        "csrf_token": csrf_from(sam, "/datasets"), "name": "trials", "allow": "role:engineer",
        "data": (archive, "trials.zip")}, content_type="multipart/form-data")
    assert response.status_code == 302, response.get_data(as_text=True)
    html = _page(_as(app, "alice"), "/datasets/trials")
    assert "Trial arms and outcomes." in html
    assert re.findall(r'<code class="column">([^<]*)</code>', html) == ["arm id",
                                                                      "outcome, 30 days"]


def test_a_retired_version_whose_files_are_gone_says_so(
        app: Flask, core: Sealroom, people: dict[str, str], tmp_path: Path) -> None:
    dataset_service.register_dataset(core, OPERATOR, _second_version(tmp_path), "demo", [])
    dataset_service.retire(core, OPERATOR, "demo", 1)
    html = _page(_as(app, "alice"), "/datasets/demo/versions/1/catalog")
    assert 'id="catalog-unavailable"' in html and "catalog-files" not in html


def test_the_launch_form_links_to_the_chosen_datasets_catalog(
        app: Flask, people: dict[str, str]) -> None:
    html = _page(_as(app, "alice"), "/sandboxes/new")
    link = re.search(r'<a id="dataset-catalog-link" href="([^"]+)"', html)
    assert link and link.group(1) == "/datasets/demo"
    assert "dataset_link.js" in html


def test_the_cli_shows_a_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALROOM_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    seeded = runner.invoke(main, ["demo", "seed"])
    assert seeded.exit_code == 0, seeded.output
    shown = runner.invoke(main, ["dataset", "show", "demo"])
    assert shown.exit_code == 0, shown.output
    assert "description: train.csv holds 10000 rows" in shown.output
    assert "columns: f0, f1," in shown.output and "--- README.txt ---" in shown.output
    missing = runner.invoke(main, ["dataset", "show", "nope"])
    assert missing.exit_code != 0 and "no such dataset" in missing.output
