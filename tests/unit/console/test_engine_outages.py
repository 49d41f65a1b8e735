"""The engine stopping under running sandboxes, with the fake backend: the supervisor records
the outage and the return, a sandbox the engine's stop ended says so, a log is never saved
empty while the engine does not answer, and a removal that failed is retried on the next
pass (each behaviour also has a real-engine test, tests/integration/test_engine_restart.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from console.core import Sealroom
from console.services import sandbox_log
from sandbox.errors import EngineUnavailable
from tests.helpers import bearer, launch_example, recorded, supervisor_pass


def _sandbox(client: FlaskClient, token: str, sandbox_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/v1/sandboxes/{sandbox_id}",
                                      headers=bearer(token)).get_json()
    return body


def test_a_sandbox_the_engine_stopped_says_so_and_keeps_its_log(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any) -> None:
    sandbox_id = launch_example(client, alice)
    handle = fake_backend.handle_of(sandbox_id)
    fake_backend.emit(handle, b"epoch 1/5 loss=0.6\n")
    supervisor_pass(core)
    fake_backend.engine_up = False
    supervisor_pass(core)
    down = recorded(core, "system:engine:down")
    assert len(down) == 1 and down[0].outcome == "failed"
    supervisor_pass(core)  # still down: recorded once
    assert len(recorded(core, "system:engine:down")) == 1
    fake_backend.engine_up = True
    fake_backend.finish(handle, exit_code=143)  # stopped with the engine
    supervisor_pass(core)
    assert json.loads(recorded(core, "system:engine:up")[-1].details)["down_s"] >= 0
    body = _sandbox(client, alice, sandbox_id)
    assert body["status"] == "failed"
    assert body["reason"] == ("ended when the container engine stopped (exit code 143); its "
                              "log was kept")
    log = client.get(f"/api/v1/sandboxes/{sandbox_id}/logs", headers=bearer(alice))
    assert b"epoch 1/5" in log.data


def test_an_exit_143_outside_an_outage_is_the_jobs_own_once_it_has_settled(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any) -> None:
    core.engine_watch.settle_s = 60
    sandbox_id = launch_example(client, alice)
    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=143)
    supervisor_pass(core)  # an engine shutting down stops containers first: wait a moment
    assert _sandbox(client, alice, sandbox_id)["status"] == "running"
    core.engine_watch.settle_s = 0
    supervisor_pass(core)
    assert _sandbox(client, alice, sandbox_id)["reason"] == "exited with code 143"


def test_an_exit_143_seen_just_before_the_engine_went_quiet_is_the_engines(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any) -> None:
    core.engine_watch.settle_s = 60
    sandbox_id = launch_example(client, alice)
    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=143)
    supervisor_pass(core)  # seen while the engine still answers
    fake_backend.engine_up = False
    supervisor_pass(core)
    fake_backend.engine_up = True
    supervisor_pass(core)
    assert _sandbox(client, alice, sandbox_id)["reason"].startswith(
        "ended when the container engine stopped")


def test_a_log_is_never_saved_empty_while_the_engine_does_not_answer(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox_id = launch_example(client, alice)
    handle = fake_backend.handle_of(sandbox_id)
    fake_backend.emit(handle, b"the whole story\n")
    fake_backend.finish(handle, exit_code=0)
    real = fake_backend.logs_since

    def unanswered(*args: Any, **kwargs: Any) -> Any:
        raise EngineUnavailable("The container engine is not available.", detail="test")

    monkeypatch.setattr(fake_backend, "logs_since", unanswered)
    supervisor_pass(core)
    assert _sandbox(client, alice, sandbox_id)["status"] == "running"  # not finished yet
    assert not sandbox_log.pull(core, sandbox_id, {}, final=True).complete
    monkeypatch.setattr(fake_backend, "logs_since", real)
    supervisor_pass(core)
    assert _sandbox(client, alice, sandbox_id)["status"] == "succeeded"
    log = client.get(f"/api/v1/sandboxes/{sandbox_id}/logs", headers=bearer(alice))
    assert log.data.endswith(b"the whole story\n")  # after what the fake prints itself


def test_a_removal_that_failed_is_retried_on_the_next_pass(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox_id = launch_example(client, alice)
    handle = fake_backend.handle_of(sandbox_id)
    fake_backend.finish(handle, exit_code=0)
    real = fake_backend.remove
    calls: list[Any] = []

    def refuse_once(state: Any) -> None:
        calls.append(state)
        if len(calls) == 1:
            raise EngineUnavailable("The container engine is not available.", detail="test")
        real(state)

    monkeypatch.setattr(fake_backend, "remove", refuse_once)
    supervisor_pass(core)
    assert _sandbox(client, alice, sandbox_id)["status"] == "succeeded"
    assert handle in fake_backend.sandboxes  # still there
    supervisor_pass(core)
    assert handle not in fake_backend.sandboxes
    event = recorded(core, "system:container:remove")[-1]
    assert event.target == f"sandbox:{sandbox_id}"


def test_an_exit_143_just_before_the_engine_started_again_is_the_engines(
        client: FlaskClient, core: Sealroom, alice: str, fake_backend: Any) -> None:
    """A restart quicker than a supervisor pass: no outage seen, but the engine answering now
    started just after the container stopped."""
    from datetime import UTC, datetime, timedelta

    core.engine_watch.settle_s = 60
    sandbox_id = launch_example(client, alice)
    fake_backend.finish(fake_backend.handle_of(sandbox_id), exit_code=143)
    fake_backend.engine_start = datetime.now(UTC) + timedelta(seconds=2)
    supervisor_pass(core)
    assert _sandbox(client, alice, sandbox_id)["reason"].startswith(
        "ended when the container engine stopped")
