"""The Docker backend: a sandbox is hardened containers on one engine.

Talks to the engine through the Docker SDK, selects what it owns by the installation label,
and turns every engine or connection failure into a `SandboxError` with a user-safe message.
A sandbox's state (`ContainerState`) names its members, launcher first: one container under
the "none" network plan, or an MPI cluster (`sandbox.cluster`) whose ranks share the
launcher's loopback-only network namespace. Each runs on the runtime its spec names (runc,
or gVisor as the engine's `runsc`). Workspaces, outboxes and projects' volumes live
in a `LocalStorage` on the engine's host, bind-mounted, as are the outboxes of the earlier
sandboxes a spec takes as inputs (read-only).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from sandbox.backend import (
    LABEL_INSTALLATION,
    LABEL_OWNER,
    LABEL_SANDBOX,
    LAUNCHER,
    BackendState,
    ContainerState,
    LogChunk,
    Member,
    OwnedSandbox,
    ResourceUsage,
    RunState,
    SandboxStatus,
    combine,
)
from sandbox.cluster import ClusterSecrets, member_name
from sandbox.errors import EngineUnavailable, InvalidSpec, SandboxError, SandboxNotFound
from sandbox.hardening import ENGINE_RUNTIMES, assert_hardened, create_kwargs, member_kwargs
from sandbox.spec import NetworkPlan, Runtime, SandboxSpec
from sandbox.storage import LocalStorage
from sandbox.terminal import DEFAULT_SIZE, DockerTerminal, Terminal, TerminalSize

#: Which member of its sandbox a container is.
LABEL_MEMBER = "sealroom.member"

#: How long to wait for the engine to accept a connection or answer a ping.
CONNECT_TIMEOUT_S = 3.0
#: How long any other engine call may take (stop adds its own grace period on top).
OPERATION_TIMEOUT_S = 60.0

_HANDLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NEVER = "0001-01-01T00:00:00Z"
_STATES = {
    "created": RunState.CREATED,
    "running": RunState.RUNNING,
    "paused": RunState.RUNNING,
    "restarting": RunState.RUNNING,
    "removing": RunState.EXITED,
    "exited": RunState.EXITED,
    "dead": RunState.EXITED,
}
_ENGINE_DOWN = "The container engine is not available; try again in a minute."


def _gone(exc: docker.errors.APIError) -> bool:
    return bool(exc.status_code == 404)


def _gone_or_not_running(exc: docker.errors.APIError) -> bool:
    # 409 on stop: the container is being removed or cannot run; either way it is not running.
    return bool(exc.status_code in (404, 409))


def _gone_or_going(exc: docker.errors.APIError) -> bool:
    explanation = str(exc.explanation or "")
    return bool(exc.status_code == 404 or (exc.status_code == 409 and "in progress" in explanation))


#: Docker's RFC3339NanoFixed in UTC: "2026-12-02T07:35:02.179076912Z".
_STAMP_LENGTH = 30


def _parse_log_cursor(cursor: str) -> tuple[str, int]:
    stamp, _, count = cursor.partition(" ")
    if len(stamp) != _STAMP_LENGTH or not count.isdigit():
        return "", 0
    return stamp, int(count)


def _whole_second(stamp: str) -> int:
    """The engine's `since` filter, a whole second at or before `stamp` (0: from the start)."""
    if not stamp:
        return 0
    return int(datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=UTC).timestamp())


@contextmanager
def _engine_errors(
    action: str, *, done: Callable[[docker.errors.APIError], bool] | None = None
) -> Iterator[None]:
    """Re-raise SDK and connection errors as sandbox errors.

    An engine error for which `done` is true is swallowed: the operation counts as done.
    """
    try:
        yield
    except docker.errors.APIError as exc:
        if done is not None and done(exc):
            return
        detail = f"{action}: {exc}"
        if isinstance(exc, docker.errors.ImageNotFound):
            # The operator's problem, not the user's: not an InvalidSpec.
            raise SandboxError(
                "The sandbox image is not present on the engine; an operator must rebuild it.",
                detail=detail,
            ) from exc
        if isinstance(exc, docker.errors.NotFound):
            raise SandboxNotFound("The sandbox no longer exists.", detail=detail) from exc
        if exc.status_code == 400:
            raise InvalidSpec(f"The engine refused to {action}.", detail=detail) from exc
        raise SandboxError(f"The container engine failed to {action}.", detail=detail) from exc
    except (requests.exceptions.RequestException, docker.errors.DockerException, OSError) as exc:
        raise EngineUnavailable(_ENGINE_DOWN, detail=f"{action}: {exc!r}") from exc


