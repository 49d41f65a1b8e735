"""The SSH gateway against the fake backend, driven by paramiko's client: who gets a shell
where, what is refused (each audited), how output is paid for from the disclosure ledger and
limited, and how a session's end enters the audit chain with its recording's digest.

Terminal output is sandbox output shown to a person: it spends the disclosure budget (the
ledger's `terminal` channel) before it is sent. The gateway's own messages ("[sealroom]
session ended: ...", refusals) are text the console composed. Real OpenSSH clients and the
real engine: tests/integration/test_ssh_openssh.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import paramiko
import pytest
from sqlmodel import select

from audit.events import Actor, AuditAction, Outcome
from audit.recordings import digest_of, output_bytes
from console.core import Caller, Sealroom
from console.models import DisclosureItem, TerminalSession, User
from console.services import launch as launch_service
from console.services import ssh_keys, terminal_sessions
from console.ssh.server import Gateway
from tests.helpers import change_policy, recorded, supervisor_pass
from tests.mocking import FakeBackend, FakeTerminal

pytestmark = pytest.mark.timeout(60)


def _caller(core: Sealroom, name: str) -> Caller:
    with core.read() as session:
        user = session.exec(select(User).where(User.name == name)).one()
    return Caller(Actor(name, user.role, "password", "test"), user_id=user.id)


def _key() -> paramiko.Ed25519Key:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption())
    import io

    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode()))


@pytest.fixture
def gateway(core: Sealroom, make_user: Callable[..., tuple[str, str]],
            dataset: str) -> Iterator[Gateway]:
    make_user("alice")
    make_user("mallory")
    make_user("audrey", "auditor")
    change_policy(core, {"interactive": {"ssh": True}})
    served = Gateway(core, "127.0.0.1", 0).start()
    yield served
    served.stop()


def _register(core: Sealroom, name: str) -> paramiko.Ed25519Key:
    key = _key()
    ssh_keys.add(core, _caller(core, name), f"{key.get_name()} {key.get_base64()} test")
    return key


def _launch(core: Sealroom, name: str = "alice") -> str:
    order = launch_service.LaunchOrder(datasets=["demo"], example="mlp")
    return launch_service.launch(core, _caller(core, name), order).id


def _connect(gateway: Gateway, login: str, key: paramiko.PKey) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(gateway.address[0], gateway.address[1], username=login, pkey=key,
                   look_for_keys=False, allow_agent=False, timeout=20)
    return client


def _read_until(channel: paramiko.Channel, marker: bytes) -> bytes:
    seen = b""
    channel.settimeout(20)
    while marker not in seen:
        chunk = channel.recv(65536)
        if not chunk:
            break
        seen += chunk
    return seen


def _read_all(channel: paramiko.Channel) -> bytes:
    seen = b""
    channel.settimeout(20)
    while chunk := channel.recv(65536):
        seen += chunk
    return seen


def _peer_read(terminal: FakeTerminal, wanted: bytes) -> bytes:
    got = b""
    terminal.peer.settimeout(20)
    while wanted not in got:
        got += terminal.peer.recv(4096)
    return got


def _ended(core: Sealroom) -> list[TerminalSession]:
    with core.read() as session:
        return list(session.exec(select(TerminalSession)).all())


def _wait_ended(core: Sealroom, gateway: Gateway) -> TerminalSession:
    """The session's end is recorded by the gateway's thread: stop the gateway, which
    waits for every connection's thread, then read."""
    gateway.stop()
    rows = _ended(core)
    assert len(rows) == 1 and rows[0].ended_at is not None
    return rows[0]


