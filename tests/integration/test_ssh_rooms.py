"""Terminals in the other kinds of sandbox, with the real OpenSSH client on the real engine:
a chosen rank of an MPI cluster, a sandbox under gVisor (the shell runs on gVisor's kernel
too), and a session that ends because its sandbox is stopped.

Terminal output spends the disclosure budget (see test_ssh_openssh.py); the end banners are
the console's own words.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import docker
import pytest

from console.core import Sealroom
from console.models import TerminalSession
from console.services import launch as launch_service
from console.services import sandboxes as sandbox_service
from tests.helpers import change_policy
from tests.integration.test_ssh_openssh import (
    SLEEPER,
    Room,
    _caller,
    _record,
    _running,
    _sessions,
)
from tests.integration.test_ssh_openssh import room as room  # noqa: F401  (fixture)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(420)]


def _launch(core: Sealroom, **order: Any) -> str:
    launched = launch_service.launch(core, _caller(core, "alice"), launch_service.LaunchOrder(
        datasets=["demo"], code_name="train.py", code=SLEEPER, timeout_s=900, **order))
    _running(core, launched.id)
    return launched.id


def test_a_chosen_rank_of_a_cluster(room: Room, docker_client: docker.DockerClient,  # noqa: F811
                                    horovod_image: Any) -> None:
    sandbox_service.stop(room.core, _caller(room.core, "alice"), room.sandbox_id)
    cluster = _launch(room.core, kind="mpi", ranks=2)
    members = {m["name"]: m["container"]
               for m in json.loads(_record(room.core, cluster).backend_state)["members"]}
    # Ranks share the launcher's host name and network; each has its own /tmp: mark them.
    for name, container in members.items():
        marked = docker_client.containers.get(container).exec_run(
            ["sh", "-c", f"echo I-am-{name} > /tmp/whoami"], user="10001:10001")
        assert marked.exit_code == 0, marked.output
    done = room.ssh("-tt", login=f"alice+{cluster}.1", stdin=b"cat /tmp/whoami; exit\n")
    assert done.returncode == 0, done.stderr
    assert b"I-am-rank-1\r\n" in done.stdout and b"I-am-main" not in done.stdout
    beyond = room.ssh("-tt", login=f"alice+{cluster}.2", stdin=b"exit\n")
    assert beyond.returncode != 0
    assert f"sandbox {cluster} has no rank 2 (it has 2)".encode() in beyond.stderr
    room.gateway.stop()
    row, = [s for s in _sessions(room.core) if s.sandbox_id == cluster]
    assert row.member == "rank-1"


def test_a_shell_in_a_gvisor_sandbox_runs_on_gvisors_kernel(room: Room, gvisor: None) -> None:
    sandbox_service.stop(room.core, _caller(room.core, "alice"), room.sandbox_id)
    change_policy(room.core, {"isolation": {"default": "gvisor"}})
    boxed = _launch(room.core)
    done = room.ssh("-tt", login=f"alice+{boxed}", stdin=b"uname -r; exit\n")
    assert done.returncode == 0, done.stderr
    assert b"4.4.0\r\n" in done.stdout  # gVisor's kernel, not the host's
    assert _record(room.core, boxed).status == "running"


def test_the_session_ends_when_the_sandbox_is_stopped(room: Room) -> None:
    process = subprocess.Popen(
        ["ssh", *room.ssh_options(), "-p", room.port, "-tt", "alice@127.0.0.1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"})
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(b"echo opened-$((6*7))\n")
        process.stdin.flush()
        seen = _read_until(process.stdout.fileno(), b"opened-42")
        sandbox_service.stop(room.core, _caller(room.core, "alice"), room.sandbox_id)
        seen += _read_until(process.stdout.fileno(), b"")
        assert b"[sealroom] session ended: the sandbox stopped" in seen
        assert process.wait(timeout=60) != 255
    finally:
        process.kill()
        process.wait()
    room.gateway.stop()
    row: TerminalSession
    row, = _sessions(room.core)
    assert row.end_reason == "the sandbox stopped"


def _read_until(fd: int, marker: bytes) -> bytes:
    """Read the client's output until `marker` (b"": until it ends)."""
    seen = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return seen
        seen += chunk
        if marker and marker in seen:
            return seen


def test_resizes_reach_the_shell_and_it_runs_inside_the_limits(room: Room) -> None:
    """With paramiko's client (OpenSSH cannot resize a terminal it was not given): the
    shell sees each new size; its memory limit is the sandbox's own cgroup's."""
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(str(room.known_hosts))
    client.connect("127.0.0.1", int(room.port), username="alice",
                   key_filename=str(room.keys["alice"]), look_for_keys=False,
                   allow_agent=False, timeout=20)
    channel = client.invoke_shell(width=100, height=30)
    channel.settimeout(60)

    def ask(command: bytes, marker: bytes) -> bytes:
        channel.sendall(command)
        seen = b""
        while marker not in seen:
            chunk = channel.recv(65536)
            assert chunk, seen
            seen += chunk
        return seen

    assert b"30 100\r\n" in ask(b"stty size; echo done-$((1+1))\n", b"done-2\r\n")
    channel.resize_pty(width=132, height=43)
    assert b"43 132\r\n" in ask(b"stty size; echo done-$((1+2))\n", b"done-3\r\n")
    limit = _record(room.core, room.sandbox_id).memory_mb << 20
    seen = ask(b"cat /sys/fs/cgroup/memory/memory.limit_in_bytes; echo done-$((2+2))\n",
               b"done-4\r\n")
    assert f"{limit}\r\n".encode() in seen
    client.close()
    room.gateway.stop()
    row, = _sessions(room.core)
    recording = (room.core.settings.recordings_dir / row.recording).read_text()
    assert '"r", "132x43"' in recording
