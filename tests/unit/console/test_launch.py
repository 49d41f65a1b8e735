"""Launching as steps, with the fake backend: kind and ranks in the order, the policy's dry run
deciding about a running sandbox exactly as a launch of the same order is decided (GPUs and
MPI nodes included), and a launch refused after its container exists leaving nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlmodel import select

from audit.events import Actor
from console.core import Caller, Sealroom
from console.models import Sandbox
from console.services import launch as launch_service
from console.services import policy as policy_service
from console.services.errors import AuditUnavailable
from sandbox.spec import NetworkPlan
from tests.helpers import OPERATOR, bearer, change_policy, login, recorded, supervisor_pass


def _launch(client: FlaskClient, token: str, **body: Any) -> Any:
    return client.post("/api/v1/sandboxes", headers=bearer(token),
                       json={"dataset": "demo", "example": "mlp", **body})


def _sandboxes(core: Sealroom) -> list[Sandbox]:
    with core.transaction() as session:
        return list(session.exec(select(Sandbox)).all())


def test_a_launch_records_its_kind_ranks_and_gpus(client: FlaskClient, core: Sealroom,
                                                  alice: str) -> None:
    response = _launch(client, alice)
    assert response.status_code == 201, response.get_json()
    (row,) = _sandboxes(core)
    assert (row.kind, row.ranks, row.gpus) == ("single", 1, 0)


@pytest.mark.parametrize("body, message", [
    ({"kind": "swarm"}, "kind must be 'single' or 'mpi', not 'swarm'"),
    ({"kind": 3}, "kind must be 'single' or 'mpi'"),
    ({"ranks": "two"}, "ranks must be a whole number"),
    ({"ranks": 2}, "a single sandbox has one rank; ask for kind 'mpi' for more"),
    ({"kind": "mpi", "ranks": 0}, "ranks must be at least 1"),
    ({"kind": "mpi", "ranks": 1}, "an MPI cluster has 2 to 64 ranks"),
])
def test_bad_kinds_and_ranks_are_refused_and_audited(client: FlaskClient, core: Sealroom,
                                                     alice: str, body: dict[str, Any],
                                                     message: str) -> None:
    response = _launch(client, alice, **body)
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == message
    event = recorded(core, "sandbox:sandbox:launch")[-1]
    assert (event.outcome, event.reason) == ("denied", message)
    assert _sandboxes(core) == []


def test_a_cluster_launches_as_one_sandbox_of_ranks_on_the_mpi_image(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any) -> None:
    response = _launch(client, alice, kind="mpi", ranks=3)
    assert response.status_code == 201, response.get_json()
    sandbox_id = response.get_json()["id"]
    (spec,) = fake_backend.created_specs
    assert (spec.ranks, spec.network, spec.image) == (3, NetworkPlan.MEMBERS_ONLY,
                                                       "sha256:" + "cd" * 32)
    row = _sandboxes(core)[0]
    assert (row.kind, row.ranks, row.image) == ("mpi", 3, "sealroom/horovod:test")
    state = json.loads(row.backend_state)
    assert [m["name"] for m in state["members"]] == ["main", "rank-1", "rank-2"]
    launch_event = recorded(core, "sandbox:sandbox:launch")[-1]
    assert json.loads(launch_event.details)["network"] == "isolated"
    assert sandbox_id == row.id


def test_a_cluster_over_the_policys_size_is_refused_by_its_rule(
        client: FlaskClient, core: Sealroom, alice: str) -> None:
    response = _launch(client, alice, kind="mpi", ranks=5)
    assert response.status_code == 403
    assert response.get_json()["error"]["rule"] == "resources.roles.engineer.max_mpi_nodes"
    assert _sandboxes(core) == []
    assert list(core.settings.sandboxes_dir.iterdir()) == []


@pytest.mark.parametrize("launched_as, order, rule", [
    ({"gpus": 2}, {"limits": {"gpus": 2}}, "resources.default.max_gpus"),
    ({"kind": "mpi", "ranks": 5}, {"kind": "mpi", "ranks": 5},
     "resources.roles.engineer.max_mpi_nodes"),
])
def test_the_dry_run_decides_like_the_launch(client: FlaskClient, core: Sealroom, alice: str,
                                             launched_as: dict[str, Any], order: dict[str, Any],
                                             rule: str) -> None:
    """A sandbox running as `launched_as` (as on an installation that can run it) and a new
    launch of the same order: the policy's dry run and the launch name the same rule, for
    the same reason."""
    sandbox_id = _launch(client, alice).get_json()["id"]
    with core.transaction() as session:
        row = session.get(Sandbox, sandbox_id)
        assert row is not None
        for key, value in launched_as.items():
            setattr(row, key, value)
        session.add(row)
    refused = _launch(client, alice, **order)
    assert refused.status_code == 403, refused.get_json()
    error = refused.get_json()["error"]
    assert error["rule"] == rule

    result = policy_service.dry_run(core, OPERATOR, policy_service.active_version(core).text)
    assert [(f.id, f.rule, f.reason) for f in result.sandboxes] == \
        [(sandbox_id, rule, error["message"])]
    assert [f.id for f in policy_service.forbidden_sandboxes(core)] == [sandbox_id]


def test_a_launch_that_cannot_be_recorded_leaves_nothing(core: Sealroom, alice: str,
                                                         fake_backend: Any) -> None:
    with core.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit_event "
            "BEGIN SELECT RAISE(ABORT, 'audit store unwritable'); END")
    caller = Caller(Actor("alice", "engineer", "token", "test"))
    with pytest.raises(AuditUnavailable) as raised:
        launch_service.launch(core, caller, launch_service.LaunchOrder(["demo"], example="mlp"))
    assert raised.value.message == \
        "the audit log cannot be written; the sandbox was not launched"
    assert len(fake_backend.created_specs) == 1  # it got as far as the container
    assert fake_backend.sandboxes == {}  # which went again
    assert _sandboxes(core) == []
    assert list(core.settings.sandboxes_dir.iterdir()) == []


def test_the_launch_event_names_the_decision(client: FlaskClient, core: Sealroom,
                                             alice: str) -> None:
    sandbox_id = _launch(client, alice).get_json()["id"]
    event = recorded(core, "sandbox:sandbox:launch")[-1]
    details = json.loads(event.details)
    assert event.target == f"sandbox:{sandbox_id}"
    assert (details["rule"], details["network"]) == ("launch", "none")
    assert details["spec"]["env"]["SEALROOM_DATA"] == "/data/demo"


def test_a_rank_that_ends_ends_the_cluster_with_a_clear_reason(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any) -> None:
    sandbox_id = _launch(client, alice, kind="mpi", ranks=2).get_json()["id"]
    supervisor_pass(core)
    running = client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(alice)).get_json()
    assert running["members"] == [{"name": "main", "state": "running", "exit_code": None},
                                  {"name": "rank-1", "state": "running", "exit_code": None}]
    fake_backend.finish(fake_backend.member_handle(sandbox_id, "rank-1"), exit_code=137)
    supervisor_pass(core)
    login(client, "alice")
    page = client.get(f"/sandboxes/{sandbox_id}").get_data(as_text=True)
    # The console's own words and the backend's names and numbers (the one rule).
    assert "rank 0 (launcher): running; rank 1: exited (exit code 137)" in page
    body = client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(alice)).get_json()
    assert body["members"][1] == {"name": "rank-1", "state": "exited", "exit_code": 137}
    assert (body["status"], body["kind"], body["ranks"]) == ("failed", "mpi", 2)
    assert body["reason"] == "rank-1 exited with code 137; the cluster was stopped"
    assert fake_backend.sandboxes == {}  # every member removed
    event = recorded(core, "sandbox:sandbox:exit")[-1]
    assert json.loads(event.details)["ended_by"] == "rank-1"


def test_one_ranks_log_is_its_tagged_lines_charged_as_the_whole_log(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any) -> None:
    """Sandbox bytes through the ledger (the one rule): a rank's view is cut from the
    launcher's log, and the bytes read for it are charged like any log view."""
    sandbox_id = _launch(client, alice, kind="mpi", ranks=2).get_json()["id"]
    fake_backend.emit(fake_backend.member_handle(sandbox_id, "main"),
                      b"[1,0]<stdout>:epoch 1\n[1,1]<stdout>:rank 1/2[1,1]<stdout>:\n"
                      b"[1,1]<stderr>:warn[1,0]<stdout>:epoch 2\n[1,1]<stderr>:ing\n")
    one = client.get(f"/api/v1/sandboxes/{sandbox_id}/logs?rank=1&format=json",
                     headers=bearer(alice)).get_json()
    assert one["log"] == "rank 1/2\nwarning\n"
    whole = client.get(f"/api/v1/sandboxes/{sandbox_id}/logs?format=json",
                       headers=bearer(alice)).get_json()
    assert one["offset"] == whole["offset"] == whole["total"]
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}/logs?rank=2",
                      headers=bearer(alice)).status_code == 400
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}/logs?rank=x",
                      headers=bearer(alice)).status_code == 400
    views = recorded(core, "sandbox:logs:view")
    assert views and all(e.outcome == "ok" for e in views)


def test_gpus_where_the_host_has_them_and_the_policy_allows(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any) -> None:
    change_policy(core, {"resources": {"default": {"max_gpus": 2}}})
    fake_backend.gpus = True
    response = _launch(client, alice, kind="mpi", ranks=2, limits={"gpus": 2})
    assert response.status_code == 201, response.get_json()
    (spec,) = fake_backend.created_specs
    assert (spec.gpus, spec.ranks) == (2, 2)
    assert json.loads(_sandboxes(core)[0].backend_state)["gpus"] == 2
    over = _launch(client, alice, limits={"gpus": 3})
    assert over.status_code == 403
    assert over.get_json()["error"]["rule"] == "resources.default.max_gpus"


def test_a_cluster_that_lost_a_member_is_lost_and_freed_whole(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any) -> None:
    sandbox_id = _launch(client, alice, kind="mpi", ranks=3).get_json()["id"]
    fake_backend.vanish(fake_backend.member_handle(sandbox_id, "rank-2"))
    supervisor_pass(core)
    body = client.get(f"/api/v1/sandboxes/{sandbox_id}", headers=bearer(alice)).get_json()
    assert body["status"] == "lost"
    assert fake_backend.sandboxes == {}  # the launcher and rank 1 went too