def test_a_shell_opens_in_the_only_running_sandbox_and_is_recorded(
        core: Sealroom, gateway: Gateway, fake_backend: FakeBackend) -> None:
    key = _register(core, "alice")
    sandbox_id = _launch(core)
    client = _connect(gateway, "alice", key)
    channel = client.invoke_shell(term="xterm-256color", width=100, height=30)
    terminal = fake_backend.wait_for_terminal()
    # The shell's side: wait for the keystrokes, answer them.
    channel.sendall(b"whoami\r")
    assert terminal.term == "xterm-256color"
    assert _peer_read(terminal, b"whoami\r") == b"whoami\r"
    printed = b"sandbox\r\n\xe2\x82\xac \xff$ "
    terminal.peer.sendall(printed)
    assert _read_until(channel, b"$ ") == printed
    channel.resize_pty(120, 40)
    terminal.wait_for_size(120, 40)  # else the hang-up can reach the shell first (CI saw it)
    terminal.hang_up()
    tail = _read_all(channel)
    assert b"[sealroom] session ended: the shell ended" in tail
    client.close()
    row = _wait_ended(core, gateway)
    assert (row.user, row.sandbox_id, row.member) == ("alice", sandbox_id, "main")
    assert row.bytes_out == len(printed) and row.bytes_in == len(b"whoami\r")
    recording = core.settings.recordings_dir / row.recording
    assert output_bytes(recording) == printed + tail
    assert digest_of(recording).sha256 == row.recording_sha256
    # The session's output was paid for, exactly, on the ledger's terminal channel.
    with core.read() as session:
        paid = session.exec(select(DisclosureItem).where(
            DisclosureItem.channel == "terminal")).all()
    assert sum(item.bytes for item in paid) == len(printed)
    opened, = recorded(core, AuditAction.SSH_OPEN.value)
    ended, = recorded(core, AuditAction.SSH_END.value)
    assert json.loads(ended.details)["recording_sha256"] == row.recording_sha256
    assert json.loads(opened.details)["sandbox"] == sandbox_id
    assert terminal.sizes[-1].width == 120
    header = recording.read_text().splitlines()[0]
    assert json.loads(header)["width"] == 100
    assert '"r", "120x40"' in recording.read_text()


def test_every_other_request_is_refused_and_audited(
        core: Sealroom, gateway: Gateway, fake_backend: FakeBackend) -> None:
    key = _register(core, "alice")
    _launch(core)
    attempts: list[Callable[[paramiko.SSHClient], object]] = [
        lambda c: c.exec_command("cat /data/demo/train.csv")[1].read(),
        lambda c: c.open_sftp(),
        lambda c: c.get_transport().open_channel(  # type: ignore[union-attr]
            "direct-tcpip", ("10.0.0.1", 80), ("127.0.0.1", 5000)),
        lambda c: c.get_transport().request_port_forward(  # type: ignore[union-attr]
            "127.0.0.1", 0),
    ]
    for attempt in attempts:
        client = _connect(gateway, "alice", key)
        with pytest.raises((paramiko.SSHException, EOFError)):
            attempt(client)
        client.close()
    gateway.stop()
    refused = [json.loads(e.details)["request"]
               for e in recorded(core, AuditAction.SSH_REFUSE.value)]
    assert {"exec", "subsystem", "direct-tcpip", "tcpip-forward"} <= set(refused)
    assert all(e.outcome == Outcome.DENIED.value
               for e in recorded(core, AuditAction.SSH_REFUSE.value))
    assert not fake_backend.terminals  # nothing reached the sandbox


def test_environment_variables_are_refused_in_one_event(
        core: Sealroom, gateway: Gateway, fake_backend: FakeBackend) -> None:
    key = _register(core, "alice")
    _launch(core)
    client = _connect(gateway, "alice", key)
    channel = client.get_transport().open_session()  # type: ignore[union-attr]
    channel.get_pty()
    channel.update_environment({"LANG": "C.UTF-8", "SECRET": "x"})
    channel.invoke_shell()
    terminal = _open_terminal_when_ready(fake_backend, channel)
    terminal.hang_up()
    _read_all(channel)
    client.close()
    gateway.stop()
    env, = [e for e in recorded(core, AuditAction.SSH_REFUSE.value)
            if json.loads(e.details)["request"] == "env"]
    assert json.loads(env.details)["names"] == ["LANG", "SECRET"]
    assert "x" not in env.details.replace("\"request\": \"env\"", "")


def _open_terminal_when_ready(backend: FakeBackend, channel: paramiko.Channel) -> FakeTerminal:
    return backend.wait_for_terminal()


def test_unknown_keys_other_users_and_their_sandboxes_are_refused(
        core: Sealroom, gateway: Gateway, fake_backend: FakeBackend) -> None:
    alice_key = _register(core, "alice")
    mallory_key = _register(core, "mallory")
    alice_box = _launch(core)
    with pytest.raises(paramiko.AuthenticationException):
        _connect(gateway, "alice", _key())
    with pytest.raises(paramiko.AuthenticationException):
        _connect(gateway, "mallory", alice_key)  # alice's key does not open mallory
    client = _connect(gateway, f"mallory+{alice_box}", mallory_key)
    channel = client.get_transport().open_session()  # type: ignore[union-attr]
    channel.get_pty()
    channel.invoke_shell()
    said = _read_all_stderr(channel)
    assert f"you have no sandbox {alice_box}" in said
    client.close()
    gateway.stop()
    assert not fake_backend.terminals
    denied = recorded(core, AuditAction.SSH_AUTH.value)
    assert len(denied) == 2 and all(e.outcome == "denied" for e in denied)
    opens = recorded(core, AuditAction.SSH_OPEN.value)
    assert [e.outcome for e in opens] == ["denied"] and opens[0].actor == "mallory"


