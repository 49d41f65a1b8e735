"""The in-memory backend behaves like the Docker backend does on a real engine.

Each behaviour here has a real-engine twin in tests/integration/test_docker_backend.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sandbox.backend import Backend, ContainerState, OwnedSandbox, RunState
from sandbox.errors import EngineUnavailable, InvalidSpec, SandboxNotFound
from sandbox.projects import ProjectNotFound
from sandbox.spec import InputMount, NetworkPlan, SandboxSpec
from tests.mocking import (
    OOM_EXIT_CODE,
    STOPPED_EXIT_CODE,
    FakeBackend,
    ScriptedOutcome,
    fake_storage,
)


def _spec(sandbox_id: str = "sb-1", owner: str = "alice") -> SandboxSpec:
    return SandboxSpec(
        sandbox_id=sandbox_id,
        owner=owner,
        image="sealroom/base:test",
        command=("python3", "train.py"),
    )


@pytest.fixture
def fake(tmp_path: Path) -> FakeBackend:
    return FakeBackend(store=fake_storage(tmp_path / "sandboxes"))


def test_is_a_backend(fake: FakeBackend) -> None:
    assert isinstance(fake, Backend)


def test_create_records_the_spec_and_does_not_start(fake: FakeBackend) -> None:
    state = fake.create(_spec())
    assert fake.created_specs == [_spec()]
    status = fake.poll(state)
    assert status.state is RunState.CREATED
    assert status.exit_code is None and status.started_at is None
    assert fake.logs(state) == b""


def test_default_run_exits_zero(fake: FakeBackend) -> None:
    state = fake.create(_spec())
    fake.start(state)
    status = fake.poll(state)
    assert status.state is RunState.EXITED
    assert status.exit_code == 0
    assert not status.oom_killed
    assert status.started_at and status.finished_at


def test_scripted_exit_code_and_logs(fake: FakeBackend) -> None:
    fake.script("sb-1", ScriptedOutcome(exit_code=3, logs=b"one\ntwo\nthree\n"))
    state = fake.create(_spec())
    fake.start(state)
    assert fake.poll(state).exit_code == 3
    assert fake.logs(state) == b"one\ntwo\nthree\n"
    assert fake.logs(state, tail=2) == b"two\nthree\n"
    assert fake.logs(state, tail=0) == b""
    assert fake.logs(state, tail=10) == b"one\ntwo\nthree\n"


def test_oom_kill_of_the_main_process(fake: FakeBackend) -> None:
    fake.script("sb-1", ScriptedOutcome(oom_killed=True))
    state = fake.create(_spec())
    fake.start(state)
    status = fake.poll(state)
    assert status.state is RunState.EXITED
    assert status.oom_killed
    assert status.exit_code == OOM_EXIT_CODE == 137


def test_oom_kill_of_a_child_keeps_the_main_exit_code(fake: FakeBackend) -> None:
    fake.script("sb-1", ScriptedOutcome(oom_killed=True, exit_code=0))
    state = fake.create(_spec())
    fake.start(state)
    status = fake.poll(state)
    assert status.oom_killed and status.exit_code == 0


def test_stays_running_until_finished(fake: FakeBackend) -> None:
    fake.script("sb-1", ScriptedOutcome(stays_running=True))
    state = fake.create(_spec())
    fake.start(state)
    assert fake.poll(state).state is RunState.RUNNING
    assert fake.poll(state).exit_code is None
    fake.start(state)  # starting a running sandbox is a no-op, as on the engine
    fake.finish(state, exit_code=5)
    status = fake.poll(state)
    assert (status.state, status.exit_code) == (RunState.EXITED, 5)


def test_script_handle_after_create(fake: FakeBackend) -> None:
    state = fake.create(_spec())
    fake.script_handle(state, ScriptedOutcome(exit_code=9))
    fake.start(state)
    assert fake.poll(state).exit_code == 9


def test_stop_a_running_sandbox_exits_with_sigterm(fake: FakeBackend) -> None:
    fake.default_outcome = ScriptedOutcome(stays_running=True)
    state = fake.create(_spec())
    fake.start(state)
    fake.stop(state, timeout_s=1)
    assert fake.poll(state).exit_code == STOPPED_EXIT_CODE == 143
    fake.stop(state)  # twice is fine
    assert fake.poll(state).exit_code == STOPPED_EXIT_CODE


def test_stop_an_exited_or_created_sandbox_changes_nothing(fake: FakeBackend) -> None:
    exited = fake.create(_spec("sb-1"))
    fake.start(exited)
    fake.stop(exited)
    assert fake.poll(exited).exit_code == 0
    created = fake.create(_spec("sb-2"))
    fake.stop(created)
    assert fake.poll(created).state is RunState.CREATED


def test_remove_is_idempotent_and_leaves_it_missing(fake: FakeBackend) -> None:
    state = fake.create(_spec())
    fake.remove(state)
    fake.remove(state)
    assert fake.poll(state).state is RunState.MISSING
    assert fake.list_owned() == []


def test_vanished_sandbox_is_missing(fake: FakeBackend) -> None:
    fake.default_outcome = ScriptedOutcome(stays_running=True)
    state = fake.create(_spec())
    fake.start(state)
    fake.vanish(state)
    assert fake.poll(state).state is RunState.MISSING
    assert fake.list_owned() == []
    fake.stop(state)
    fake.remove(state)
    with pytest.raises(SandboxNotFound):
        fake.logs(state)
    with pytest.raises(SandboxNotFound):
        fake.start(state)


def test_unknown_handle(fake: FakeBackend) -> None:
    nope = {"members": [{"name": "main", "container": "nope"}]}
    assert fake.poll(nope).state is RunState.MISSING
    assert fake.poll({}).state is RunState.MISSING
    fake.stop(nope)
    fake.remove(nope)
    with pytest.raises(SandboxNotFound):
        fake.start({"members": []})
    with pytest.raises(SandboxNotFound):
        fake.logs({"members": [{"name": "main", "container": "nope"}]})


def test_list_owned_returns_every_sandbox_running_or_not(fake: FakeBackend) -> None:
    fake.script("sb-2", ScriptedOutcome(stays_running=True))
    first = fake.create(_spec("sb-1", "alice"))
    second = fake.create(_spec("sb-2", "bob"))
    fake.start(second)
    assert sorted(fake.list_owned(), key=lambda o: o.sandbox_id) == [
        OwnedSandbox("sb-1", "alice", first),
        OwnedSandbox("sb-2", "bob", second),
    ]
    assert fake.state_of("sb-2") == second


def test_handles_are_unique(fake: FakeBackend) -> None:
    handles = {fake.create(_spec(f"sb-{i}"))["members"][0]["container"] for i in range(20)}
    assert len(handles) == 20


def test_list_owned_groups_by_sandbox_and_strays_are_what_the_record_lacks(
        fake: FakeBackend) -> None:
    recorded = fake.create(_spec("sb-1"))
    fake.create(_spec("sb-1"))  # a second container of the same sandbox, unrecorded
    (owned,) = fake.list_owned()
    assert owned.sandbox_id == "sb-1" and len(owned.state["members"]) == 2
    strays = fake.strays(owned.state, recorded)
    assert strays is not None and len(strays["members"]) == 1
    assert strays["members"][0]["container"] != recorded["members"][0]["container"]
    assert fake.strays(recorded, recorded) is None
    fake.remove(strays)
    assert fake.poll(recorded).state is RunState.CREATED


def test_engine_down_fails_every_call(fake: FakeBackend) -> None:
    state = fake.create(_spec())
    fake.engine_up = False
    calls = [
        fake.ping,
        lambda: fake.create(_spec("sb-2")),
        lambda: fake.start(state),
        lambda: fake.poll(state),
        lambda: fake.logs(state),
        lambda: fake.stop(state),
        lambda: fake.remove(state),
        fake.list_owned,
    ]
    for call in calls:
        with pytest.raises(EngineUnavailable) as caught:
            call()
        assert "engine is not available" in caught.value.user_message
        assert caught.value.status == 503
    fake.engine_up = True
    fake.ping()
    assert fake.poll(state).state is RunState.CREATED


def test_a_cluster_is_one_sandbox_of_several_members(fake: FakeBackend) -> None:
    spec = dataclasses.replace(_spec(), ranks=3, network=NetworkPlan.MEMBERS_ONLY)
    state = fake.create(spec)
    assert fake.members(state) == ("main", "rank-1", "rank-2")
    fake.script_handle(state, ScriptedOutcome(stays_running=True))
    fake.start(state)
    assert fake.poll(state).state is RunState.RUNNING
    fake.finish(fake.member_handle("sb-1", "rank-2"), exit_code=137)
    ended = fake.poll(state)
    assert (ended.state, ended.exit_code, ended.ended_by) == (RunState.EXITED, 137, "rank-2")
    fake.remove(state)
    assert fake.sandboxes == {}


def test_inputs_must_be_kept_outputs_and_a_project_must_exist(fake: FakeBackend) -> None:
    """As on the engine (tests/integration/test_project_volumes.py)."""
    with_input = dataclasses.replace(_spec("sb-2"), inputs=(InputMount("sb-1"),))
    with pytest.raises(InvalidSpec, match="not kept"):
        fake.create(with_input)
    fake.storage.create("sb-1")
    state = fake.create(with_input)
    assert ContainerState.from_state(state).inputs == ("sb-1",)
    in_project = dataclasses.replace(_spec("sb-3"), project="proj")
    with pytest.raises(ProjectNotFound):
        fake.create(in_project)
    fake.storage.create_project("proj", 16)
    fake.create(in_project)
    assert fake.storage.host_paths(in_project)[0] == fake.storage.projects.workspace("proj")
