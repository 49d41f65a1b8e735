"""The console's pages for MPI clusters, through HTTP with the fake backend: the launch form
offers one container or a cluster of N ranks within the policy's cap, and the live log view
shows one rank's lines when asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlmodel import select

from console.core import Sealroom
from console.models import Sandbox
from tests.helpers import csrf_from, login


@pytest.fixture
def alice(make_user: Callable[..., tuple[str, str]], dataset: str) -> str:
    return make_user("alice")[0]


def _launch(client: FlaskClient, **fields: Any) -> Any:
    data = {"csrf_token": csrf_from(client, "/sandboxes/new"), "dataset": "demo",
            "source": "example", "example": "mlp", "kind": "single", "ranks": "1",
            "command": "python train.py", "cpus": "1", "memory_mb": "1024", "pids": "128",
            "timeout_s": "600"}
    data.update(fields)
    return client.post("/sandboxes/new", data=data, content_type="multipart/form-data")


def _sandboxes(core: Sealroom) -> list[Sandbox]:
    with core.transaction() as session:
        return list(session.exec(select(Sandbox)).all())


def test_the_form_offers_a_cluster_within_the_policys_cap(client: FlaskClient,
                                                          alice: str) -> None:
    login(client, "alice")
    html = client.get("/sandboxes/new").get_data(as_text=True)
    assert "One container" in html and "An MPI cluster of N ranks" in html
    assert "2 to 4 for a cluster" in html  # the default policy: engineers up to 4 ranks
    assert '<option value="mlp-horovod">mlp-horovod (suggested for clusters)</option>' in html
    assert '<option selected value="mlp">mlp</option>' in html


def test_a_cluster_launches_from_the_form_with_its_ranks(client: FlaskClient, alice: str,
                                                         core: Sealroom) -> None:
    login(client, "alice")
    response = _launch(client, kind="mpi", ranks="3", example="mlp-horovod")
    assert response.status_code == 302, response.get_data(as_text=True)
    [row] = _sandboxes(core)
    assert (row.kind, row.ranks, row.image) == ("mpi", 3, "sealroom/horovod:test")
    assert row.code_name == "example:mlp-horovod"
    html = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "MPI cluster of 3 ranks" in html
    assert 'id="log-rank"' in html
    assert [f'<option value="{r}">rank {r}</option>' in html for r in range(4)] == \
        [True, True, True, False]


def test_one_container_has_no_rank_selector(client: FlaskClient, alice: str) -> None:
    login(client, "alice")
    response = _launch(client)
    assert response.status_code == 302, response.get_data(as_text=True)
    html = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "one container" in html and 'id="log-rank"' not in html


def test_a_cluster_over_the_cap_is_refused_with_the_policys_rule(
        client: FlaskClient, alice: str, core: Sealroom) -> None:
    login(client, "alice")
    response = _launch(client, kind="mpi", ranks="5", example="mlp-horovod")
    assert response.status_code == 403
    html = response.get_data(as_text=True)
    assert "rule resources.roles.engineer.max_mpi_nodes" in html
    assert _sandboxes(core) == []


def test_ranks_for_one_container_are_refused(client: FlaskClient, alice: str,
                                             core: Sealroom) -> None:
    login(client, "alice")
    response = _launch(client, kind="single", ranks="2")
    assert response.status_code == 400
    assert "a single sandbox has one rank" in response.get_data(as_text=True)
    assert _sandboxes(core) == []


def test_the_live_view_shows_one_ranks_lines(client: FlaskClient, alice: str,
                                             fake_backend: Any) -> None:
    login(client, "alice")
    location = _launch(client, kind="mpi", ranks="2", example="mlp-horovod").headers["Location"]
    sandbox_id = location.rsplit("/", 1)[1]
    launcher = fake_backend.member_handle(sandbox_id, "main")
    fake_backend.emit(launcher, b"[1,0]<stdout>:epoch 1\n[1,1]<stdout>:rank 1/2\n"
                                b"[1,0]<stdout>:epoch 2\n")
    whole = client.get(f"{location}/live").get_json()
    assert whole["log"].count("<stdout>") == 3
    zero = client.get(f"{location}/live?rank=0").get_json()
    one = client.get(f"{location}/live?rank=1").get_json()
    assert (zero["log"], one["log"]) == ("epoch 1\nepoch 2\n", "rank 1/2\n")
    assert zero["offset"] == one["offset"] == whole["offset"]
    assert zero["sandbox"]["kind"] == "mpi" and zero["sandbox"]["ranks"] == 2
    for bad in ("2", "x", "-1"):
        assert client.get(f"{location}/live?rank={bad}").status_code == 400, bad


def test_a_ranks_line_still_being_written_waits_for_its_end(client: FlaskClient, alice: str,
                                                            fake_backend: Any) -> None:
    login(client, "alice")
    location = _launch(client, kind="mpi", ranks="2", example="mlp-horovod").headers["Location"]
    launcher = fake_backend.member_handle(location.rsplit("/", 1)[1], "main")
    fake_backend.emit(launcher, b"[1,1]<stdout>:rank 1/2\n[1,1]<stdout>:loss ")
    first = client.get(f"{location}/live?rank=1").get_json()
    assert first["log"] == "rank 1/2\n"
    fake_backend.emit(launcher, b"0.25\n")
    second = client.get(f"{location}/live?rank=1&offset={first['offset']}").get_json()
    assert second["log"] == "loss 0.25\n"
