"""Approvers see what they approve: the rendered view of each release file, through HTTP
(page and API) with the fake backend; who may open it, and that every opening is audited.

What these views show is sandbox bytes shown to approvers (not the requester) after the
checks, audited per view: the requester's channel is closed (403 before release).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from console.core import Sealroom
from tests.helpers import bearer, login, recorded, safetensors_bytes, supervisor_pass

SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
def people(make_user: Callable[..., tuple[str, str]], dataset: str) -> dict[str, str]:
    return {name: make_user(name, role)[1] for name, role in [
        ("alice", "engineer"), ("mallory", "engineer"), ("bob", "approver"),
        ("carol", "approver"), ("audrey", "auditor")]}


@pytest.fixture
def release(client: FlaskClient, people: dict[str, str], core: Sealroom,
            fake_backend: Any) -> Callable[[dict[str, bytes]], str]:
    """A release request of alice's for these outbox files; returns its id."""

    def make(files: dict[str, bytes]) -> str:
        created = client.post("/api/v1/sandboxes", headers=bearer(people["alice"]),
                              json={"dataset": "demo", "example": "mlp"})
        sandbox_id = created.get_json()["id"]
        fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
        outbox = core.settings.sandboxes_dir / sandbox_id / "outbox"
        for name, data in files.items():
            (outbox / name).write_bytes(data)
        supervisor_pass(core)  # after the files exist: the exit schedules the hashing
        client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(people["alice"]))
        response = client.post("/api/v1/releases", headers=bearer(people["alice"]), json={
            "sandbox": sandbox_id, "files": list(files), "justification": "for the paper"})
        assert response.status_code == 201, response.get_json()
        return str(response.get_json()["id"])

    return make


MODEL = {"model.safetensors": safetensors_bytes(
             {"encoder.weight": [0.5, -1.25, 3.0], "encoder.bias": [1.0, 2.0]},
             metadata={"format": "pt", "epochs": "12"}),
         "metrics.json": json.dumps({"accuracy": 0.9, "n_test": 2000}).encode()}


def _view(client: FlaskClient, token: str, rid: str, position: int) -> Any:
    return client.get(f"/api/v1/releases/{rid}/files/{position}/view", headers=bearer(token))


def test_an_approver_sees_tensors_and_metadata(client: FlaskClient, people: dict[str, str],
                                               core: Sealroom,
                                               release: Callable[[dict[str, bytes]], str]) -> None:
    rid = release(MODEL)
    # files are listed by name: metrics.json is file 1, model.safetensors file 2
    response = _view(client, people["bob"], rid, 2)

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["name"], body["position"], body["files"]) == ("model.safetensors", 2, 2)
    view = body["view"]
    assert view["kind"] == "safetensors"
    tensors = {t["name"]: t for t in view["safetensors"]["tensors"]}
    assert set(tensors) == {"encoder.weight", "encoder.bias"}
    assert tensors["encoder.weight"]["stats"]["min"] == -1.25
    assert tensors["encoder.weight"]["stats"]["max"] == 3.0
    assert {(e["key"], e["value"]) for e in view["safetensors"]["metadata"]} == {
        ("format", "pt"), ("epochs", "12")}

    [event] = recorded(core, "release:file:view")
    details = json.loads(event.details)
    assert (event.actor, event.outcome, event.target) == ("bob", "ok", f"release:{rid}")
    assert details["position"] == 2 and details["sha256"] == body["sha256"]

    metrics = _view(client, people["carol"], rid, 1).get_json()["view"]
    assert [(e["key"], e["value"]) for e in metrics["metrics"]["entries"]] == [
        ("accuracy", "0.9"), ("n_test", "2000")]
    assert [e.actor for e in recorded(core, "release:file:view")] == ["bob", "carol"]


def test_the_review_page_links_each_file_view_for_approvers(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        release: Callable[[dict[str, bytes]], str]) -> None:
    rid = release(MODEL)
    login(client, "bob")
    detail = client.get(f"/releases/{rid}").get_data(as_text=True)
    assert f'href="/releases/{rid}/files/2"' in detail

    page = client.get(f"/releases/{rid}/files/2")

    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for text in ("encoder.weight", "encoder.bias", "epochs", "F32", "[3]", "-1.25"):
        assert text in html, text
    assert [(e.actor, e.outcome) for e in recorded(core, "release:file:view")] == [("bob", "ok")]
    timeline = client.get(f"/releases/{rid}").get_data(as_text=True)
    assert "<strong>bob</strong> file view" in timeline


