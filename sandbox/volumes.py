"""Size-limited filesystems on this host: an ext4 image per volume, loop-mounted, so whoever
writes in it gets ENOSPC at its size and the host's own disk never fills.

`LoopFilesystems` is the host's part (make, mount, remount read-only, unmount, what is
attached) shared by projects' volumes (`sandbox.projects`) and each sandbox's own workspace
and outbox (`SandboxVolumes`). Loop devices come from /dev/loop-control as needed; a sandbox
holds two while it runs and lets go of its workspace when it ends (`release`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import subprocess
from collections.abc import Collection, Iterator
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.spec import MIN_VOLUME_MB, SANDBOX_GID, SANDBOX_UID, valid_sandbox_id

__all__ = ["MIN_VOLUME_MB", "LoopFilesystems", "SandboxVolumeError", "SandboxVolumes"]

#: What `mount` is given: a loop device, no set-uid programs, no device files.
MOUNT_OPTIONS = "loop,nosuid,nodev"

_LOCK = ".lock"  # never a sandbox nor a project: names start with [a-z0-9]
_LOOP_MAJOR = 7
_TOOL_TIMEOUT_S = 600  # mkfs of a large sparse image writes its metadata
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SandboxVolumeError(SandboxError):
    """A sandbox's workspace or outbox volume could not be made, mounted or let go of."""


