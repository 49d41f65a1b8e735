"""What one SSH connection may ask for: public-key login only, one session channel, a
pseudo-terminal and a shell. Everything else (forwarding of any kind, exec, subsystems such
as sftp, agent and X11 forwarding, environment variables) is refused and audited.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import paramiko
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from console.core import Sealroom
from console.services import terminal_sessions
from console.services.terminal_sessions import KeyHolder, Login
from console.ssh.host_key import fingerprint

#: Keys one connection may offer before every further one is refused unseen.
MAX_KEYS_OFFERED = 6
#: Refused requests one connection may make before it is hung up on.
MAX_REFUSALS = 20

_PROHIBITED = OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


@dataclass(frozen=True)
class PtyRequest:
    term: str
    width: int
    height: int


class GatewayInterface(paramiko.ServerInterface):
    """paramiko's questions about one connection, answered for the gateway."""

    def __init__(self, core: Sealroom, source: str) -> None:
        self.core = core
        self.source = source
        self.login_name = ""
        self.login: Login | None = None
        self.holder: KeyHolder | None = None
        self.offered: list[str] = []
        self.refusals = 0
        self.pty: PtyRequest | None = None
        self.env_refused: list[str] = []
        #: Set once the client asked for a shell (`shell`) or for something refused that
        #: ends its session channel (exec, a subsystem); the gateway waits on it.
        self.decided = threading.Event()
        self.shell = False
        self.session_id = ""
        self._on_resize: Any = None
        self._lock = threading.Lock()

    # --- authentication ----------------------------------------------------------------

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_none(self, username: str) -> int:
        self.login_name = username
        return AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        return AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self.login_name = username
        seen = fingerprint(key)
        if seen not in self.offered:
            if len(self.offered) >= MAX_KEYS_OFFERED:
                return AUTH_FAILED
            self.offered.append(seen)
        login = terminal_sessions.parse_login(username)
        if login is None:
            return AUTH_FAILED
        holder = terminal_sessions.holder_of(self.core, login, seen, self.source)
        if holder is None:
            return AUTH_FAILED
        self.login, self.holder = login, holder
        return AUTH_SUCCESSFUL

    # --- refusals ------------------------------------------------------------------------

    def _refuse(self, kind: str, reason: str, **details: object) -> None:
        self.refusals += 1
        if self.holder is not None:
            terminal_sessions.refuse_request(self.core, self.holder, kind=kind, reason=reason,
                                             session_id=self.session_id, **details)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session" and not self.shell and self.refusals < MAX_REFUSALS:
            return OPEN_SUCCEEDED
        self._refuse(kind if kind != "session" else "second session",
                     "only one terminal session per connection; forwarding is refused"
                     if kind == "session" else f"{kind} channels are refused: nothing but "
                     "an interactive terminal passes the gateway")
        return _PROHIBITED

    def check_channel_direct_tcpip_request(self, chanid: int, origin: tuple[str, int],
                                           destination: tuple[str, int]) -> int:
        self._refuse("direct-tcpip", "port forwarding (ssh -L, -D, -W) is refused: a sandbox "
                     "has no network route", destination=f"{destination[0]}:{destination[1]}"[:120])
        return _PROHIBITED

    def check_port_forward_request(self, address: str, port: int) -> int | bool:
        self._refuse("tcpip-forward", "remote forwarding (ssh -R) is refused",
                     listen=f"{address}:{port}"[:120])
        return False

    def check_global_request(self, kind: str, msg: paramiko.Message) -> bool:
        if "forward" in kind:
            self._refuse(kind, "forwarding is refused")
        return False  # keepalives and the like are answered "no", which OpenSSH accepts

    def check_channel_pty_request(self, channel: paramiko.Channel, term: bytes | str,
                                  width: int, height: int, pixelwidth: int, pixelheight: int,
                                  modes: bytes) -> bool:
        text = term.decode("ascii", "replace") if isinstance(term, bytes) else term
        self.pty = PtyRequest(text[:40] or "xterm", width, height)
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        if self.pty is None:
            self._refuse("shell without a terminal", "only interactive terminals are served: "
                         "ask for one (ssh -t)")
            self.decided.set()
            return False
        self.shell = True
        self.decided.set()
        return True

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self._refuse("exec", "commands are refused (that is how scp, rsync and "
                     "`ssh HOST COMMAND` work): only interactive shells",
                     command=command[:200].decode("utf-8", "replace"))
        self.decided.set()
        return False

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        self._refuse("subsystem", f"the {name[:40]} subsystem is refused (sftp, and scp "
                     "through it): only interactive shells", subsystem=name[:40])
        self.decided.set()
        return False

    def check_channel_x11_request(self, channel: paramiko.Channel, single_connection: bool,
                                  auth_protocol: str, auth_cookie: bytes,
                                  screen_number: int) -> bool:
        self._refuse("x11", "X11 forwarding is refused")
        return False

    def check_channel_forward_agent_request(self, channel: paramiko.Channel) -> bool:
        self._refuse("auth-agent", "agent forwarding (ssh -A) is refused: nothing of yours "
                     "enters a sandbox")
        return False

    def check_channel_env_request(self, channel: paramiko.Channel, name: bytes | str,
                                  value: bytes | str) -> bool:
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        with self._lock:
            self.env_refused.append(text[:64])
        return False

    def check_channel_window_change_request(self, channel: paramiko.Channel, width: int,
                                           height: int, pixelwidth: int,
                                           pixelheight: int) -> bool:
        with self._lock:
            if self.pty is not None:
                self.pty = PtyRequest(self.pty.term, width, height)
            on_resize = self._on_resize
        if on_resize is not None:
            on_resize(width, height)
        return True

    def follow_resizes(self, callback: Any) -> None:
        with self._lock:
            self._on_resize = callback

    def report_environment(self) -> None:
        """One audit event for every environment variable the client sent (OpenSSH sends
        LANG and LC_* by default): their names only."""
        with self._lock:
            names, self.env_refused = self.env_refused, []
        if names and self.holder is not None:
            terminal_sessions.refuse_request(
                self.core, self.holder, kind="env", session_id=self.session_id,
                reason="environment variables are refused: a sandbox's environment is its "
                "launch's", names=sorted(set(names))[:32])
