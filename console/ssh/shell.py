"""One running terminal session: bytes between the client's channel and the sandbox's
terminal, output paid for before it is sent, everything recorded, and the session ended by
the policy's limits and timeouts, by the shell or sandbox ending, or by the gateway stopping.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import paramiko

from audit.events import Outcome
from audit.recordings import AsciicastWriter
from console.core import Sealroom
from console.services import terminal_sessions
from console.services.terminal_sessions import Ending, OpenedSession, OutputMeter
from policies.evaluator import PolicyEvaluator
from sandbox.backend import RunState
from sandbox.errors import SandboxError
from sandbox.terminal import Terminal, TerminalSize

#: How often the loop wakes without traffic to check timeouts and the sandbox.
POLL_S = 1.0
READ_SIZE = 16 << 10
#: How long a shell killed by a signal waits for the engine to call its sandbox stopped.
STOP_SETTLE_S = 5.0


def end_banner(reason: str) -> bytes:
    """The console's own words on the client's screen when a session ends."""
    return f"\r\n[sealroom] session ended: {reason}\r\n".encode()


class ShellSession:
    def __init__(self, core: Sealroom, opened: OpenedSession, channel: paramiko.Channel,
                 terminal: Terminal, recording: AsciicastWriter, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.core = core
        self.opened = opened
        self.channel = channel
        self.terminal = terminal
        self.recording = recording
        self.meter = OutputMeter(core, opened)
        self.bytes_in = 0
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()  # the recording: the loop and resizes both write
        self._stop: Ending | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._finished = False

    def resize(self, width: int, height: int) -> None:
        size = TerminalSize(width, height).clamped()
        self.terminal.resize(size)
        with self._lock:
            self.recording.resize(size.width, size.height, self._wall())

    def stop(self, ending: Ending) -> None:
        """End the session from another thread (the gateway stopping)."""
        self._stop = ending
        with self._lock:
            if not self._finished:
                os.write(self._wake_w, b"x")

    def _send(self, data: bytes) -> None:
        self.channel.sendall(data)
        with self._lock:
            self.recording.output(data, self._wall())

    def run(self) -> Ending:
        """Move bytes until something ends the session; say why on the client's screen."""
        started = last_input = self._clock()
        next_check = started + POLL_S
        ending: Ending | None = None
        client_done = False
        try:
            while ending is None:
                watched: list[Any] = [self.terminal, self._wake_r]
                if not client_done:
                    watched.append(self.channel)
                ready, _, _ = select.select(watched, [], [], POLL_S)
                now = self._clock()
                if self._stop is not None:
                    ending = self._stop
                    break
                if self.terminal in ready:
                    ending = self._pump_output(now)
                if ending is None and self.channel in ready:
                    data = self.channel.recv(READ_SIZE)
                    if not data:
                        if self.channel.closed or not self.channel.get_transport():
                            ending = Ending("the client disconnected")
                            break
                        # End of input (a client fed from a pipe): the shell may still be
                        # printing what it was asked; the idle timeout ends a silent one.
                        client_done = True
                        continue
                    last_input = now
                    self.bytes_in += len(data)
                    with self._lock:
                        self.recording.input(data, self._wall())
                    self.terminal.write(data)
                if ending is None and now >= next_check:
                    next_check = now + POLL_S
                    # The active policy, once a second: an activation reaches open sessions.
                    self.meter.evaluator = self.core.evaluator
                    ending = self._check(self.meter.evaluator, now - started,
                                         now - last_input)
        except OSError as exc:
            ending = Ending(f"the connection failed ({exc.__class__.__name__})",
                            outcome=Outcome.FAILED)
        self._finish(ending)
        return ending

    def _pump_output(self, now: float) -> Ending | None:
        data = self.terminal.read(READ_SIZE)
        if not data:
            return Ending("the sandbox stopped") if self._sandbox_went() \
                else Ending("the shell ended")
        allowed, stop = self.meter.admit(len(data), now)
        if allowed:
            self._send(data[:allowed])
        if stop is not None:
            return Ending(stop.reason, stop.rule, Outcome.DENIED)
        return None

    def _sandbox_went(self) -> bool:
        """Whether the shell ended because its sandbox did. The engine, not the database: the
        supervisor may not have seen the stop yet; and a shell killed by a signal may end a
        moment before the engine calls its container stopped, so that case waits briefly."""
        if not terminal_sessions.sandbox_running(self.core, self.opened.sandbox_id) \
                or not _still_running(self.core, self.opened):
            return True
        code = self.terminal.exit_code()
        if code is not None and code <= 128:
            return False  # `exit`, or the shell's own end
        deadline = time.monotonic() + STOP_SETTLE_S  # real time, whatever the session's clock
        while time.monotonic() < deadline:
            if not _still_running(self.core, self.opened):
                return True
            time.sleep(0.1)
        return False

    def _check(self, evaluator: PolicyEvaluator, age: float, idle: float) -> Ending | None:
        for decision in (evaluator.terminal_age(age), evaluator.terminal_idle(idle)):
            if not decision:
                return Ending(decision.reason, decision.rule, Outcome.DENIED)
        if not terminal_sessions.sandbox_running(self.core, self.opened.sandbox_id):
            return Ending("the sandbox stopped")
        return terminal_sessions.still_allowed(self.core, self.opened, evaluator)

    def _finish(self, ending: Ending) -> None:
        banner = end_banner(ending.reason)
        try:
            self._send(banner)
            with self._lock:
                self.recording.marker(ending.reason, self._wall())
            self.channel.send_exit_status(0 if ending.outcome is Outcome.OK else 1)
        except OSError:
            pass
        finally:
            self.terminal.close()
            with self._lock:
                self._finished = True
                for fd in (self._wake_r, self._wake_w):
                    _close(fd)


def _still_running(core: Sealroom, opened: OpenedSession) -> bool:
    try:
        status = core.backend.poll(opened.backend_state)
    except SandboxError:
        return False
    return status.state is RunState.RUNNING


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
