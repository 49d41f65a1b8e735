"""Projects' persistent workspaces: one ext4 filesystem image per project, loop-mounted on
this host, whose `workspace` directory is bind-mounted read-write at /workspace in every
sandbox of the project. The image's size is the project's quota: a sandbox that writes past
it gets ENOSPC inside its own filesystem, never on the host's.

Layout under `root`: `<name>/volume.ext4` (a sparse file), mounted `nosuid,nodev` at
`<name>/fs`; only `<name>/fs/workspace` (the sandbox user's, mode 0700) goes into containers,
so `lost+found` and the filesystem's root stay out of sight. A project's files were written
by earlier sandboxes: the host touches them only through directory descriptors, never
following a link. Who may write when (one writer at a time) is the console's business.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from sandbox.errors import ProjectVolumeError, SandboxError
from sandbox.spec import SANDBOX_GID, SANDBOX_UID, valid_sandbox_id
from sandbox.volumes import MIN_VOLUME_MB, LoopFilesystems

__all__ = [
    "MAX_QUOTA_MB",
    "MIN_QUOTA_MB",
    "InvalidProject",
    "ProjectExists",
    "ProjectFull",
    "ProjectNotFound",
    "ProjectVolumeError",
    "ProjectVolumes",
]

#: ext4 with its journal needs a few megabytes of its own; below this little is left.
MIN_QUOTA_MB = MIN_VOLUME_MB
#: 16 TiB: the most one sparse image is allowed to grow to.
MAX_QUOTA_MB = 16 * 1024 * 1024

_IMAGE = "volume.ext4"
_FS = "fs"
_WORKSPACE = "workspace"
_CHUNK = 1 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class InvalidProject(ProjectVolumeError):
    """A project name outside the safe alphabet, or a quota out of bounds."""

    status = 400


class ProjectExists(ProjectVolumeError):
    """`create` for a project that already has a volume."""

    status = 409


class ProjectNotFound(ProjectVolumeError):
    """The project has no volume."""

    status = 404


class ProjectFull(ProjectVolumeError):
    """The project's volume has no room left (its quota is used up)."""

    status = 507


def _full(name: str, exc: OSError) -> ProjectFull:
    return ProjectFull(f"the project {name} is full", detail=f"project {name}: {exc!r}")


def _is_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class ProjectVolumes(LoopFilesystems):
    """The volumes of every project, as loop-mounted ext4 images under `root` (the host's
    part is `sandbox.volumes.LoopFilesystems`, shared with sandboxes' own volumes).

    Every operation takes a lock file under `root`, so that two threads or processes never
    mount, fill or remove one volume at once. `remove` and `unmount` are safe to repeat."""

    error = ProjectVolumeError
    what = "project's volume"

    # -- paths -----------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        if not valid_sandbox_id(name):
            raise InvalidProject(f"invalid project name {name!r}")
        return self.root / name

    def image(self, name: str) -> Path:
        """The filesystem image holding the project's files."""
        return self._dir(name) / _IMAGE

    def mountpoint(self, name: str) -> Path:
        return self._dir(name) / _FS

    def _workspace_path(self, name: str) -> Path:
        return self.mountpoint(name) / _WORKSPACE

    # -- lifecycle -------------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        return self._dir(name).is_dir()

    def names(self) -> tuple[str, ...]:
        """Every project with a volume here, sorted."""
        if not self.root.is_dir():
            return ()
        return tuple(sorted(p.name for p in self.root.iterdir()
                            if valid_sandbox_id(p.name) and p.is_dir()))

    def create(self, name: str, quota_mb: int) -> None:
        """Make and mount an empty volume of `quota_mb` megabytes for a new project. Refuses
        an existing project; on any failure nothing made here is left behind."""
        directory = self._dir(name)
        if not isinstance(quota_mb, int) or isinstance(quota_mb, bool) \
                or not MIN_QUOTA_MB <= quota_mb <= MAX_QUOTA_MB:
            raise InvalidProject(
                f"a project's quota must be between {MIN_QUOTA_MB} and {MAX_QUOTA_MB} MB")
        with self._locked():
            try:
                directory.mkdir(mode=0o700)
            except FileExistsError as exc:
                raise ProjectExists(f"the project {name} already has a volume") from exc
            try:
                self._make_filesystem(directory / _IMAGE, quota_mb)
                self._ensure_mounted(name)
            except BaseException:
                with contextlib.suppress(SandboxError, OSError):
                    self._destroy(name)
                raise

    def workspace(self, name: str) -> Path:
        """The host directory bound at /workspace, its volume mounted first if it is not
        (after a reboot, or an `unmount`)."""
        with self._locked():
            return self._ensure_mounted(name)

    def usage(self, name: str) -> tuple[int, int]:
        """(bytes used, bytes the volume can hold) of the project's filesystem: the second is
        used plus what the sandbox user can still write, a little under the quota (ext4's
        own metadata)."""
        with self._locked():
            self._ensure_mounted(name)
            return self._capacity(self.mountpoint(name))

    def copy_in(self, name: str, source: Path) -> None:
        """Copy a staged tree of code into the workspace, replacing whatever has the same
        name there (a file, a directory, a link), handing it to the sandbox user. Raises
        `ProjectFull` when the volume has no room: the files copied so far stay."""
        with self._locked():
            workspace = self._ensure_mounted(name)
            try:
                source_fd = os.open(source, _DIR_FLAGS)
            except OSError as exc:
                raise ProjectVolumeError("The code to copy into the project is missing.",
                                         detail=f"copy into {name}: {exc!r}") from exc
            try:
                target_fd = os.open(workspace, _DIR_FLAGS)
                try:
                    _copy_directory(source_fd, target_fd, "")
                finally:
                    os.close(target_fd)
            except OSError as exc:
                if _is_full(exc):
                    raise _full(name, exc) from exc
                raise ProjectVolumeError(f"The code could not be copied into the project "
                                         f"{name}.", detail=f"copy into {name}: {exc!r}") from exc
            finally:
                os.close(source_fd)

    def unmount(self, name: str) -> None:
        """Unmount the project's volume, freeing its loop device once no sandbox holds it (it
        is mounted again when next needed); an unmounted or missing project counts as done."""
        with self._locked():
            mountpoint = self.mountpoint(name)
            if self._is_mounted(mountpoint):
                self._unmount(mountpoint)

    def remove(self, name: str) -> None:
        """Unmount the volume and delete it with every file in it; a missing project counts
        as done. The console removes a project no sandbox is using."""
        self._dir(name)
        with self._locked():
            self._destroy(name)

    # -- internals -------------------------------------------------------------------------

    def _destroy(self, name: str) -> None:
        directory = self._dir(name)
        mountpoint = self.mountpoint(name)
        if self._is_mounted(mountpoint):
            self._unmount(mountpoint)
        if self._is_mounted(mountpoint):  # never delete through a mounted volume
            raise ProjectVolumeError(f"The project {name}'s volume is still in use.",
                                     detail=f"{mountpoint} stays mounted")
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            raise ProjectVolumeError(f"The project {name}'s volume could not be deleted.",
                                     detail=f"{directory} remains")

    def _ensure_mounted(self, name: str) -> Path:
        directory = self._dir(name)
        image, mountpoint = directory / _IMAGE, self.mountpoint(name)
        if not directory.is_dir():
            raise ProjectNotFound(f"the project {name} has no volume")
        if not image.is_file() or image.is_symlink():
            raise ProjectVolumeError(f"The project {name}'s volume is missing.",
                                     detail=f"{image} is not a regular file")
        if not self._is_mounted(mountpoint):
            if self._attached(image):  # a second mount of one ext4 image would corrupt it
                raise ProjectVolumeError(
                    f"The project {name}'s volume is still in use by a sandbox that has not "
                    f"ended.", detail=f"{image} is attached to a loop device but not mounted "
                    f"at {mountpoint}")
            mountpoint.mkdir(mode=0o700, exist_ok=True)
            self._mount(image, mountpoint)
        if not self._backed_by(mountpoint, image):
            raise ProjectVolumeError(f"The project {name}'s volume is not the one mounted.",
                                     detail=f"{mountpoint} is not a loop mount of {image}")
        workspace = self._workspace_path(name)
        try:
            os.mkdir(workspace, 0o700)
            if os.geteuid() == 0:
                os.chown(workspace, SANDBOX_UID, SANDBOX_GID)
        except FileExistsError:
            pass
        except OSError as exc:
            if _is_full(exc):
                raise _full(name, exc) from exc
            raise
        if not stat.S_ISDIR(os.lstat(workspace).st_mode):
            raise ProjectVolumeError(f"The project {name}'s volume is damaged.",
                                     detail=f"{workspace} is not a directory")
        return workspace