def is_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class LoopFilesystems:
    """The host's part of loop-mounted ext4 volumes under `root`: a test double replaces the
    methods that run tools or read the kernel's state (`_make_filesystem`, `_mount`,
    `_remount_read_only`, `_unmount`, `_is_mounted`, `_backed_by`, `_attached`,
    `_capacity`). Errors are `error`, their messages name `what`."""

    error: type[SandboxError] = SandboxVolumeError
    what = "volume"
    #: Extra `mkfs.ext4` options.
    mkfs_options: tuple[str, ...] = ()

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(self.root / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def _run(self, action: str, argv: list[str]) -> None:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                    timeout=_TOOL_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            raise self.error(f"The host could not {action}.",
                             detail=f"{argv[0]}: {exc!r}") from exc
        if result.returncode != 0:
            raise self.error(
                f"The host could not {action}.",
                detail=f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")

    def _make_filesystem(self, image: Path, size_mb: int) -> None:
        """A sparse file of `size_mb` holding an empty ext4 filesystem, no blocks reserved
        for root (the sandbox user gets all of it)."""
        descriptor = os.open(image, _CREATE_FLAGS, 0o600)
        try:
            os.ftruncate(descriptor, size_mb * 1024 * 1024)
        finally:
            os.close(descriptor)
        self._run(f"make the {self.what}'s filesystem",
                  ["mkfs.ext4", "-q", "-F", "-m", "0", *self.mkfs_options, str(image)])

    def _mount(self, image: Path, mountpoint: Path, *, read_only: bool = False) -> None:
        # The engine bind-mounts a directory that exists only on the mounted filesystem: an
        # engine in another mount namespace finds no such directory and refuses to create
        # the container, rather than writing to the host's disk without a quota.
        options = MOUNT_OPTIONS + (",ro" if read_only else "")
        self._run(f"mount the {self.what}",
                  ["mount", "-t", "ext4", "-o", options, str(image), str(mountpoint)])

    def _remount_read_only(self, mountpoint: Path) -> None:
        self._run(f"make the {self.what} read-only",
                  ["mount", "-o", "remount,ro", str(mountpoint)])

    def _unmount(self, mountpoint: Path) -> None:
        self._run(f"unmount the {self.what}", ["umount", str(mountpoint)])

    def _is_mounted(self, mountpoint: Path) -> bool:
        return os.path.ismount(mountpoint)

    def _backed_by(self, mountpoint: Path, image: Path) -> bool:
        """Whether what is mounted at `mountpoint` is a loop device over `image`."""
        device = os.stat(mountpoint).st_dev
        if os.major(device) != _LOOP_MAJOR:
            return False
        backing = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}/loop/backing_file")
        try:
            return backing.read_text().strip() == str(image.resolve())
        except OSError:
            return False

    def _attached(self, image: Path) -> bool:
        """Whether some loop device still reads `image`: a sandbox that has not ended still
        holds the filesystem after the host's own mount went."""
        wanted = str(image.resolve())
        for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
            try:
                if backing.read_text().strip() == wanted:
                    return True
            except OSError:
                continue
        return False

    def _capacity(self, mountpoint: Path) -> tuple[int, int]:
        found = os.statvfs(mountpoint)
        used = (found.f_blocks - found.f_bfree) * found.f_frsize
        # What the sandbox user can still write (ext4 keeps a few clusters even with -m 0).
        return used, used + found.f_bavail * found.f_frsize

    def _mount_checked(self, image: Path, mountpoint: Path, *, read_only: bool) -> None:
        """Mount `image` at `mountpoint` unless it is; either way check that what is there is
        that image. Never a second mount of an image a container still holds."""
        if not image.is_file() or image.is_symlink():
            raise self.error(f"The {self.what} is missing.",
                             detail=f"{image} is not a regular file")
        if not self._is_mounted(mountpoint):
            if self._attached(image):  # a second mount of one ext4 image would corrupt it
                raise self.error(
                    f"The {self.what} is still in use by a sandbox that has not ended.",
                    detail=f"{image} is attached to a loop device but not mounted at "
                           f"{mountpoint}")
            mountpoint.mkdir(mode=0o700, exist_ok=True)
            self._mount(image, mountpoint, read_only=read_only)
        if not self._backed_by(mountpoint, image):
            raise self.error(f"The {self.what} is not the one mounted.",
                             detail=f"{mountpoint} is not a loop mount of {image}")

    def _top_directory(self, mountpoint: Path, name: str) -> Path:
        """`name` on the mounted filesystem, the sandbox user's (0700): the only part of
        the volume a container sees (never `lost+found` nor the filesystem's root)."""
        top = mountpoint / name
        try:
            os.mkdir(top, 0o700)
            if os.geteuid() == 0:
                os.chown(top, SANDBOX_UID, SANDBOX_GID)
        except FileExistsError:
            pass
        if not stat.S_ISDIR(os.lstat(top).st_mode):
            raise self.error(f"The {self.what} is damaged.", detail=f"{top} is not a directory")
        return top

    def _let_go(self, mountpoint: Path) -> None:
        if self._is_mounted(mountpoint):
            self._unmount(mountpoint)
        if self._is_mounted(mountpoint):  # never delete through a mounted volume
            raise self.error(f"The {self.what} is still in use.",
                             detail=f"{mountpoint} stays mounted")


#: A sandbox's two volumes, and the directory each shows the sandbox.
WORKSPACE = "workspace"
OUTBOX = "outbox"
_KINDS = (WORKSPACE, OUTBOX)


class SandboxVolumes(LoopFilesystems):
    """Each sandbox's workspace and outbox as two volumes of the sizes the policy gives:
    `<root>/<id>/<kind>.ext4` mounted at `<root>/<id>/<kind>.fs`, the sandbox seeing only
    `<kind>.fs/<kind>`.

    While the sandbox runs both are mounted read-write. When it ends (`release`) the
    workspace goes (its space with it) and the outbox is made read-only: the release gate
    and later sandboxes read it there. After a restart of the host an ended sandbox's outbox
    is mounted again, read-only, when first read; `settle` lets go of the mounts of every
    sandbox no running sandbox needs."""

    what = "sandbox's workspace or outbox"
    # A 4 MiB journal: ext4's default (up to 64 MiB for a few GiB) would be written into
    # every sandbox's images, and kept with each outbox.
    mkfs_options = ("-J", "size=4")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # The directory itself is the lock: no lock file among the sandboxes.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def _dir(self, sandbox_id: str) -> Path:
        if not valid_sandbox_id(sandbox_id):
            raise ValueError(f"invalid sandbox id {sandbox_id!r}")
        return self.root / sandbox_id

    def image(self, sandbox_id: str, kind: str) -> Path:
        return self._dir(sandbox_id) / f"{kind}.ext4"

    def mountpoint(self, sandbox_id: str, kind: str) -> Path:
        return self._dir(sandbox_id) / f"{kind}.fs"

    def path(self, sandbox_id: str, kind: str) -> Path:
        """Where the sandbox's `kind` directory is once its volume is mounted."""
        return self.mountpoint(sandbox_id, kind) / kind

    def has(self, sandbox_id: str, kind: str) -> bool:
        """Whether the sandbox's `kind` is a volume (not a plain directory from before
        quotas, nor missing)."""
        return self.image(sandbox_id, kind).is_file()

    def create(self, sandbox_id: str, workspace_mb: int, outbox_mb: int) -> None:
        """Make and mount a new sandbox's empty workspace and outbox; the sandbox's directory
        must not exist yet (`FileExistsError`). On failure nothing is left mounted."""
        for size in (workspace_mb, outbox_mb):
            if isinstance(size, bool) or not isinstance(size, int) or size < MIN_VOLUME_MB:
                raise ValueError(f"a sandbox volume is at least {MIN_VOLUME_MB} MB")
        directory = self._dir(sandbox_id)
        with self._locked():
            directory.mkdir(mode=0o700)  # FileExistsError: never two sandboxes in one place
            try:
                for kind, size in ((WORKSPACE, workspace_mb), (OUTBOX, outbox_mb)):
                    self._make_filesystem(self.image(sandbox_id, kind), size)
                    mountpoint = self.mountpoint(sandbox_id, kind)
                    self._mount_checked(self.image(sandbox_id, kind), mountpoint,
                                        read_only=False)
                    os.chmod(mountpoint, 0o700)  # the filesystem's root: mkfs made it 0755
                    self._top_directory(mountpoint, kind)
            except BaseException:
                with contextlib.suppress(SandboxError, OSError):
                    self._destroy(sandbox_id)
                    directory.rmdir()
                raise

    def mounted(self, sandbox_id: str, kind: str) -> Path:
        """The sandbox's `kind` directory, its volume mounted first (read-only) if it is not:
        after the sandbox ended, or the host restarted."""
        with self._locked():
            mountpoint = self.mountpoint(sandbox_id, kind)
            self._mount_checked(self.image(sandbox_id, kind), mountpoint,
                                read_only=not self._is_mounted(mountpoint))
            return self._top_directory(mountpoint, kind)

    def release(self, sandbox_id: str) -> None:
        """The sandbox has ended: delete its workspace volume, make its outbox read-only.
        Safe to repeat; a sandbox without volumes counts as done."""
        with self._locked():
            if self.image(sandbox_id, WORKSPACE).exists():
                self._let_go(self.mountpoint(sandbox_id, WORKSPACE))
                self.image(sandbox_id, WORKSPACE).unlink()
            outbox = self.mountpoint(sandbox_id, OUTBOX)
            if self.has(sandbox_id, OUTBOX) and self._is_mounted(outbox):
                self._remount_read_only(outbox)

    def unmount(self, sandbox_id: str) -> None:
        """Let go of both of a sandbox's mounts (a read comes back for the outbox)."""
        with self._locked():
            for kind in _KINDS:
                self._let_go(self.mountpoint(sandbox_id, kind))

    def settle(self, keep: Collection[str]) -> list[str]:
        """Unmount the volumes of every sandbox not in `keep` (those running, and those
        whose outbox a running sandbox mounts); the sandboxes let go of."""
        let_go: list[str] = []
        if not self.root.is_dir():
            return let_go
        for entry in sorted(self.root.iterdir()):
            if not valid_sandbox_id(entry.name) or entry.name in keep:
                continue
            if any(self._is_mounted(self.mountpoint(entry.name, k)) for k in _KINDS):
                with contextlib.suppress(SandboxError):  # busy: tried again next time
                    self.unmount(entry.name)
                    let_go.append(entry.name)
        return let_go

    def remove(self, sandbox_id: str) -> None:
        """Unmount both volumes and delete them (images and mount points); the sandbox's
        other files stay. A sandbox without volumes counts as done."""
        with self._locked():
            self._destroy(sandbox_id)

    def _destroy(self, sandbox_id: str) -> None:
        for kind in _KINDS:
            mountpoint = self.mountpoint(sandbox_id, kind)
            self._let_go(mountpoint)
            with contextlib.suppress(FileNotFoundError):
                self.image(sandbox_id, kind).unlink()
            shutil.rmtree(mountpoint, ignore_errors=True)
