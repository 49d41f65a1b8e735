"""Red team, inside a sandbox: try to change an earlier sandbox's outputs mounted at
/inputs/<id>, every way an unprivileged process could, and report how each attempt ended.

Stdlib only, run as uid 10001 by tests/security/test_input_mounts.py (on every rank of a
cluster too: names carry the rank). Usage: `python3 input_probe.py <input sandbox id>`.
The outputs were written by a sandbox of the same uid, so only the mount stands in the way.
The source left links for the probe to try: `up -> ..` and `root -> /`.
Prints one line `RESULT {json}`: attempt name -> errno name, or "SUCCEEDED".
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable

SOURCE = f"/inputs/{sys.argv[1]}"
MODEL = f"{SOURCE}/model.bin"
WORKSPACE = "/workspace"
RANK = os.environ.get("OMPI_COMM_WORLD_RANK", "0")
TAG = f"r{RANK}"

MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
attempts: dict[str, str] = {}


def _syscall(result: int) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def attempt(name: str, action: Callable[[], object]) -> None:
    try:
        action()
    except OSError as exc:
        attempts[name] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    else:
        attempts[name] = "SUCCEEDED"


def write_to(path: str, mode: str = "r+b") -> Callable[[], None]:
    def write() -> None:
        with open(path, mode) as handle:
            handle.write(b"tampered")
    return write


def through_proc_fd() -> None:
    descriptor = os.open(MODEL, os.O_RDONLY)
    try:
        write_to(f"/proc/self/fd/{descriptor}")()
    finally:
        os.close(descriptor)


def fchmod() -> None:
    descriptor = os.open(MODEL, os.O_RDONLY)
    try:
        os.fchmod(descriptor, 0o777)
    finally:
        os.close(descriptor)


def create_at() -> None:
    directory = os.open(SOURCE, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(os.open(f"planted-at-{TAG}", os.O_CREAT | os.O_WRONLY, 0o644,
                         dir_fd=directory))
    finally:
        os.close(directory)


def through_workspace_link() -> None:
    link = f"{WORKSPACE}/to-model-{TAG}"
    os.symlink(MODEL, link)
    write_to(link)()


def rename_in() -> None:
    mine = f"{WORKSPACE}/mine-{TAG}"
    with open(mine, "wb") as handle:
        handle.write(b"planted")
    os.rename(mine, f"{SOURCE}/planted-{TAG}")


def remount_command() -> None:
    done = subprocess.run(["mount", "-o", "remount,rw", SOURCE], capture_output=True,
                          check=False)
    if done.returncode != 0:
        raise OSError(errno.EPERM, done.stderr.decode(errors="replace"))


def unshare_then_remount() -> None:
    """A new user namespace would make us 'root' there; a read-only bind made by the engine
    stays locked read-only even then. The engine's seccomp profile should stop unshare."""
    _syscall(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS))
    _syscall(_libc.mount(None, SOURCE.encode(), None, MS_REMOUNT | MS_BIND, None))
    write_to(MODEL)()


def mount_options() -> str:
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            if fields[4] == SOURCE:
                return fields[5]
    return ""


def main() -> None:
    with open(MODEL, "rb") as handle:
        read = hashlib.sha256(handle.read()).hexdigest()
    options = mount_options()
    attempt("write", write_to(MODEL))
    attempt("append", write_to(MODEL, "ab"))
    attempt("truncate", lambda: os.truncate(MODEL, 0))
    attempt("create", write_to(f"{SOURCE}/planted-{TAG}", "xb"))
    attempt("create_at_directory_fd", create_at)
    attempt("mkdir", lambda: os.mkdir(f"{SOURCE}/dir-{TAG}"))
    attempt("mkfifo", lambda: os.mkfifo(f"{SOURCE}/fifo-{TAG}"))
    attempt("mknod_in_input", lambda: os.mknod(f"{SOURCE}/null-{TAG}",
                                               stat.S_IFCHR | 0o666, os.makedev(1, 3)))
    attempt("mknod_in_workspace", lambda: os.mknod(f"{WORKSPACE}/null-{TAG}",
                                                   stat.S_IFCHR | 0o666, os.makedev(1, 3)))
    attempt("unlink", lambda: os.unlink(MODEL))
    attempt("rmdir", lambda: os.rmdir(f"{SOURCE}/empty"))
    attempt("unlink_link", lambda: os.unlink(f"{SOURCE}/up"))
    attempt("rename", lambda: os.rename(MODEL, f"{SOURCE}/renamed-{TAG}"))
    attempt("rename_out_to_workspace", lambda: os.rename(MODEL, f"{WORKSPACE}/stolen-{TAG}"))
    attempt("rename_in_from_workspace", rename_in)
    attempt("chmod", lambda: os.chmod(MODEL, 0o777))
    attempt("chmod_root", lambda: os.chmod(SOURCE, 0o777))
    attempt("fchmod", fchmod)
    attempt("chown", lambda: os.chown(MODEL, os.getuid(), os.getgid()))
    attempt("utime", lambda: os.utime(MODEL, (0, 0)))
    attempt("setxattr", lambda: os.setxattr(MODEL, "user.planted", b"1"))
    attempt("hardlink_into_workspace", lambda: os.link(MODEL, f"{WORKSPACE}/hard-{TAG}"))
    attempt("hardlink_in_input", lambda: os.link(MODEL, f"{SOURCE}/hard-{TAG}"))
    attempt("symlink_in_input", lambda: os.symlink("/workspace", f"{SOURCE}/link-{TAG}"))
    attempt("write_through_workspace_symlink", through_workspace_link)
    attempt("write_through_proc_fd", through_proc_fd)
    attempt("write_through_link_up", write_to(f"{SOURCE}/up/planted-{TAG}", "xb"))
    attempt("write_through_link_root", write_to(f"{SOURCE}/root{MODEL}"))
    attempt("create_beside_inputs", write_to(f"/inputs/planted-{TAG}", "xb"))
    attempt("remount_rw", lambda: _syscall(_libc.mount(
        None, SOURCE.encode(), None, MS_REMOUNT | MS_BIND, None)))
    attempt("remount_rw_command", remount_command)
    attempt("bind_over", lambda: _syscall(_libc.mount(
        WORKSPACE.encode(), SOURCE.encode(), None, MS_BIND, None)))
    attempt("umount", lambda: _syscall(_libc.umount2(SOURCE.encode(), 0)))
    attempt("unshare_then_remount", unshare_then_remount)  # last: it may change namespaces
    sys.stdout.write("RESULT " + json.dumps({"rank": int(RANK), "read": read,
                                             "options": options,
                                             "attempts": attempts}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