def _read_all_stderr(channel: paramiko.Channel) -> str:
    channel.settimeout(20)
    seen = b""
    while True:
        chunk = channel.recv_stderr(4096)
        if not chunk:
            break
        seen += chunk
    return seen.decode()


def test_policy_can_forbid_terminals_and_says_why(
        core: Sealroom, gateway: Gateway, fake_backend: FakeBackend) -> None:
    key = _register(core, "alice")
    _launch(core)
    change_policy(core, {"datasets": {"demo": {"ssh": False}}})
    client = _connect(gateway, "alice", key)
    channel = client.invoke_shell()
    said = _read_all_stderr(channel)
    assert "terminals are not allowed on sandboxes that use dataset 'demo'" in said
    client.close()
    gateway.stop()
    denied, = recorded(core, AuditAction.SSH_OPEN.value)
    assert json.loads(denied.details)["rule"] == "datasets.demo.ssh"


def test_output_past_the_session_limit_ends_the_session(
        core: Sealroom, gateway: Gateway, fake_backend: FakeBackend) -> None:
    key = _register(core, "alice")
    _launch(core)
    change_policy(core, {"interactive": {"output_per_session_kb": 4,
                                         "output_per_minute_kb": 64}})
    client = _connect(gateway, "alice", key)
    channel = client.invoke_shell()
    terminal = _open_terminal_when_ready(fake_backend, channel)
    terminal.peer.sendall(b"x" * 10_000)
    got = _read_all(channel)
    assert got.split(b"\r\n[sealroom]")[0] == b"x" * 4096
    assert b"more than 4 KB, the most one session may print" in got
    client.close()
    row = _wait_ended(core, gateway)
    assert row.end_rule == "interactive.output_per_session_kb" and row.bytes_out == 4096
    ended, = recorded(core, AuditAction.SSH_END.value)
    assert ended.outcome == Outcome.DENIED.value


def test_output_past_the_disclosure_budget_ends_the_session(
        core: Sealroom, gateway: Gateway, fake_backend: FakeBackend) -> None:
    key = _register(core, "alice")
    sandbox_id = _launch(core)
    change_policy(core, {"disclosure": {"per_sandbox_bytes": 3000}})
    client = _connect(gateway, "alice", key)
    channel = client.invoke_shell()
    terminal = _open_terminal_when_ready(fake_backend, channel)
    terminal.peer.sendall(b"y" * 5000)
    got = _read_all(channel)
    assert got.split(b"\r\n[sealroom]")[0] == b"y" * 3000
    assert b"disclosure budget of 3,000 bytes for this sandbox is spent" in got
    client.close()
    row = _wait_ended(core, gateway)
    assert row.end_rule == "disclosure.per_sandbox_bytes"
    with core.read() as session:
        spent = sum(i.bytes for i in session.exec(select(DisclosureItem).where(
            DisclosureItem.sandbox_id == sandbox_id)).all())
    assert spent == 3000


def test_the_session_ends_when_the_sandbox_stops(
        core: Sealroom, gateway: Gateway, fake_backend: FakeBackend) -> None:
    key = _register(core, "alice")
    sandbox_id = _launch(core)
    client = _connect(gateway, "alice", key)
    channel = client.invoke_shell()
    _open_terminal_when_ready(fake_backend, channel)
    fake_backend.stop(fake_backend.state_of(sandbox_id))
    supervisor_pass(core)
    got = _read_all(channel)
    assert b"session ended: the sandbox stopped" in got
    client.close()
    assert _wait_ended(core, gateway).end_reason == "the sandbox stopped"


def test_sessions_a_dead_gateway_left_open_are_ended_at_the_next_start(
        core: Sealroom, gateway: Gateway) -> None:
    key = _register(core, "alice")
    sandbox_id = _launch(core)
    holder = terminal_sessions.holder_of(
        core, terminal_sessions.Login("alice"), paramiko_fingerprint(key), "test")
    assert holder is not None
    opened = terminal_sessions.open_session(core, holder, terminal_sessions.Login("alice"))
    opened.recording.write_bytes(b'{"version": 2, "width": 80, "height": 24}\n')
    gateway.stop()
    again = Gateway(core, "127.0.0.1", 0).start()
    again.stop()
    row, = _ended(core)
    assert row.sandbox_id == sandbox_id and row.ended_at is not None
    assert row.end_reason == "the SSH gateway stopped during the session"
    assert row.recording_sha256 == digest_of(opened.recording).sha256