def test_the_requester_gets_403_before_release_audited_as_denied(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        release: Callable[[dict[str, bytes]], str]) -> None:
    rid = release(MODEL)

    response = _view(client, people["alice"], rid, 2)
    assert response.status_code == 403
    assert "encoder" not in response.get_data(as_text=True)
    login(client, "alice")
    page = client.get(f"/releases/{rid}/files/2")
    assert page.status_code == 403 and "encoder" not in page.get_data(as_text=True)
    assert "/files/" not in client.get(f"/releases/{rid}").get_data(as_text=True)

    events = recorded(core, "release:file:view")
    assert [(e.actor, e.outcome, e.target) for e in events] == [
        ("alice", "denied", f"release:{rid}"), ("alice", "denied", f"release:{rid}")]

    # once released, the files are out anyway: the requester may look too
    for approver in ("bob", "carol"):
        client.post(f"/api/v1/releases/{rid}/approve", headers=bearer(people[approver]))
    after = _view(client, people["alice"], rid, 2)
    assert after.status_code == 200 and after.get_json()["view"]["kind"] == "safetensors"
    assert recorded(core, "release:file:view")[-1].outcome == "ok"


@pytest.mark.parametrize("who, position, status", [
    ("mallory", 1, 404),  # another engineer: the release does not exist for them
    ("audrey", 1, 403),  # an auditor's role reads no releases
    ("bob", 3, 404),  # no such file
    ("bob", 0, 404),
])
def test_others_and_bad_positions_are_refused_and_audited(
        client: FlaskClient, people: dict[str, str], core: Sealroom,
        release: Callable[[dict[str, bytes]], str], who: str, position: int,
        status: int) -> None:
    rid = release(MODEL)
    response = _view(client, people[who], rid, position)
    assert response.status_code == status
    events = recorded(core, request_id=response.headers["X-Request-Id"])
    assert events and all(e.outcome == "denied" for e in events)


def test_html_escapes_a_script_in_a_tensor_name(
        client: FlaskClient, people: dict[str, str],
        release: Callable[[dict[str, bytes]], str]) -> None:
    rid = release({"model.safetensors": safetensors_bytes(
        {SCRIPT: [1.0], "bell\x07": [2.0]}, metadata={SCRIPT: SCRIPT})})
    login(client, "bob")

    html = client.get(f"/releases/{rid}/files/1").get_data(as_text=True)

    assert SCRIPT not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "bell\\x07" in html and "\x07" not in html


def test_an_unparsable_file_and_a_pickle_get_views_in_the_consoles_words(
        client: FlaskClient, people: dict[str, str],
        release: Callable[[dict[str, bytes]], str]) -> None:
    rid = release({"a.onnx": b"\xff\xff\xff\xff\xff", "b.pt": b"\x80\x04K\x01."})
    onnx_view = _view(client, people["bob"], rid, 1).get_json()["view"]
    assert onnx_view["kind"] == "unreadable"
    assert onnx_view["error"].startswith("This file could not be read as an ONNX model")
    pickle_view = _view(client, people["bob"], rid, 2).get_json()
    assert pickle_view["view"]["kind"] == "none" and pickle_view["size"] == 5
    login(client, "bob")
    html = client.get(f"/releases/{rid}/files/2").get_data(as_text=True)
    assert "no rendered view for this type" in html and pickle_view["sha256"] in html


def _onnx_bytes() -> bytes:
    pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([[1.0, -2.0]], dtype=np.float32), name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="project", doc_string=SCRIPT)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])], [weight])
    model = helper.make_model(graph, producer_name="trainer")
    helper.set_model_props(model, {"card": "line one\nline two"})
    return bytes(model.SerializeToString())


def test_onnx_and_csv_pages_render_in_full(client: FlaskClient, people: dict[str, str],
                                           release: Callable[[dict[str, bytes]], str]) -> None:
    rid = release({"model.onnx": _onnx_bytes(),
                   "metrics.csv": b"epoch,loss\n1,0.5\n2,0.25\n"})
    login(client, "bob")

    csv_page = client.get(f"/releases/{rid}/files/1").get_data(as_text=True)
    onnx_page = client.get(f"/releases/{rid}/files/2").get_data(as_text=True)

    assert "2 data rows, 2 columns" in csv_page and "loss" in csv_page
    for text in ("MatMul", "project", "Every string in the model", "graph.node[0].doc_string",
                 "metadata_props[0].value", "line one\\x0aline two", "FLOAT", "[n, 2]"):
        assert text in onnx_page, text
    assert SCRIPT not in onnx_page
