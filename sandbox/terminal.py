"""A terminal in a running sandbox member: an interactive shell on a pseudo-terminal, run as
the sandbox's own user inside the member's limits (the engine's exec API), read and written
as raw bytes. What a terminal prints is sandbox output: the console meters it.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from sandbox.spec import SANDBOX_GID, SANDBOX_UID

#: The shell a terminal runs: the image's bash, interactive on its pseudo-terminal.
SHELL = ("/bin/bash", "-i")


@dataclass(frozen=True)
class TerminalSize:
    width: int = 80
    height: int = 24

    def clamped(self) -> TerminalSize:
        return TerminalSize(min(max(self.width, 1), 1000), min(max(self.height, 1), 1000))


DEFAULT_SIZE = TerminalSize()


class Terminal(Protocol):
    """An open terminal. `fileno` is selectable; `read` returns b"" once the shell ended."""

    def fileno(self) -> int: ...

    def read(self, size: int) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def resize(self, size: TerminalSize) -> None: ...

    def exit_code(self) -> int | None:
        """The shell's exit status once it ended (above 128: killed by a signal); None while
        it runs or when unknown."""
        ...

    def close(self) -> None: ...


class DockerTerminal:
    """A shell started with `exec` in one container, attached over the engine's socket
    (with a TTY the stream is raw, not multiplexed)."""

    def __init__(self, api: Any, container: str, *, term: str, size: TerminalSize) -> None:
        self._api = api
        size = size.clamped()
        created = api.exec_create(
            container, list(SHELL), stdin=True, tty=True, user=f"{SANDBOX_UID}:{SANDBOX_GID}",
            environment={"TERM": term or "xterm"}, workdir="/workspace")
        self.exec_id: str = created["Id"]
        raw = api.exec_start(self.exec_id, tty=True, socket=True)
        # The SDK gives a SocketIO over the engine's connection; the socket itself is what
        # select() and short reads need.
        self._socket: socket.socket = getattr(raw, "_sock", raw)
        self._socket.settimeout(None)
        self._closed = False
        self.resize(size)

    def fileno(self) -> int:
        return self._socket.fileno()

    def read(self, size: int) -> bytes:
        try:
            return self._socket.recv(size)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        self._socket.sendall(data)

    def resize(self, size: TerminalSize) -> None:
        size = size.clamped()
        # A resize racing the shell's end changes nothing.
        with contextlib.suppress(Exception):
            self._api.exec_resize(self.exec_id, height=size.height, width=size.width)

    def exit_code(self) -> int | None:
        try:
            found = self._api.exec_inspect(self.exec_id)
        except Exception:  # noqa: BLE001 - the container may be gone with its exec
            return None
        if found.get("Running"):
            return None
        code = found.get("ExitCode")
        return code if isinstance(code, int) else None

    def close(self) -> None:
        """Hang up: closing the connection ends the shell's terminal (it gets SIGHUP)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