def _counted(sample: object) -> tuple[int, int, datetime] | None:
    """(CPU ns, memory bytes, read at) from one stats sample; None for a container that is
    not running (the engine answers with empty memory counters)."""
    if not isinstance(sample, dict):
        return None
    memory = sample.get("memory_stats") or {}
    cpu = ((sample.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    usage = memory.get("usage")
    if not isinstance(usage, int) or not isinstance(cpu, int):
        return None
    stats = memory.get("stats") or {}
    # What `docker stats` subtracts: the inactive page cache (cgroup v1's total_, v2's own).
    cache = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    read = str(sample.get("read") or "")
    try:
        read_at = datetime.strptime(read[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        fraction = read[19:].rstrip("Z").partition("+")[0]
        if fraction.startswith("."):
            read_at = read_at.replace(microsecond=int(fraction[1:7].ljust(6, "0")))
    except ValueError:
        read_at = datetime.now(UTC)
    return cpu, max(usage - (cache if isinstance(cache, int) else 0), 0), read_at


def _timestamp(value: object) -> str | None:
    if not isinstance(value, str) or not value or value == _NEVER:
        return None
    return value


def status_from_attrs(attrs: Mapping[str, Any]) -> SandboxStatus:
    """A `SandboxStatus` from the `State` of a `docker inspect` result."""
    state = attrs.get("State") or {}
    status = str(state.get("Status", ""))
    error = str(state.get("Error") or "")
    run_state = _STATES.get(status, RunState.EXITED)
    if run_state is RunState.CREATED and error:
        # The engine failed to start it (bad command, missing init): it will never run.
        run_state = RunState.EXITED
    exit_code = state.get("ExitCode")
    if run_state is not RunState.EXITED or exit_code is None:
        exit_code = None
    return SandboxStatus(
        state=run_state,
        exit_code=None if exit_code is None else int(exit_code),
        oom_killed=bool(state.get("OOMKilled")),
        started_at=_timestamp(state.get("StartedAt")),
        finished_at=_timestamp(state.get("FinishedAt")),
        error=error,
    )


#: Where dockerd records its pid when it starts (its default).
ENGINE_PID_FILE = Path("/var/run/docker.pid")


class DockerBackend:
    """Runs each sandbox as one hardened container on a Docker engine.

    Every container carries the installation label; a container without this installation's
    label is treated as missing, so one installation never touches another's sandboxes.
    """

    def __init__(
        self,
        *,
        installation: str,
        storage: LocalStorage,
        base_url: str | None = None,
        init: bool | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        timeout_s: float = OPERATION_TIMEOUT_S,
    ) -> None:
        if not installation:
            raise ValueError("installation must not be empty")
        self.installation = installation
        self._storage = storage
        self.base_url = base_url
        self._init = init
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._docker: Any = None
        self._lock = threading.Lock()

    @property
    def storage(self) -> LocalStorage:
        return self._storage

    # -- engine ----------------------------------------------------------------------------

    def _client(self) -> Any:
        """The SDK client, built on first use so a down engine fails calls, not construction."""
        with self._lock:
            if self._docker is None:
                # Built with the short timeout: construction asks the engine for its API version.
                with _engine_errors("connect to the engine"):
                    if self.base_url is None:
                        client = docker.from_env(timeout=self._connect_timeout_s)
                    else:
                        client = docker.DockerClient(
                            base_url=self.base_url, timeout=self._connect_timeout_s
                        )
                client.api.timeout = self._timeout_s
                self._docker = client
            return self._docker

    def ping(self) -> None:
        client = self._client()
        with _engine_errors("ping the engine"):
            # A plain session call, because the SDK's ping has no per-call timeout.
            response = client.api.get(
                f"{client.api.base_url}/_ping", timeout=self._connect_timeout_s
            )
        if response.status_code != 200:
            raise EngineUnavailable(
                _ENGINE_DOWN, detail=f"ping answered {response.status_code}: {response.text!r}"
            )

    def supports_gpus(self) -> bool:
        """The engine has the NVIDIA runtime registered (what device requests need)."""
        with _engine_errors("read the engine info"):
            info = self._client().info()
        return "nvidia" in (info.get("Runtimes") or {})

    def runtimes(self) -> frozenset[Runtime]:
        """The sandbox runtimes whose engine runtime is registered (asked each time: an
        operator may register gVisor while the console runs)."""
        with _engine_errors("read the engine info"):
            info = self._client().info()
        registered = info.get("Runtimes") or {}
        return frozenset(r for r, name in ENGINE_RUNTIMES.items() if name in registered)

    def engine_started_at(self) -> datetime | None:
        """When the engine on this host started: its pid file's time (dockerd writes it at
        start). None for a remote engine or an unreadable file."""
        if self.base_url and not self.base_url.startswith("unix://"):
            return None
        try:
            return datetime.fromtimestamp(ENGINE_PID_FILE.stat().st_mtime, UTC)
        except OSError:
            return None

    def supports_init(self) -> bool:
        """Whether containers get `docker-init` as pid 1.

        The engine reports its init binary's commit as "N/A" when it cannot run it (checked
        on 20.10 with a missing --init-path); Debian's tini reports an empty commit and works.
        """
        if self._init is None:
            with _engine_errors("read the engine info"):
                info = self._client().info()
            commit = (info.get("InitCommit") or {}).get("ID")
            self._init = bool(info.get("InitBinary")) and commit != "N/A"
        return self._init

    # -- lifecycle -------------------------------------------------------------------------

    def _inputs(self, spec: SandboxSpec) -> dict[str, Path]:
        """The host directory of each input's outputs; a sandbox whose outputs are not
        kept (never made, or discarded) cannot be an input."""
        found: dict[str, Path] = {}
        for item in spec.inputs:
            path = self._storage.input_path(item.sandbox_id)
            if path.is_symlink() or not path.is_dir():
                raise InvalidSpec(f"The outputs of sandbox {item.sandbox_id} are not kept, "
                                  f"so they cannot be an input.", detail=f"{path} is missing")
            found[item.sandbox_id] = path
        return found

    def create(self, spec: SandboxSpec) -> BackendState:
        if spec.ranks > 1:
            return self._create_cluster(spec)
        inputs = self._inputs(spec)
        workspace, outbox = self._storage.host_paths(spec)
        kwargs = create_kwargs(spec, installation=self.installation, init=self.supports_init(),
                               workspace=workspace, outbox=outbox, inputs=inputs)
        kwargs["labels"] = {**kwargs["labels"], LABEL_MEMBER: LAUNCHER}
        client = self._client()
        with _engine_errors("create the sandbox"):
            container = client.containers.create(**kwargs)
        return ContainerState((Member(LAUNCHER, str(container.id)),), spec.network,
                              gpus=spec.gpus, inputs=tuple(inputs),
                              runtime=spec.runtime).to_state()

    def _create_cluster(self, spec: SandboxSpec) -> BackendState:
        """The launcher first (it holds the loopback-only namespace), then each rank in it;
        keys made for this launch. On any failure nothing made here is left behind."""
        inputs = self._inputs(spec)
        workspace, outbox = self._storage.host_paths(spec)
        secrets = self._storage.write_secrets(spec.sandbox_id,
                                              ClusterSecrets.generate(spec.ranks).files)
        init = self.supports_init()
        client = self._client()
        members: list[Member] = []
        try:
            for rank in range(spec.ranks):
                holder = members[0].container if members else ""
                kwargs = member_kwargs(spec, rank, installation=self.installation, init=init,
                                       workspace=workspace, outbox=outbox, secrets=secrets,
                                       holder=holder, inputs=inputs)
                name = member_name(rank)
                kwargs["labels"] = {**kwargs["labels"], LABEL_MEMBER: name}
                with _engine_errors("create the sandbox"):
                    container = client.containers.create(**kwargs)
                members.append(Member(name, str(container.id)))
        except BaseException:
            self.remove(ContainerState(tuple(members), spec.network, "",
                                       spec.sandbox_id).to_state())
            raise
        return ContainerState(tuple(members), spec.network, members[0].container,
                              spec.sandbox_id, spec.gpus, tuple(inputs),
                              spec.runtime).to_state()

    def _inspect(self, handle: str) -> dict[str, Any] | None:
        """The container's attributes, or None when it is gone or not this installation's."""
        if not _HANDLE.match(handle):
            return None
        attrs: dict[str, Any] | None = None
        with _engine_errors("inspect the sandbox", done=_gone):
            attrs = self._client().api.inspect_container(handle)
        if attrs is None:
            return None
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_INSTALLATION) != self.installation:
            return None
        return attrs

    def _require(self, handle: str, action: str) -> dict[str, Any]:
        attrs = self._inspect(handle)
        if attrs is None:
            raise SandboxNotFound("The sandbox no longer exists.", detail=f"{action} {handle}")
        return attrs

    def _members(self, state: BackendState, action: str) -> ContainerState:
        found = ContainerState.from_state(state)
        if not found.members:
            raise SandboxNotFound("The sandbox no longer exists.",
                                  detail=f"{action}: the state names no container")
        return found

    def start(self, state: BackendState) -> None:
        found = self._members(state, "start")
        for member in found.members:
            violations = assert_hardened(self._require(member.container, "start"),
                                         found.plan, found.network, gpus=found.gpus,
                                         inputs=found.inputs, runtime=found.runtime)
            if violations:
                raise SandboxError(
                    "The sandbox failed its hardening self-check and was not started.",
                    detail=f"start {member.container}: " + "; ".join(violations),
                )
        # The launcher first: the other members join its network namespace.
        for member in found.members:
            with _engine_errors("start the sandbox"):
                self._client().api.start(member.container)

    def poll(self, state: BackendState) -> SandboxStatus:
        found = ContainerState.from_state(state)
        statuses = []
        for member in found.members:
            attrs = self._inspect(member.container)
            statuses.append(SandboxStatus(state=RunState.MISSING) if attrs is None
                            else status_from_attrs(attrs))
        return combine(statuses, [m.name for m in found.members])

    def members(self, state: BackendState) -> tuple[str, ...]:
        return tuple(m.name for m in ContainerState.from_state(state).members)

    def logs(self, state: BackendState, member: str = "", *, tail: int | None = None) -> bytes:
        """A member's whole log (or its last `tail` lines): for tests and operators; the
        console reads logs only through `logs_since`."""
        handle = self._container(state, member, "logs")
        self._require(handle, "logs")
        with _engine_errors("read the sandbox logs"):
            output = self._client().api.logs(
                handle,
                stdout=True,
                stderr=True,
                stream=False,
                timestamps=False,
                tail="all" if tail is None else max(tail, 0),
            )
        return bytes(output)

    def _container(self, state: BackendState, member: str, action: str) -> str:
        found = self._members(state, action).member(member)
        if found is None:
            raise SandboxNotFound("The sandbox has no such member.",
                                  detail=f"{action}: no member {member!r}")
        return found.container

    def open_terminal(self, state: BackendState, member: str = "", *, term: str = "xterm",
                      size: TerminalSize = DEFAULT_SIZE) -> Terminal:
        handle = self._container(state, member, "open a terminal")
        attrs = self._require(handle, "open a terminal")
        if not attrs.get("State", {}).get("Running"):
            raise SandboxNotFound("The sandbox is not running.",
                                  detail=f"open a terminal: {handle} is not running")
        with _engine_errors("open a terminal"):
            return DockerTerminal(self._client().api, handle, term=term, size=size)

    def logs_since(self, state: BackendState, member: str = "", cursor: str = "", *,
                   max_bytes: int = 16 << 20) -> LogChunk:
        """Messages after `cursor`, by the engine's nanosecond timestamps (fixed width, so
        they compare as text); the cursor is "<timestamp> <messages at it already taken>".
        Timestamps, unlike byte positions, survive the json-file driver's rotation."""
        handle = self._container(state, member, "logs")
        self._require(handle, "logs")
        after, taken_at = _parse_log_cursor(cursor)
        since = _whole_second(after)
        out: list[bytes] = []
        size, last, same = 0, after, taken_at
        with _engine_errors("read the sandbox logs"):
            frames = self._client().api.logs(
                handle, stdout=True, stderr=True, stream=True, follow=False,
                timestamps=True, **({"since": since} if since else {}))
            try:
                seen_at_after = 0
                for frame in frames:
                    stamp, _, message = bytes(frame).partition(b" ")
                    if len(stamp) != _STAMP_LENGTH:
                        continue  # not a timestamped message: nothing we can place
                    text = stamp.decode("ascii", "replace")
                    if text < after:
                        continue
                    if text == after:
                        seen_at_after += 1
                        if seen_at_after <= taken_at:
                            continue
                    if text == last:
                        same += 1
                    else:
                        last, same = text, 1
                    out.append(message)
                    size += len(message)
                    if size >= max_bytes:
                        break
            finally:
                close = getattr(frames, "close", None)
                if close is not None:
                    close()
        return LogChunk(b"".join(out), f"{last} {same}" if last else "")

    def usage(self, state: BackendState) -> ResourceUsage | None:
        """`docker stats --no-stream` for each running member, one-shot (one sample, no
        wait for a second): cumulative CPU time, and memory as the docker CLI counts it."""
        cpu, memory, read_at, running = 0, 0, None, False
        for member in ContainerState.from_state(state).members:
            with _engine_errors("read the sandbox's resource use", done=_gone):
                sample = self._client().api.stats(member.container, stream=False,
                                                  one_shot=True)
                counted = _counted(sample)
                if counted is not None:
                    running = True
                    cpu, memory = cpu + counted[0], memory + counted[1]
                    read_at = read_at or counted[2]
        if not running or read_at is None:
            return None
        return ResourceUsage(cpu_ns=cpu, memory_bytes=memory, read_at=read_at)

    def stop(self, state: BackendState, *, timeout_s: int = 10) -> None:
        # The launcher first, so mpirun sees its ranks go only after it was told to stop.
        for member in ContainerState.from_state(state).members:
            if self._inspect(member.container) is None:
                continue
            with _engine_errors("stop the sandbox", done=_gone_or_not_running):
                self._client().api.stop(member.container, timeout=timeout_s)

    def remove(self, state: BackendState) -> None:
        found = ContainerState.from_state(state)
        # The keys first: whoever sees the containers gone then sees no keys either, and a
        # removal the engine fails leaves no cluster that could use them again.
        if found.plan is NetworkPlan.MEMBERS_ONLY and found.sandbox_id:
            self._storage.drop_secrets(found.sandbox_id)
        # The ranks before the launcher whose namespace they share.
        for member in reversed(found.members):
            if self._inspect(member.container) is None:
                continue
            with _engine_errors("remove the sandbox", done=_gone_or_going):
                # v=True: anonymous volumes an image declares go with the container.
                self._client().api.remove_container(member.container, force=True, v=True)

    def strays(self, held: BackendState, recorded: BackendState) -> BackendState | None:
        known = ContainerState.from_state(recorded).objects
        found = ContainerState.from_state(held)
        extra = tuple(m for m in found.members if m.container not in known)
        if not extra:
            return None
        return ContainerState(extra, found.plan).to_state()

    def list_owned(self) -> Sequence[OwnedSandbox]:
        with _engine_errors("list sandboxes"):
            containers = self._client().api.containers(
                all=True,
                filters={"label": [f"{LABEL_INSTALLATION}={self.installation}", LABEL_SANDBOX]},
            )
        groups: dict[str, tuple[str, list[Member]]] = {}
        for c in containers:
            labels = c.get("Labels") or {}
            sandbox_id = str(labels.get(LABEL_SANDBOX, ""))
            owner, members = groups.setdefault(sandbox_id, (str(labels.get(LABEL_OWNER, "")), []))
            members.append(Member(str(labels.get(LABEL_MEMBER) or LAUNCHER), str(c["Id"])))
        return [
            OwnedSandbox(sandbox_id, owner, ContainerState(
                tuple(sorted(members, key=lambda m: (m.name != LAUNCHER, m.name)))).to_state())
            for sandbox_id, (owner, members) in groups.items()
        ]