# -- copying in: every step relative to a directory descriptor, never through a link ------


def _hand_over(descriptor: int) -> None:
    if os.geteuid() == 0:
        os.fchown(descriptor, SANDBOX_UID, SANDBOX_GID)


def _clear(name: str, parent_fd: int, *, keep_directory: bool) -> bool:
    """Remove what `name` is in the target unless it is a directory we may keep; whether
    a directory is left."""
    try:
        found = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(found.st_mode):
        if keep_directory:
            return True
        shutil.rmtree(name, dir_fd=parent_fd)
        return False
    os.unlink(name, dir_fd=parent_fd)
    return False


def _copy_directory(source_fd: int, target_fd: int, where: str) -> None:
    _hand_over(target_fd)
    for name in sorted(os.listdir(source_fd)):
        found = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
        if stat.S_ISDIR(found.st_mode):
            if not _clear(name, target_fd, keep_directory=True):
                os.mkdir(name, 0o755, dir_fd=target_fd)
            child_source = os.open(name, _DIR_FLAGS, dir_fd=source_fd)
            try:
                child_target = os.open(name, _DIR_FLAGS, dir_fd=target_fd)
                try:
                    _copy_directory(child_source, child_target, f"{where}{name}/")
                finally:
                    os.close(child_target)
            finally:
                os.close(child_source)
        elif stat.S_ISREG(found.st_mode):
            _clear(name, target_fd, keep_directory=False)
            _copy_file(name, source_fd, target_fd, stat.S_IMODE(found.st_mode))
        else:
            raise ProjectVolumeError("The staged code holds a link or a special file.",
                                     detail=f"{where}{name} is not a regular file")


def _copy_file(name: str, source_fd: int, target_fd: int, mode: int) -> None:
    reader = os.open(name, _READ_FLAGS, dir_fd=source_fd)
    try:
        # O_EXCL after clearing the name: a file made now, not one a sandbox left to reuse.
        writer = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=target_fd)
        open_ = True
        try:
            _hand_over(writer)
            os.fchmod(writer, (mode & 0o777) | 0o600)
            while chunk := os.read(reader, _CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(writer, view):]
            open_ = False
            os.close(writer)  # may be where ENOSPC shows (delayed allocation)
        except BaseException:
            if open_:
                os.close(writer)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=target_fd)  # no half-copied file
            raise
    finally:
        os.close(reader)

