"""The backend's state of a sandbox as data: members, network plan, one status for all."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.backend import LAUNCHER, ContainerState, Member, RunState, SandboxStatus, combine
from sandbox.spec import NetworkPlan, Runtime

RUNNING = SandboxStatus(RunState.RUNNING, started_at="t0")


def _exited(code: int, *, oom: bool = False) -> SandboxStatus:
    return SandboxStatus(RunState.EXITED, exit_code=code, oom_killed=oom)


def test_state_round_trips_through_json_shaped_data() -> None:
    state = ContainerState((Member(LAUNCHER, "c0"), Member("rank-1", "c1")),
                           NetworkPlan.MEMBERS_ONLY, "c0", "sb-1")
    assert ContainerState.from_state(state.to_state()) == state
    with_inputs = ContainerState((Member(LAUNCHER, "c0"),), inputs=("sb-0", "sb-9"))
    assert ContainerState.from_state(with_inputs.to_state()) == with_inputs
    assert "inputs" not in state.to_state()  # states stored before inputs read the same
    assert state.objects == {"c0", "c1"}
    assert state.member("") == Member(LAUNCHER, "c0")
    assert state.member("rank-1") == Member("rank-1", "c1")
    assert state.member("rank-9") is None


def test_the_runtime_round_trips_and_runc_is_not_written() -> None:
    gvisor = ContainerState((Member(LAUNCHER, "c0"),), runtime=Runtime.GVISOR)
    assert gvisor.to_state()["runtime"] == "gvisor"
    assert ContainerState.from_state(gvisor.to_state()) == gvisor
    runc = ContainerState((Member(LAUNCHER, "c0"),))
    assert "runtime" not in runc.to_state()  # states stored before runtimes read the same
    assert ContainerState.from_state(runc.to_state()).runtime is Runtime.RUNC
    # Anything else reads as runc, so a gVisor container then fails its self-check.
    assert ContainerState.from_state({**gvisor.to_state(), "runtime": "kata"}).runtime \
        is Runtime.RUNC


@pytest.mark.parametrize("stored", [
    {}, {"members": "c0"}, {"members": [{"name": "main"}]}, {"members": [None, 3]},
    {"members": [{"name": "main", "container": ""}]},
])
def test_a_malformed_state_names_nothing_to_touch(stored: dict[str, Any]) -> None:
    assert ContainerState.from_state(stored).objects == frozenset()


def test_an_unknown_plan_reads_as_the_strictest() -> None:
    assert ContainerState.from_state({"plan": "host"}).plan is NetworkPlan.NONE


def test_the_launcher_decides_and_any_oom_is_oom() -> None:
    assert combine([RUNNING, RUNNING]).state is RunState.RUNNING
    done = combine([_exited(3), _exited(0)])
    assert (done.state, done.exit_code, done.oom_killed) == (RunState.EXITED, 3, False)
    killed = combine([_exited(1), _exited(137, oom=True)])
    assert killed.oom_killed and killed.exit_code == 1
    assert combine([RUNNING, _exited(137, oom=True)]).oom_killed


def test_a_missing_member_loses_the_whole_sandbox() -> None:
    assert combine([RUNNING, SandboxStatus(RunState.MISSING)]).state is RunState.MISSING
    assert combine([]).state is RunState.MISSING


def test_a_rank_that_ends_while_the_launcher_runs_ends_the_cluster() -> None:
    ended = combine([RUNNING, RUNNING, _exited(137)], ["main", "rank-1", "rank-2"])
    assert (ended.state, ended.exit_code, ended.ended_by) == (RunState.EXITED, 137, "rank-2")
    assert [(m.name, m.state, m.exit_code) for m in ended.members] == [
        ("main", RunState.RUNNING, None), ("rank-1", RunState.RUNNING, None),
        ("rank-2", RunState.EXITED, 137)]
    # Once the launcher has ended, its exit decides, whatever the ranks did.
    done = combine([_exited(0), _exited(143)], ["main", "rank-1"])
    assert (done.exit_code, done.ended_by) == (0, "")


def test_a_ranks_output_is_its_chunks_even_where_a_tag_splits_a_line() -> None:
    from sandbox.cluster import rank_output

    tagged = (b'cut[1,0]<stdout>:{"ok": tr[1,1]<stdout>:rank [1,0]<stdout>:ue}\n'
              b"[1,1]<stdout>:1\n[1,0]<stderr>:warning\n")
    assert rank_output(tagged, 0) == b'{"ok": true}\nwarning\n'
    assert rank_output(tagged, 1) == b"rank 1\n"
    assert rank_output(b"no tags at all\n", 0) == b""


@pytest.mark.parametrize("stored", ["sb-0", ["../x", 3, None], {"sb-0": 1}])
def test_malformed_inputs_read_as_none(stored: Any) -> None:
    """No inputs expected: the self-check then refuses any mount under /inputs."""
    assert ContainerState.from_state({"inputs": stored}).inputs == ()
