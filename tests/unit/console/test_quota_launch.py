"""A launch sizes the sandbox's workspace, outbox and /tmp from the policy (the caller's
role, or the default), records the sizes with the spec, and lets go of the workspace when
the sandbox ends; on the engine the sizes are hard limits (tests/integration/test_quotas.py)."""

from __future__ import annotations

import json
from collections.abc import Callable

from flask.testing import FlaskClient

from console.core import Sealroom
from console.models import Sandbox
from sandbox.volumes import OUTBOX, WORKSPACE
from tests.helpers import bearer, change_policy, supervisor_pass
from tests.mocking import FakeBackend, FakeSandboxVolumes


def test_the_policy_sizes_each_sandbox_and_its_end_lets_go_of_the_workspace(
        core: Sealroom, client: FlaskClient, dataset: str, fake_backend: FakeBackend,
        make_user: Callable[..., tuple[str, str]]) -> None:
    change_policy(core, {"resources": {"roles": {"engineer": {
        "max_workspace_mb": 64, "max_outbox_mb": 32, "max_tmp_mb": 16}}}})
    _, token = make_user("alice")
    response = client.post("/api/v1/sandboxes", headers=bearer(token),
                           json={"dataset": dataset, "example": "mlp"})
    assert response.status_code == 201, response.get_json()
    sandbox_id = response.get_json()["id"]
    with core.read() as session:
        record = session.get(Sandbox, sandbox_id)
        assert record is not None
        limits = json.loads(record.spec)["limits"]
    assert (limits["workspace_mb"], limits["outbox_mb"], limits["tmp_mb"]) == (64, 32, 16)
    volumes = fake_backend.storage.volumes
    assert isinstance(volumes, FakeSandboxVolumes)
    assert volumes.image(sandbox_id, WORKSPACE).read_text() == "64\n"
    assert volumes.image(sandbox_id, OUTBOX).read_text() == "32\n"

    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=0)
    supervisor_pass(core)
    assert not volumes.image(sandbox_id, WORKSPACE).exists()
    assert volumes.mountpoint(sandbox_id, OUTBOX) in volumes.read_only
    listing = client.get(f"/api/v1/sandboxes/{sandbox_id}/outbox", headers=bearer(token))
    assert listing.status_code == 200
