"""Where a sandbox's workspace and outbox live, and projects' persistent workspaces,
behind one small interface.

Services stage code into a sandbox, read its outbox and manage projects through
`SandboxStorage`, never through a host path, so a backend whose volumes live on another
machine can bring its own storage. `LocalStorage` keeps them on this host: given the
policy's sizes, as two loop-mounted volumes per sandbox (`sandbox.volumes`, so a sandbox
that fills them gets ENOSPC and the host's disk never fills); without, as plain directories
`<root>/<sandbox id>/workspace` and `.../outbox` (tests, and sandboxes from before quotas).
Projects are `sandbox.projects` volumes. The Docker backend bind-mounts them, and an earlier
sandbox's outbox as an input.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from sandbox.errors import InvalidUpload
from sandbox.files import UploadLimits, chown_tree, tree_digest, unpack_code
from sandbox.outbox import (
    OutboxListing,
    OutboxManifest,
    OutboxRules,
    hash_outbox,
    list_outbox,
    open_outbox_file,
)
from sandbox.projects import ProjectVolumes
from sandbox.spec import SANDBOX_GID, SANDBOX_UID, Limits, SandboxSpec, valid_sandbox_id
from sandbox.volumes import OUTBOX, WORKSPACE, SandboxVolumes, is_full


@runtime_checkable
class SandboxStorage(Protocol):
    """A sandbox's workspace (code in, read-write inside) and outbox (files out, read by
    the gate). Every method takes the sandbox id; `discard` is safe to repeat."""

    def create(self, sandbox_id: str, limits: Limits | None = None) -> None:
        """Make an empty workspace and outbox for a new sandbox (refuses an existing one),
        each holding at most `limits.workspace_mb` / `limits.outbox_mb` where given."""

    def stage_tree(self, sandbox_id: str, source: Path) -> str:
        """Copy a directory of code (a bundled example) into the workspace; its digest."""

    def outbox(self, sandbox_id: str) -> Path:
        """The host directory holding the sandbox's outbox (read by the console)."""

    def stage_upload(self, sandbox_id: str, filename: str, data: bytes,
                     limits: UploadLimits) -> str:
        """Unpack an uploaded script or zip into the workspace; its digest. Raises
        `InvalidUpload` for anything unsafe."""

    def seal_staging(self, sandbox_id: str) -> None:
        """Staging is over: hand the workspace and outbox to the sandbox user."""

    def list_outbox(self, sandbox_id: str, rules: OutboxRules) -> OutboxListing: ...

    def hash_outbox(self, sandbox_id: str, rules: OutboxRules) -> OutboxManifest: ...

    def open_outbox_file(self, sandbox_id: str, path: str) -> BinaryIO:
        """One regular file of the outbox, never through a link (`OutboxError` otherwise)."""

    def discard(self, sandbox_id: str) -> None:
        """Delete the workspace and outbox; a missing sandbox counts as done."""

    def release(self, sandbox_id: str) -> None:
        """The sandbox has ended: its workspace goes, its outbox stays (read-only) for the
        release gate and later sandboxes. Safe to repeat."""

    def settle(self, keep: Collection[str]) -> list[str]:
        """Let go of what the host holds for every sandbox not in `keep` (running, or whose
        outbox a running sandbox mounts); it comes back when read. The sandboxes let go of."""

    def create_project(self, name: str, quota_mb: int) -> None:
        """Make an empty persistent workspace of `quota_mb` MB for a new project (refuses an
        existing one: `ProjectExists`)."""

    def remove_project(self, name: str) -> None:
        """Delete a project's workspace and every file in it; a missing one counts as done."""

    def unmount_project(self, name: str) -> None:
        """Let go of a project's workspace while none of its sandboxes runs (it comes back
        when next used); safe to repeat."""

    def project_usage(self, name: str) -> tuple[int, int]:
        """(bytes used, bytes it can hold) of a project's workspace."""

    def stage_into_project(self, sandbox_id: str, project: str) -> None:
        """Copy the code staged in a sandbox's own workspace into its project's workspace,
        replacing same-named files (`ProjectFull` when there is no room)."""


@contextlib.contextmanager
def _fits(sandbox_id: str) -> Iterator[None]:
    """Code larger than the workspace's quota is the upload's fault, said so."""
    try:
        yield
    except shutil.Error as exc:  # copytree gathers each file's error
        if any("No space left" in str(e) for e in exc.args[0]):
            raise InvalidUpload("the code does not fit in the sandbox's workspace",
                                detail=f"staging {sandbox_id}: {exc!r}") from exc
        raise
    except OSError as exc:
        if is_full(exc):
            raise InvalidUpload("the code does not fit in the sandbox's workspace",
                                detail=f"staging {sandbox_id}: {exc!r}") from exc
        raise


