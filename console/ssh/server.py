"""The gateway's listener: one thread per connection, the algorithms it offers (modern only,
strict key exchange), and each connection's course from handshake to recorded end.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import paramiko

from audit.events import Actor, AuditAction, Outcome
from audit.recordings import AsciicastWriter, RecordingDigest
from console.core import Sealroom
from console.services import terminal_sessions
from console.services.errors import ServiceError
from console.services.terminal_sessions import Ending
from console.ssh.host_key import fingerprint, load_or_create
from console.ssh.interface import GatewayInterface
from console.ssh.shell import ShellSession, end_banner
from sandbox.errors import SandboxError
from sandbox.terminal import TerminalSize

log = logging.getLogger(__name__)
T = TypeVar("T")

#: What the gateway offers, strongest first: no SHA-1, no CBC, no NIST-curve key exchange,
#: encrypt-then-MAC only; paramiko adds strict key exchange (the Terrapin fix).
KEX = ("curve25519-sha256@libssh.org", "diffie-hellman-group16-sha512")
CIPHERS = ("aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "aes256-ctr", "aes192-ctr",
           "aes128-ctr")
MACS = ("hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com")
HOST_KEY_TYPES = ("ssh-ed25519",)
#: The signatures a user's key may make (rsa-sha2-*, never ssh-rsa's SHA-1).
USER_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                  "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256")
VERSION = "SSH-2.0-Sealroom"
#: How long a connection may take to log in and ask for its shell.
HANDSHAKE_S = 30.0
#: How long a finished connection waits for its client to hang up.
CLOSE_GRACE_S = 5.0


def _disabled(offered: tuple[str, ...], supported: tuple[str, ...]) -> list[str]:
    return [name for name in supported if name not in offered]


def configure(transport: paramiko.Transport) -> None:
    """Offer exactly the algorithms above."""
    options = transport.get_security_options()
    options.kex = KEX
    options.ciphers = CIPHERS
    options.digests = MACS
    options.key_types = HOST_KEY_TYPES
    transport.disabled_algorithms = {
        "pubkeys": _disabled(USER_KEY_TYPES, tuple(transport.preferred_pubkeys)),
    }
    transport.local_version = VERSION


class Gateway:
    """Serves SSH on (host, port) until `stop`; `address` is where it listens."""

    def __init__(self, core: Sealroom, host: str, port: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self._clock = clock  # what sessions measure idleness and age by
        self.host_key = load_or_create(core.settings.ssh_host_key)
        self.fingerprint = fingerprint(self.host_key)
        self._listener = socket.create_server((host, port), backlog=64)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._stopping = threading.Event()
        self._sessions: set[ShellSession] = set()
        self._connections: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Gateway:
        """Serve in a background thread (the console's `up --ssh-port`, tests)."""
        self._open()
        self._thread = threading.Thread(target=self._accept_loop, name="ssh-gateway",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._open()
        self._accept_loop()

    def _open(self) -> None:
        recovered = terminal_sessions.recover(self.core)
        self.core.record(Actor.system("ssh-gateway"), AuditAction.SSH_GATEWAY_START,
                         target=f"ssh:{self.address[0]}:{self.address[1]}",
                         host_key=self.fingerprint, recovered_sessions=recovered)

    def stop(self) -> None:
        """Stop accepting, end every session (recorded as ended by the stop), and wait."""
        self._stopping.set()
        with self._lock:
            sessions = list(self._sessions)
            connections = list(self._connections)
        for session in sessions:
            session.stop(Ending("the SSH gateway is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._listener.close()
        for thread in connections:
            thread.join(timeout=10)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.5)
            if not ready or self._stopping.is_set():
                continue
            try:
                sock, peer = self._listener.accept()
            except OSError:
                continue
            thread = threading.Thread(target=self._connection, args=(sock, peer[0]),
                                      name=f"ssh-{peer[0]}:{peer[1]}", daemon=True)
            with self._lock:
                self._connections = {t for t in self._connections if t.is_alive()}
                self._connections.add(thread)
            thread.start()

    # --- one connection ---------------------------------------------------------------------

    def _connection(self, sock: socket.socket, source: str) -> None:
        transport = paramiko.Transport(sock)
        configure(transport)
        transport.add_server_key(self.host_key)
        interface = GatewayInterface(self.core, source)
        try:
            transport.start_server(server=interface)
            channel = self._until(transport, lambda: transport.accept(timeout=0.2))
            if channel is None:
                return
            decided = self._until(transport, lambda: interface.decided.wait(0.2) or None)
            if not decided or not interface.shell:
                interface.report_environment()
                _say(channel, "sealroom: only interactive terminals are served "
                     "(ssh -t); this request was refused and recorded")
                return
            self._shell(transport, channel, interface)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.info("ssh connection from %s ended: %s", source, exc)
        finally:
            if interface.holder is not None and not interface.decided.is_set() \
                    and not interface.refusals:
                # Logged in, then asked for nothing (`ssh -N`): recorded all the same.
                terminal_sessions.record_idle_login(self.core, interface.holder)
            if interface.holder is None and interface.offered:
                terminal_sessions.refuse_login(
                    self.core, login_name=interface.login_name, fingerprints=interface.offered,
                    source=source, reason="no registered key of an active user was offered "
                    "for this login")
            # Let the client read the exit status and hang up first (closing under it makes
            # OpenSSH report a reset connection).
            if transport.is_active() and not self._stopping.is_set():
                transport.join(timeout=CLOSE_GRACE_S)
            transport.close()

    def _until(self, transport: paramiko.Transport, ready: Callable[[], T | None]) -> T | None:
        """What `ready` gives (it waits up to 0.2 s), asked until it gives something or the
        connection ends, the handshake is too slow or the gateway stops."""
        deadline = time.monotonic() + HANDSHAKE_S
        while transport.is_active() and not self._stopping.is_set() \
                and time.monotonic() < deadline:
            found = ready()
            if found is not None:
                return found
        return None

    def _shell(self, transport: paramiko.Transport, channel: paramiko.Channel,
               interface: GatewayInterface) -> None:
        holder, login, pty = interface.holder, interface.login, interface.pty
        assert holder is not None and login is not None and pty is not None
        try:
            opened = terminal_sessions.open_session(self.core, holder, login)
        except ServiceError as exc:
            interface.report_environment()
            _say(channel, f"sealroom: {exc.message}")
            return
        interface.session_id = opened.id
        interface.report_environment()
        size = TerminalSize(pty.width, pty.height).clamped()
        recording = AsciicastWriter(
            opened.recording, width=size.width, height=size.height, started_at=time.time(),
            title=f"{opened.user} in {opened.sandbox_id} ({opened.member})",
            env={"TERM": pty.term})
        session: ShellSession | None = None
        ending = Ending("the session could not start", outcome=Outcome.FAILED)
        try:
            try:
                terminal = self.core.backend.open_terminal(
                    opened.backend_state, opened.member, term=pty.term, size=size)
            except SandboxError as exc:
                ending = Ending(f"no terminal could be opened: {exc}", outcome=Outcome.FAILED)
                channel.sendall(end_banner(ending.reason))
                recording.output(end_banner(ending.reason), time.time())
                return
            session = ShellSession(self.core, opened, channel, terminal, recording,
                                   clock=self._clock)
            interface.follow_resizes(session.resize)
            with self._lock:
                if self._stopping.is_set():
                    session.stop(Ending("the SSH gateway is shutting down"))
                self._sessions.add(session)
            ending = session.run()
        finally:
            interface.follow_resizes(None)
            digest: RecordingDigest = recording.close()
            if session is not None:
                session.meter.settle()
                with self._lock:
                    self._sessions.discard(session)
            terminal_sessions.end_session(
                self.core, opened, ending, digest,
                bytes_out=session.meter.sent if session else 0,
                bytes_in=session.bytes_in if session else 0)
            channel.close()


def _say(channel: paramiko.Channel, text: str) -> None:
    """The console's own words to a client whose request was refused."""
    try:
        channel.sendall_stderr(f"{text}\r\n".encode())
        channel.send_exit_status(1)
        channel.close()
    except OSError:
        pass
