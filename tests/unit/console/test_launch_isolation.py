"""A launch runs on the kernel the policy's `isolation` chooses, with the fake backend: a
gVisor dataset or role gives a gVisor spec, recorded with its rule; an engine without gVisor,
and a cluster that would need it, are refused with the rule, audited, leaving nothing."""

from __future__ import annotations

import json
from typing import Any

from flask.testing import FlaskClient
from sqlmodel import select

from console.core import Sealroom
from console.models import Sandbox
from sandbox.backend import ContainerState
from sandbox.spec import Runtime
from tests.helpers import bearer, change_policy, recorded


def _launch(client: FlaskClient, token: str, **body: Any) -> Any:
    return client.post("/api/v1/sandboxes", headers=bearer(token),
                       json={"dataset": "demo", "example": "mlp", **body})


def _sandboxes(core: Sealroom) -> list[Sandbox]:
    with core.transaction() as session:
        return list(session.exec(select(Sandbox)).all())


def _with_gvisor(fake_backend: Any) -> None:
    fake_backend.engine_runtimes = frozenset({Runtime.RUNC, Runtime.GVISOR})


def test_by_default_a_sandbox_runs_on_runc_and_the_rule_is_recorded(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any) -> None:
    response = _launch(client, alice)
    assert response.status_code == 201, response.get_json()
    (spec,) = fake_backend.created_specs
    assert spec.runtime is Runtime.RUNC
    details = json.loads(recorded(core, "sandbox:sandbox:launch")[-1].details)
    assert details["isolation"] == {"runtime": "runc", "rule": "isolation.default"}
    assert "runtime" not in details["spec"]


def test_a_gvisor_dataset_makes_a_gvisor_sandbox(client: FlaskClient, core: Sealroom,
                                                 alice: str, fake_backend: Any) -> None:
    _with_gvisor(fake_backend)
    change_policy(core, {"datasets": {"demo": {"isolation": "gvisor"}}})
    response = _launch(client, alice)
    assert response.status_code == 201, response.get_json()
    (spec,) = fake_backend.created_specs
    assert spec.runtime is Runtime.GVISOR
    (row,) = _sandboxes(core)
    assert ContainerState.from_state(json.loads(row.backend_state)).runtime is Runtime.GVISOR
    assert json.loads(row.spec)["runtime"] == "gvisor"
    details = json.loads(recorded(core, "sandbox:sandbox:launch")[-1].details)
    assert details["isolation"] == {"runtime": "gvisor", "rule": "datasets.demo.isolation"}


def test_a_gvisor_role_makes_a_gvisor_sandbox(client: FlaskClient, core: Sealroom,
                                              alice: str, fake_backend: Any) -> None:
    _with_gvisor(fake_backend)
    change_policy(core, {"isolation": {"roles": {"engineer": "gvisor"}}})
    assert _launch(client, alice).status_code == 201
    assert fake_backend.created_specs[0].runtime is Runtime.GVISOR
    details = json.loads(recorded(core, "sandbox:sandbox:launch")[-1].details)
    assert details["isolation"]["rule"] == "isolation.roles.engineer"


def _refused(client: FlaskClient, core: Sealroom, fake_backend: Any, token: str,
             status: int, **body: Any) -> dict[str, Any]:
    response = _launch(client, token, **body)
    assert response.status_code == status, response.get_json()
    error: dict[str, Any] = response.get_json()["error"]
    event = recorded(core, "sandbox:sandbox:launch")[-1]
    assert event.reason == error["message"]
    assert json.loads(event.details)["rule"] == error["rule"]
    assert _sandboxes(core) == [] and fake_backend.sandboxes == {}
    assert fake_backend.created_specs == []
    assert list(core.settings.sandboxes_dir.iterdir()) == []
    return error


def test_without_gvisor_on_the_engine_a_gvisor_launch_is_refused_naming_the_rule(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any) -> None:
    change_policy(core, {"datasets": {"demo": {"isolation": "gvisor"}}})
    error = _refused(client, core, fake_backend, alice, 503)
    assert error["code"] == "engine_unavailable"
    assert error["rule"] == "datasets.demo.isolation"
    assert error["message"] == (
        "this launch must run under gVisor (dataset 'demo' requires gvisor), and the "
        "container engine has no gVisor runtime (runsc); an operator must install and "
        "register it (images/host/ensure-host.sh)")
    assert recorded(core, "sandbox:sandbox:launch")[-1].outcome == "failed"
    # Registered later (no console restart): the same launch goes through.
    _with_gvisor(fake_backend)
    assert _launch(client, alice).status_code == 201


def test_a_cluster_that_would_need_gvisor_is_refused_naming_the_rule(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any) -> None:
    _with_gvisor(fake_backend)
    change_policy(core, {"isolation": {"roles": {"engineer": "gvisor"}}})
    error = _refused(client, core, fake_backend, alice, 400, kind="mpi", ranks=2)
    assert error["rule"] == "isolation.roles.engineer"
    assert error["message"] == ("this launch must run under gVisor (role 'engineer' runs "
                                "under gvisor), and MPI clusters cannot run under gVisor here")
    assert recorded(core, "sandbox:sandbox:launch")[-1].outcome == "denied"
    # The same cluster on runc-only datasets and roles launches.
    change_policy(core, {"isolation": {"roles": {"engineer": "runc"}}})
    assert _launch(client, alice, kind="mpi", ranks=2).status_code == 201