class LocalStorage:
    """Workspaces and outboxes as directories under `root` on this host; projects' volumes
    under `projects_root` (by default `projects` beside `root`)."""

    def __init__(self, root: Path, projects_root: Path | None = None, *,
                 projects: ProjectVolumes | None = None,
                 volumes: SandboxVolumes | None = None) -> None:
        self.root = root
        #: `volumes` stands in for sandboxes' volumes in tests that must not mount anything.
        self.volumes = volumes if volumes is not None else SandboxVolumes(root)
        #: `projects` stands in for the volumes in tests that must not mount anything.
        self.projects = projects if projects is not None else ProjectVolumes(
            projects_root if projects_root is not None else root.parent / "projects")

    def _dir(self, sandbox_id: str) -> Path:
        if not valid_sandbox_id(sandbox_id):
            raise ValueError(f"invalid sandbox id {sandbox_id!r}")
        return self.root / sandbox_id

    def _kind(self, sandbox_id: str, kind: str) -> Path:
        directory = self._dir(sandbox_id)
        if self.volumes.has(sandbox_id, kind):
            return self.volumes.mounted(sandbox_id, kind)
        return directory / kind  # a plain directory (or nothing: reads find it empty)

    def workspace(self, sandbox_id: str) -> Path:
        """The host directory mounted at /workspace (for backends on this host only); its
        volume mounted first if it is not."""
        return self._kind(sandbox_id, WORKSPACE)

    def outbox(self, sandbox_id: str) -> Path:
        """The host directory mounted at /outbox (for backends on this host only); its
        volume mounted first, read-only, if it is not (the sandbox ended)."""
        return self._kind(sandbox_id, OUTBOX)

    def host_paths(self, spec: SandboxSpec) -> tuple[Path, Path]:
        """The host directories bound at /workspace and /outbox: the workspace is the
        project's (its volume mounted first) when the spec names one."""
        workspace = (self.projects.workspace(spec.project) if spec.project
                     else self.workspace(spec.sandbox_id))
        return workspace, self.outbox(spec.sandbox_id)

    def input_path(self, sandbox_id: str) -> Path:
        """The host directory a later sandbox mounts read-only at /inputs/<sandbox id>: this
        sandbox's outbox (for backends on this host only)."""
        return self.outbox(sandbox_id)

    def secrets(self, sandbox_id: str) -> Path:
        """The host directory of a cluster's own keys (for backends on this host only)."""
        return self._dir(sandbox_id) / "mpi"

    def write_secrets(self, sandbox_id: str, files: Mapping[str, bytes]) -> Path:
        """Write a cluster's keys, readable by the sandbox user alone; a fresh directory
        every time (an existing one is refused, so keys are never reused)."""
        directory = self.secrets(sandbox_id)
        directory.mkdir(mode=0o700)
        for name, data in files.items():
            descriptor = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
        os.mkfifo(directory / "ready", 0o600)  # the ranks' readiness, read by the launcher
        chown_tree(directory, SANDBOX_UID, SANDBOX_GID)
        return directory

    def drop_secrets(self, sandbox_id: str) -> None:
        """Delete a cluster's keys; missing keys count as done."""
        shutil.rmtree(self.secrets(sandbox_id), ignore_errors=True)

    def create(self, sandbox_id: str, limits: Limits | None = None) -> None:
        if limits is not None:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.volumes.create(sandbox_id, limits.workspace_mb, limits.outbox_mb)
            return
        self._dir(sandbox_id).mkdir(mode=0o700, parents=True)
        self.workspace(sandbox_id).mkdir(mode=0o700)
        self.outbox(sandbox_id).mkdir(mode=0o700)

    def stage_tree(self, sandbox_id: str, source: Path) -> str:
        workspace = self.workspace(sandbox_id)
        with _fits(sandbox_id):
            shutil.copytree(source, workspace, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        workspace.chmod(0o700)  # copytree gave it the source's mode
        return tree_digest(workspace)[0]

    def stage_upload(self, sandbox_id: str, filename: str, data: bytes,
                     limits: UploadLimits) -> str:
        with _fits(sandbox_id):
            return unpack_code(filename, data, self.workspace(sandbox_id), limits)

    def seal_staging(self, sandbox_id: str) -> None:
        # The sandbox's own directories only: the volumes' images and mount points stay
        # the console's.
        chown_tree(self.workspace(sandbox_id), SANDBOX_UID, SANDBOX_GID)
        chown_tree(self.outbox(sandbox_id), SANDBOX_UID, SANDBOX_GID)

    def list_outbox(self, sandbox_id: str, rules: OutboxRules) -> OutboxListing:
        return list_outbox(self.outbox(sandbox_id), rules)

    def hash_outbox(self, sandbox_id: str, rules: OutboxRules) -> OutboxManifest:
        return hash_outbox(self.outbox(sandbox_id), rules)

    def open_outbox_file(self, sandbox_id: str, path: str) -> BinaryIO:
        return open_outbox_file(self.outbox(sandbox_id), path)

    def discard(self, sandbox_id: str) -> None:
        self.drop_secrets(sandbox_id)
        self.volumes.remove(sandbox_id)
        directory = self._dir(sandbox_id)
        shutil.rmtree(directory / WORKSPACE, ignore_errors=True)
        shutil.rmtree(directory / OUTBOX, ignore_errors=True)
        with contextlib.suppress(OSError):  # kept while the console still holds files there
            directory.rmdir()

    def release(self, sandbox_id: str) -> None:
        self.volumes.release(sandbox_id)

    def settle(self, keep: Collection[str]) -> list[str]:
        return self.volumes.settle(keep)

    def create_project(self, name: str, quota_mb: int) -> None:
        self.projects.create(name, quota_mb)

    def remove_project(self, name: str) -> None:
        self.projects.remove(name)

    def unmount_project(self, name: str) -> None:
        self.projects.unmount(name)

    def project_usage(self, name: str) -> tuple[int, int]:
        return self.projects.usage(name)

    def stage_into_project(self, sandbox_id: str, project: str) -> None:
        self.projects.copy_in(project, self.workspace(sandbox_id))
