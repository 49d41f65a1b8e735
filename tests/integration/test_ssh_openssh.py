"""The SSH gateway with Debian's real OpenSSH clients (ssh, scp, sftp, rsync) against a
sandbox on the real engine: a shell opens in the right sandbox as the sandbox user; every
copy-out route (forwarding, agent, X11, exec, scp both ways, sftp, rsync, `ssh HOST cat`) is
refused and audited; another user and an unknown key get nowhere; `cat` of a dataset file
runs into the output limit and ends the session; the recording holds exactly the bytes the
client received. The gateway's algorithms, as ssh-audit sees them, include nothing weak.

Terminal output is sandbox output shown to a person: it spends the disclosure budget (the
ledger's terminal channel); the gateway's refusals and end banners are its own words.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlmodel import select

from audit.events import Actor, AuditAction
from audit.recordings import output_bytes
from console.core import Caller, Sealroom
from console.models import Sandbox, SandboxStatus, TerminalSession, User
from console.services import accounts, datasets, ssh_keys
from console.services import launch as launch_service
from console.ssh.server import Gateway
from tests.helpers import (
    OPERATOR,
    PASSWORD,
    change_policy,
    recorded,
    supervisor_pass,
    write_dataset,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

SLEEPER = b"import time\nprint('ready', flush=True)\ntime.sleep(900)\n"
SSH_AUDIT = Path(sys.executable).with_name("ssh-audit")


@dataclass
class Room:
    core: Sealroom
    gateway: Gateway
    sandbox_id: str
    keys: dict[str, Path]
    known_hosts: Path
    tmp: Path

    @property
    def port(self) -> str:
        return str(self.gateway.address[1])

    def ssh_options(self, who: str = "alice") -> list[str]:
        return ["-F", "/dev/null", "-i", str(self.keys[who]), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"]

    def ssh(self, *args: str, login: str = "alice", who: str = "alice",
            stdin: bytes = b"", env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        command = ["ssh", *self.ssh_options(who), "-p", self.port, *args, f"{login}@127.0.0.1"]
        return subprocess.run(command, input=stdin, capture_output=True, timeout=timeout,
                              env={**_clean_env(), **(env or {})})


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("SSH_AUTH_SOCK", "DISPLAY", "SSH_AGENT_PID")}


def _caller(core: Sealroom, name: str) -> Caller:
    with core.read() as session:
        user = session.exec(select(User).where(User.name == name)).one()
    return Caller(Actor(name, user.role, "password", "test"), user_id=user.id)


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True)
    return path


def _running(core: Sealroom, sandbox_id: str) -> None:
    for _ in range(600):
        supervisor_pass(core)
        with core.read() as session:
            row = session.get(Sandbox, sandbox_id)
        assert row is not None
        if row.status == SandboxStatus.RUNNING and b"ready" in core.backend.logs(
                json.loads(row.backend_state)):
            return
        assert row.status in (SandboxStatus.STARTING, SandboxStatus.RUNNING), row.reason
        time.sleep(0.2)
    raise AssertionError("the sandbox never said it was ready")


@pytest.fixture
def room(docker_core: Sealroom, tmp_path: Path) -> Iterator[Room]:
    core = docker_core
    for name in ("alice", "mallory"):
        accounts.create_user(core, OPERATOR, name, "engineer", PASSWORD)
    datasets.register_dataset(core, OPERATOR, write_dataset(tmp_path / "src", 10_000),
                              "demo", ["role:engineer"])
    change_policy(core, {"interactive": {"ssh": True, "output_per_session_kb": 64}})
    keys = {name: _keygen(tmp_path / f"id_{name}") for name in ("alice", "mallory")}
    for name in ("alice", "mallory"):
        ssh_keys.add(core, _caller(core, name), keys[name].with_suffix(".pub").read_text())
    keys["stranger"] = _keygen(tmp_path / "id_stranger")
    order = launch_service.LaunchOrder(datasets=["demo"], code_name="train.py", code=SLEEPER,
                                       timeout_s=900)
    sandbox_id = launch_service.launch(core, _caller(core, "alice"), order).id
    _running(core, sandbox_id)
    gateway = Gateway(core, "127.0.0.1", 0).start()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{gateway.address[1]} {gateway.host_key.get_name()} "
                           f"{gateway.host_key.get_base64()}\n")
    yield Room(core, gateway, sandbox_id, keys, known_hosts, tmp_path)
    gateway.stop()


def _refusals(core: Sealroom) -> list[str]:
    return [json.loads(e.details)["request"] for e in recorded(core, AuditAction.SSH_REFUSE)]


def _sessions(core: Sealroom) -> list[TerminalSession]:
    with core.read() as session:
        return list(session.exec(select(TerminalSession)).all())


def test_a_shell_runs_in_the_sandbox_as_its_user_and_the_recording_is_exact(
        room: Room, docker_client: object) -> None:
    state = json.loads(_record(room.core, room.sandbox_id).backend_state)
    container = state["members"][0]["container"]
    hostname = docker_client.api.inspect_container(container)["Config"]["Hostname"]  # type: ignore[attr-defined]
    done = room.ssh("-tt", stdin=b"id -u; hostname; ls /data/demo; exit\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert b"10001" in out and b"train.csv" in out
    assert f"{hostname}\r\n".encode() in out  # the sandbox container's own host name
    assert b"[sealroom] session ended: the shell ended" in out
    room.gateway.stop()
    row, = _sessions(room.core)
    assert (row.user, row.sandbox_id, row.member) == ("alice", room.sandbox_id, "main")
    assert output_bytes(room.core.settings.recordings_dir / row.recording) == out
    assert row.bytes_out + len(b"\r\n[sealroom] session ended: the shell ended\r\n") \
        == len(out)


def _record(core: Sealroom, sandbox_id: str) -> Sandbox:
    with core.read() as session:
        row = session.get(Sandbox, sandbox_id)
    assert row is not None
    return row


def test_every_copy_out_route_is_refused_and_audited(room: Room) -> None:
    target = "alice@127.0.0.1"
    base = [*room.ssh_options(), "-p", room.port]
    attempts = {
        "exec": ["ssh", *base, target, "cat", "/data/demo/train.csv"],
        "scp down": ["scp", *room.ssh_options(), "-P", room.port,
                     f"{target}:/data/demo/train.csv", str(room.tmp / "down.csv")],
        "scp up": ["scp", *room.ssh_options(), "-P", room.port,
                   str(room.keys["alice"].with_suffix(".pub")), f"{target}:/tmp/x"],
        "scp legacy": ["scp", "-O", *room.ssh_options(), "-P", room.port,
                       f"{target}:/data/demo/train.csv", str(room.tmp / "legacy.csv")],
        "sftp": ["sftp", *room.ssh_options(), "-P", room.port, "-b", "-", target],
        "rsync": ["rsync", "-e", " ".join(["ssh", *base]), f"{target}:/data/demo/",
                  str(room.tmp / "rsynced")],
        "-W": ["ssh", *base, "-W", "10.0.0.1:80", target],
        "-R": ["ssh", *base, "-N", "-o", "ExitOnForwardFailure=yes", "-R",
               "0:127.0.0.1:22", target],
    }
    for what, command in attempts.items():
        done = subprocess.run(command, input=b"get /data/demo/train.csv\n",
                              capture_output=True, timeout=120, env=_clean_env())
        assert done.returncode != 0, what
        assert b"train.csv" not in done.stdout.replace(b"/data/demo/train.csv", b""), what
    assert not (room.tmp / "down.csv").exists() and not (room.tmp / "legacy.csv").exists()
    assert not (room.tmp / "rsynced").exists()
    refused = _refusals(room.core)
    assert refused.count("exec") >= 3  # cat, scp -O, rsync
    assert refused.count("subsystem") >= 3  # scp (sftp protocol) both ways, sftp
    assert "direct-tcpip" in refused and "tcpip-forward" in refused
    assert not _sessions(room.core)  # not one of them got a terminal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("flag", ["-L", "-D"])
def test_local_and_dynamic_forwarding_are_refused(room: Room, flag: str) -> None:
    local = _free_port()
    spec = f"{local}:10.0.0.1:80" if flag == "-L" else str(local)
    control = room.tmp / "control"
    # -f: ssh goes to the background once the forward listens (ExitOnForwardFailure), so
    # the port is there when it returns; the control socket stops it afterwards.
    started = subprocess.run(
        ["ssh", *room.ssh_options(), "-p", room.port, "-f", "-N", "-M", "-S", str(control),
         "-o", "ExitOnForwardFailure=yes", flag, spec, "alice@127.0.0.1"],
        capture_output=True, timeout=60, env=_clean_env())
    assert started.returncode == 0, started.stderr
    try:
        with socket.create_connection(("127.0.0.1", local), timeout=20) as conn:
            if flag == "-D":  # SOCKS4: connect to 10.0.0.1:80
                conn.sendall(b"\x04\x01\x00\x50\x0a\x00\x00\x01me\x00")
            conn.settimeout(20)
            answer = conn.recv(64)
        # Closed, or SOCKS's "rejected": the gateway audited the refusal before answering.
        assert answer in (b"", b"\x00\x5b\x00\x00\x00\x00\x00\x00")
        assert "direct-tcpip" in _refusals(room.core)
    finally:
        subprocess.run(["ssh", "-S", str(control), "-O", "exit", "alice@127.0.0.1"],
                       capture_output=True, timeout=30, env=_clean_env())


def test_agent_x11_and_environment_are_refused_while_the_shell_works(room: Room) -> None:
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True)
    env = dict(line.split(";")[0].split("=", 1) for line in agent.stdout.splitlines()
               if "=" in line.split(";")[0])
    try:
        done = room.ssh("-tt", "-A", "-X", "-o", "SendEnv=LANG", stdin=b"exit\n",
                        env={**env, "DISPLAY": ":99", "LANG": "C.UTF-8"})
        assert b"session ended" in done.stdout, done.stderr
    finally:
        subprocess.run(["kill", env["SSH_AGENT_PID"]], check=False)
    room.gateway.stop()
    refused = _refusals(room.core)
    assert {"auth-agent", "x11", "env"} <= set(refused)


def test_another_user_and_an_unknown_key_get_nowhere(room: Room) -> None:
    done = room.ssh("-tt", login=f"mallory+{room.sandbox_id}", who="mallory",
                    stdin=b"id\nexit\n")
    assert done.returncode != 0
    assert f"you have no sandbox {room.sandbox_id}".encode() in done.stderr + done.stdout
    stranger = room.ssh("-tt", who="stranger", stdin=b"exit\n")
    assert stranger.returncode == 255 and b"Permission denied" in stranger.stderr
    room.gateway.stop()
    assert not _sessions(room.core)
    denied = recorded(room.core, AuditAction.SSH_AUTH)
    assert denied and denied[-1].outcome == "denied"


def test_cat_of_a_dataset_file_ends_the_session_at_the_output_limit(room: Room) -> None:
    done = room.ssh("-tt", stdin=b"cat /data/demo/train.csv\n", timeout=180)
    out = done.stdout
    assert b"[sealroom] session ended: this session printed more than 64 KB" in out
    assert len(out) < 64 * 1024 + 4096  # the file is 1.5 MB; 64 KB (and the banner) left
    room.gateway.stop()
    row, = _sessions(room.core)
    assert row.end_rule == "interactive.output_per_session_kb"
    assert row.bytes_out <= 64 * 1024
    ended, = recorded(room.core, AuditAction.SSH_END)
    assert ended.outcome == "denied"


@pytest.mark.skipif(not SSH_AUDIT.exists(), reason="ssh-audit is a test dependency")
def test_the_gateway_offers_no_weak_algorithm(room: Room) -> None:
    done = subprocess.run([str(SSH_AUDIT), "-j", "--skip-rate-test", "-p", room.port,
                           "127.0.0.1"], capture_output=True, timeout=120)
    report = json.loads(done.stdout)
    offered = {section: [a["algorithm"] for a in report[section]]
               for section in ("kex", "key", "enc", "mac")}
    assert "kex-strict-s-v00@openssh.com" in offered["kex"]  # Terrapin (CVE-2023-48795)
    for section in ("kex", "key", "enc", "mac"):
        for algorithm in report[section]:
            notes = algorithm.get("notes", {})
            assert not notes.get("fail"), (algorithm["algorithm"], notes)
            # paramiko has no post-quantum key exchange; that is the only warning allowed.
            assert all("post-quantum" in w for w in notes.get("warn", [])), algorithm
    assert not report["cves"]
    names = " ".join(sum(offered.values(), []))
    for weak in ("sha1", "cbc", "md5", "ssh-rsa", "nistp", "3des", "arcfour"):
        assert weak not in names, weak
    assert shutil.which("ssh")