def paramiko_fingerprint(key: paramiko.PKey) -> str:
    from console.ssh.host_key import fingerprint

    return fingerprint(key)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("advance", "rule"), [
    (901.0, "interactive.idle_timeout_s"), (28_801.0, "interactive.session_timeout_s")])
def test_idle_and_long_sessions_end(core: Sealroom, gateway: Gateway,
                                    fake_backend: FakeBackend, advance: float,
                                    rule: str) -> None:
    gateway.stop()
    clock = _Clock()
    timed = Gateway(core, "127.0.0.1", 0, clock=clock).start()
    key = _register(core, "alice")
    _launch(core)
    client = _connect(timed, "alice", key)
    channel = client.invoke_shell()
    terminal = fake_backend.wait_for_terminal()
    channel.sendall(b"x")  # a keystroke through: the session's loop runs (and has its start)
    _peer_read(terminal, b"x")
    clock.now += advance
    if rule.endswith("session_timeout_s"):
        channel.sendall(b"y")
    got = _read_all(channel)
    assert b"[sealroom] session ended: " in got
    client.close()
    row = _wait_ended(core, timed)
    assert row.end_rule == rule


def test_an_auditor_replays_the_gateways_recording_and_an_edit_is_named(
        core: Sealroom, gateway: Gateway, fake_backend: FakeBackend, app: Any,
        make_user: Callable[..., tuple[str, str]]) -> None:
    """From the gateway to the auditor: the replayed recording is the client's bytes
    (already charged when they were shown; the replay spends nothing more), and once the
    file is edited the chain status names the session."""
    from console.services import audit_log

    key = _register(core, "alice")
    _launch(core)
    auditor = accounts_token(core, "audrey")
    client = _connect(gateway, "alice", key)
    channel = client.invoke_shell()
    terminal = fake_backend.wait_for_terminal()
    terminal.peer.sendall(b"secret-ish line\r\n")
    _read_until(channel, b"line\r\n")
    terminal.hang_up()
    received = b"secret-ish line\r\n" + _read_all(channel)
    client.close()
    row = _wait_ended(core, gateway)
    web = app.test_client()
    replay = web.get(f"/api/v1/audit/sessions/{row.id}/recording",
                     headers={"Authorization": f"Bearer {auditor}"})
    assert replay.status_code == 200
    recording = core.settings.recordings_dir / row.recording
    assert replay.data == recording.read_bytes() and output_bytes(recording) == received
    assert audit_log.verify_chain(core, _caller(core, "audrey"))["ok"]
    recording.write_bytes(recording.read_bytes().replace(b"secret-ish", b"harmless!!"))
    status = audit_log.verify_chain(core, _caller(core, "audrey"))
    assert not status["ok"]
    assert [p["session"] for p in status["recording_problems"]] == [row.id]


def accounts_token(core: Sealroom, name: str) -> str:
    from console.services import accounts
    from tests.helpers import OPERATOR

    return accounts.create_token(core, OPERATOR, name)


def test_a_login_that_asks_for_nothing_is_recorded(core: Sealroom, gateway: Gateway) -> None:
    key = _register(core, "alice")
    client = _connect(gateway, "alice", key)
    client.close()
    gateway.stop()
    logged, = recorded(core, AuditAction.SSH_AUTH.value)
    assert (logged.actor, logged.outcome) == ("alice", Outcome.OK.value)
    assert "no terminal was asked for" in logged.reason


@pytest.mark.parametrize("change", ["deactivate", "remove key", "policy"])
def test_an_open_session_ends_when_its_user_key_or_policy_no_longer_allows_it(
        core: Sealroom, gateway: Gateway, fake_backend: FakeBackend, change: str) -> None:
    from console.services import accounts
    from tests.helpers import OPERATOR

    key = _register(core, "alice")
    _launch(core)
    client = _connect(gateway, "alice", key)
    channel = client.invoke_shell()
    terminal = fake_backend.wait_for_terminal()
    channel.sendall(b"x")
    _peer_read(terminal, b"x")
    if change == "deactivate":
        accounts.set_active(core, OPERATOR, "alice", False)
    elif change == "remove key":
        alice = _caller(core, "alice")
        ssh_keys.remove(core, alice, ssh_keys.list_mine(core, alice)[0]["id"])
    else:
        change_policy(core, {"interactive": {"ssh": False}})
    got = _read_all(channel)
    expected = b"SSH access is turned off" if change == "policy" \
        else b"the account or its SSH key no longer opens terminals"
    assert expected in got
    client.close()
    row = _wait_ended(core, gateway)
    assert row.ended_at is not None
