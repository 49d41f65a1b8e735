"""Red-team probe run inside a Sealroom sandbox: tries every way out and reports as JSON lines.

Standard library only; runs as uid 10001 under Python 3.11. Usage:

    python3 egress_probe.py ['{"hosts4": [...], "tcp_port": 1234, ...}']

Every line on stdout is one attempt: {"probe", "target", "expect", "ok", "errno", "error",
"detail"}. `expect` is "blocked" (the attempt must fail), "required" (a property that must
hold), "allowed" (a control that must work, so a probe that can do nothing at all is noticed),
or "info". `ok` says whether the result matched. The last line is {"probe": "summary", ...};
the exit code is 1 if any result did not match. Every attempt is bounded by a short timeout.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

TIMEOUT_S = 1.5
OUTSIDE_V4 = ["8.8.8.8", "1.1.1.1", "169.254.169.254"]
OUTSIDE_V6 = ["2001:4860:4860::8888"]
DEFAULTS: dict[str, Any] = {
    "hosts4": ["127.0.0.1", "172.17.0.1"],
    "hosts6": ["::1"],
    "tcp_port": 22,
    "tcp6_port": 22,
    "udp_port": 53,
    "udp6_port": 53,
    "extra_tcp_ports": [22, 80, 443, 2375, 2376],
    "datasets": None,
    "host_pids": [],
    "abstract_sockets": [],
    "outside_v4": OUTSIDE_V4,
    "outside_v6": OUTSIDE_V6,
    "resolver_names": ["example.com", "pypi.org", "host.docker.internal"],
    # The runtime the sandbox runs on: "runc" (the host's kernel) or "gvisor".
    "runtime": "runc",
}
#: Errors meaning a packet reached a peer that answered: a breach for anything but loopback.
REACHED = {errno.ECONNREFUSED, errno.ECONNRESET}
WRITE_TARGETS = [
    "/",
    "/etc",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/bin",
    "/sbin",
    "/lib",
    "/opt",
    "/var",
    "/var/tmp",
    "/home",
    "/root",
    "/srv",
    "/mnt",
    "/media",
    "/run",
    "/boot",
    "/data",
]
#: Device nodes a sandbox is expected to have; anything else (disks, /dev/mem) is a breach.
#: Devices gVisor's kernel itself provides (emulated in user space, never the host's):
#: FUSE and a TUN device for its own network stack, which is off (`--network=none`).
GVISOR_DEV = {"fuse", "net"}
EXPECTED_DEV = {
    "console",
    "core",
    "fd",
    "full",
    "mqueue",
    "null",
    "ptmx",
    "pts",
    "random",
    "shm",
    "stderr",
    "stdin",
    "stdout",
    "tty",
    "urandom",
    "zero",
}
ENGINE_SOCKETS = [
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/docker/containerd/containerd.sock",
    "/run/podman/podman.sock",
    "/run/user/0/docker.sock",
]

_records: list[dict[str, Any]] = []


def emit(
    probe: str,
    target: str,
    expect: str,
    ok: bool,
    *,
    err: BaseException | None = None,
    detail: str = "",
) -> None:
    code = getattr(err, "errno", None) if err is not None else None
    record = {
        "probe": probe,
        "target": target,
        "expect": expect,
        "ok": bool(ok),
        "errno": code,
        "error": errno.errorcode.get(code, type(err).__name__)
        if err is not None and code
        else (type(err).__name__ if err is not None else ""),
        "detail": detail or (str(err) if err is not None else ""),
    }
    _records.append(record)
    print(json.dumps(record), flush=True)


def is_loopback(host: str) -> bool:
    return host.startswith("127.") or host == "::1"


def bounded(fn: Callable[[], Any], timeout_s: float) -> tuple[bool, Any]:
    """Run a call that has no timeout of its own (getaddrinfo) in a thread; (finished, result)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported, not raised
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return False, None
    if "error" in box:
        return True, box["error"]
    return True, box.get("value")


# --- network ----------------------------------------------------------------------------


def probe_tcp(family: int, host: str, port: int, probe: str) -> None:
    target = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        emit(probe, target, "blocked", True, err=exc, detail="cannot create socket")
        return
    sock.settimeout(TIMEOUT_S)
    try:
        sock.connect((host, port))
    except TimeoutError as exc:
        emit(probe, target, "blocked", True, err=exc, detail="timed out")
    except OSError as exc:
        reached = exc.errno in REACHED and not is_loopback(host)
        emit(
            probe,
            target,
            "blocked",
            not reached,
            err=exc,
            detail=("a peer answered (RST): reachable. " if reached else "") + str(exc),
        )
    else:
        emit(probe, target, "blocked", False, detail="connected")
    finally:
        sock.close()


def probe_udp(family: int, host: str, port: int, probe: str) -> None:
    target = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        emit(probe, target, "blocked", True, err=exc, detail="cannot create socket")
        return
    sock.settimeout(0.5)
    try:
        sock.connect((host, port))
        sock.send(b"sealroom-egress-probe")
        # A connected UDP socket sees the peer's ICMP port-unreachable as ECONNREFUSED.
        sock.recv(512)
    except TimeoutError:
        # Sent, nothing came back: only the host side can tell whether it arrived.
        local = is_loopback(host)
        emit(
            probe,
            target,
            "blocked",
            local,
            detail="sent to the sandbox's own loopback" if local else "sent; no answer",
        )
    except OSError as exc:
        reached = exc.errno in REACHED and not is_loopback(host)
        emit(probe, target, "blocked", not reached, err=exc)
    else:
        emit(probe, target, "blocked", is_loopback(host), detail="got an answer")
    finally:
        sock.close()


def dns_query(name: str) -> bytes:
    header = struct.pack("!HHHHHH", 0x5EA1, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return header + labels + struct.pack("!HH", 1, 1)


def probe_dns_udp(server: str) -> None:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    target = f"{server}:53 udp"
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT_S)
    try:
        sock.connect((server, 53))
        sock.send(dns_query("example.com"))
        answer = sock.recv(512)
    except OSError as exc:
        # Any error (unreachable, refused by our own loopback, timeout) means no answer.
        emit("dns-udp", target, "blocked", True, err=exc)
    else:
        emit("dns-udp", target, "blocked", False, detail=f"answer of {len(answer)} bytes")
    finally:
        sock.close()


def probe_dns_tcp(server: str) -> None:
    probe_tcp(socket.AF_INET6 if ":" in server else socket.AF_INET, server, 53, "dns-tcp")


def probe_resolver(names: list[str]) -> None:
    for name in names:
        finished, result = bounded(lambda n=name: socket.getaddrinfo(n, 443), 4 * TIMEOUT_S)
        if not finished:
            emit("dns-resolver", name, "blocked", True, detail="no answer within the timeout")
        elif isinstance(result, BaseException):
            emit("dns-resolver", name, "blocked", True, err=result)
        else:
            addresses = sorted({r[4][0] for r in result})
            emit("dns-resolver", name, "blocked", False, detail=f"resolved to {addresses}")


def resolv_conf_servers() -> list[str]:
    try:
        with open("/etc/resolv.conf") as handle:
            return [line.split()[1] for line in handle if line.startswith("nameserver ")]
    except OSError:
        return []


def probe_icmp(hosts: list[str]) -> None:
    try:
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    except OSError as exc:
        emit("icmp-raw", "socket(AF_INET, SOCK_RAW)", "blocked", True, err=exc)
    else:
        raw.close()
        emit("icmp-raw", "socket(AF_INET, SOCK_RAW)", "blocked", False, detail="created")
    try:
        packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    except OSError as exc:
        emit("packet-raw", "socket(AF_PACKET, SOCK_RAW)", "blocked", True, err=exc)
    else:
        packet.close()
        emit("packet-raw", "socket(AF_PACKET, SOCK_RAW)", "blocked", False, detail="created")
    echo = struct.pack("!BBHHH", 8, 0, 0, 0x5EA1, 1) + b"sealroom"
    for host in hosts:
        if is_loopback(host):
            continue
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        except OSError as exc:
            emit("icmp-dgram", host, "blocked", True, err=exc, detail="cannot create socket")
            continue
        sock.settimeout(TIMEOUT_S)
        try:
            sock.sendto(echo, (host, 0))
            reply = sock.recv(512)
        except OSError as exc:
            emit("icmp-dgram", host, "blocked", True, err=exc)
        else:
            emit("icmp-dgram", host, "blocked", False, detail=f"echo reply, {len(reply)} bytes")
        finally:
            sock.close()


def probe_interfaces() -> None:
    names = sorted(name for _, name in socket.if_nameindex())
    emit("interfaces", "if_nameindex", "required", names == ["lo"], detail=f"{names}")
    try:
        with open("/proc/net/route") as handle:
            routes = handle.read().splitlines()[1:]
    except OSError as exc:
        emit("routes", "/proc/net/route", "blocked", True, err=exc)
    else:
        emit("routes", "/proc/net/route", "required", not routes, detail=f"{len(routes)} routes")


def probe_engine_sockets(abstract: list[str]) -> None:
    for path in ENGINE_SOCKETS:
        exists = os.path.lexists(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_S)
        try:
            sock.connect(path)
        except OSError as exc:
            emit(
                "engine-socket",
                path,
                "blocked",
                not exists,
                err=exc,
                detail=("exists; " if exists else "absent; ") + str(exc),
            )
        else:
            emit("engine-socket", path, "blocked", False, detail="connected")
        finally:
            sock.close()
    # Abstract unix sockets live in the network namespace: the host's must be out of reach.
    for name in abstract:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_S)
        try:
            sock.connect("\0" + name.lstrip("@"))
        except OSError as exc:
            emit("abstract-socket", name, "blocked", True, err=exc)
        else:
            emit("abstract-socket", name, "blocked", False, detail="connected")
        finally:
            sock.close()


# --- filesystem -------------------------------------------------------------------------


def try_write(directory: str, expect: str) -> None:
    path = os.path.join(directory, f".sealroom-probe-{os.getpid()}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        emit("write", directory, expect, expect == "blocked", err=exc)
        return
    os.close(fd)
    os.unlink(path)
    emit("write", directory, expect, expect == "allowed", detail="created a file")


def probe_filesystem(datasets: list[str]) -> None:
    # In an MPI cluster only rank 0 writes the one outbox; the other ranks must not.
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    for directory in ("/workspace", "/outbox", "/tmp"):
        try_write(directory, "blocked" if directory == "/outbox" and rank > 0 else "allowed")
    for directory in WRITE_TARGETS:
        if os.path.isdir(directory):
            try_write(directory, "blocked")
    for name in datasets:
        root = f"/data/{name}"
        try_write(root, "blocked")
        for entry in sorted(os.listdir(root))[:3]:
            path = os.path.join(root, entry)
            if not os.path.isfile(path):
                continue
            try:
                with open(path, "ab"):
                    pass
            except OSError as exc:
                emit("append", path, "blocked", True, err=exc)
            else:
                emit("append", path, "blocked", False, detail="opened for append")
            try:
                os.chmod(path, 0o777)
            except OSError as exc:
                emit("chmod", path, "blocked", True, err=exc)
            else:
                emit("chmod", path, "blocked", False, detail="mode changed")
    for path, data in (
        ("/proc/sys/kernel/hostname", b"escaped"),
        ("/proc/sysrq-trigger", b"h"),
        ("/sys/kernel/mm/transparent_hugepage/enabled", b"never"),
        ("/proc/sys/kernel/core_pattern", b"|/tmp/x"),
    ):
        try:
            with open(path, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            emit("kernel-write", path, "blocked", True, err=exc)
        else:
            emit("kernel-write", path, "blocked", False, detail="written")
    try:
        os.mkdir("/sys/fs/cgroup/memory/sealroom-probe")
    except OSError as exc:
        emit("cgroup-write", "/sys/fs/cgroup/memory", "blocked", True, err=exc)
    else:
        os.rmdir("/sys/fs/cgroup/memory/sealroom-probe")
        emit("cgroup-write", "/sys/fs/cgroup/memory", "blocked", False, detail="created cgroup")


def probe_kernel_reads(runtime: str = "runc") -> None:
    try:
        with open("/proc/kcore", "rb") as handle:
            data = handle.read(64)
    except OSError as exc:
        emit("kernel-read", "/proc/kcore", "blocked", True, err=exc)
    else:
        # Docker masks it with /dev/null: an empty read is harmless.
        emit("kernel-read", "/proc/kcore", "blocked", data == b"", detail=f"read {len(data)} bytes")
    try:
        with open("/proc/kallsyms") as handle:
            lines = [handle.readline() for _ in range(50)]
        leaked = [ln for ln in lines if ln and not ln.startswith("0000000000000000")]
    except OSError as exc:
        emit("kernel-read", "/proc/kallsyms", "blocked", True, err=exc)
    else:
        emit(
            "kernel-read",
            "/proc/kallsyms",
            "blocked",
            not leaked,
            detail="addresses hidden" if not leaked else "kernel addresses visible",
        )
    try:
        entries = os.listdir("/sys/kernel")
    except OSError as exc:
        emit("kernel-read", "/sys/kernel", "info", True, err=exc)
    else:
        emit(
            "kernel-read",
            "/sys/kernel",
            "info",
            True,
            detail=f"listable ({len(entries)} entries), read-only sysfs",
        )
    expected = EXPECTED_DEV | (GVISOR_DEV if runtime == "gvisor" else set())
    unexpected = sorted(set(os.listdir("/dev")) - expected)
    block = [d for d in unexpected if stat.S_ISBLK(os.stat(f"/dev/{d}").st_mode)]
    emit(
        "devices",
        "/dev",
        "required",
        not unexpected,
        detail=f"unexpected: {unexpected}, block devices: {block}",
    )


# --- privilege ----------------------------------------------------------------------------


def libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def syscall_result(name: str, target: str, call: Callable[[], int]) -> None:
    result = call()
    if result == -1:
        code = ctypes.get_errno()
        emit(name, target, "blocked", True, err=OSError(code, os.strerror(code)))
    else:
        emit(name, target, "blocked", False, detail=f"returned {result}")


def probe_privileges(host_pids: list[int], runtime: str = "runc") -> None:
    with open("/proc/self/status") as handle:
        status = {k: v.strip() for k, v in (line.split(":", 1) for line in handle if ":" in line)}
    c = libc()
    emit(
        "identity",
        "uid",
        "required",
        os.getuid() == 10001 and os.geteuid() == 10001,
        detail=f"uid={os.getuid()} euid={os.geteuid()} gid={os.getgid()}",
    )
    for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        value = status.get(key)
        if value is None and key == "CapAmb":
            # gVisor does not report the ambient set; it is a subset of the permitted one.
            emit("capabilities", key, "required", int(status["CapPrm"], 16) == 0,
                 detail="not reported; ambient is within CapPrm " + status["CapPrm"])
            continue
        emit("capabilities", key, "required", value is not None and int(value, 16) == 0,
             detail=str(value))
    pr_get_no_new_privs, pr_get_seccomp = 39, 21
    no_new_privs = c.prctl(pr_get_no_new_privs, 0, 0, 0, 0)
    emit(
        "no-new-privs",
        "NoNewPrivs",
        "required",
        no_new_privs == 1 and status.get("NoNewPrivs", "1") == "1",
        detail=f"prctl {no_new_privs}, /proc {status.get('NoNewPrivs', 'not reported')}",
    )
    mode = status.get("Seccomp", "not reported")
    if runtime == "gvisor":
        # Docker's seccomp profile is not loaded inside gVisor (runsc without --oci-seccomp):
        # gVisor's kernel is itself what answers every system call, and is filtered on the host.
        emit("seccomp", "Seccomp", "info", True,
             detail=f"mode {mode} inside gVisor (prctl {c.prctl(pr_get_seccomp, 0, 0, 0, 0)})")
    else:
        emit("seccomp", "Seccomp", "required", mode == "2", detail=f"mode {mode} (2 = filter)")

    for name, call in (
        ("setuid", lambda: os.setuid(0)),
        ("setgid", lambda: os.setgid(0)),
        ("setgroups", lambda: os.setgroups([0])),
        ("chroot", lambda: os.chroot("/tmp")),
        ("mknod", lambda: os.mknod("/tmp/sealroom-mem", 0o600 | stat.S_IFCHR, os.makedev(1, 1))),
    ):
        target = "uid/gid 0" if name.startswith("set") else "/tmp"
        try:
            call()
        except OSError as exc:
            emit(name, target, "blocked", True, err=exc)
        else:
            if name == "mknod" and runtime == "gvisor":
                # gVisor lets the node be made without CAP_MKNOD; what counts is that no
                # device is behind it (gVisor's kernel has no /dev/mem, nor any host device).
                probe_device_node("/tmp/sealroom-mem")
                continue
            emit(name, target, "blocked", False, detail="succeeded")
    probe_setuid_binaries()

    c.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
    ]
    os.makedirs("/tmp/sealroom-mnt", exist_ok=True)
    syscall_result(
        "mount",
        "tmpfs on /tmp/sealroom-mnt",
        lambda: c.mount(b"none", b"/tmp/sealroom-mnt", b"tmpfs", 0, None),
    )
    syscall_result(
        "mount",
        "proc on /tmp/sealroom-mnt",
        lambda: c.mount(b"proc", b"/tmp/sealroom-mnt", b"proc", 0, None),
    )
    clone_newuser, clone_newns, clone_newnet = 0x10000000, 0x00020000, 0x40000000
    for label, flags in (
        ("CLONE_NEWUSER", clone_newuser),
        ("CLONE_NEWNS", clone_newns),
        ("CLONE_NEWNET", clone_newnet),
    ):
        # In a child: a successful unshare must not change this probe process.
        pid = os.fork()
        if pid == 0:
            rc = c.unshare(flags)
            os._exit(0 if rc == 0 else min(ctypes.get_errno(), 255) or 255)
        _, wait_status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(wait_status)
        if code == 0 and runtime == "gvisor":
            # A namespace of gVisor's kernel, not the host's: Docker's seccomp profile, which
            # refuses unshare under runc, is not loaded inside gVisor (runsc --oci-seccomp).
            emit("unshare", label, "info", True, detail="succeeded inside gVisor's kernel")
        elif code == 0:
            emit("unshare", label, "blocked", False, detail="succeeded")
        else:
            emit("unshare", label, "blocked", True, err=OSError(code, os.strerror(code)))

    c.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    c.ptrace.restype = ctypes.c_long
    ptrace_seize = 0x4206
    for pid in host_pids:
        # Host processes are outside the pid namespace: the pid must not even exist here.
        syscall_result(
            "ptrace", f"host pid {pid}", lambda p=pid: c.ptrace(ptrace_seize, p, None, None)
        )
    # Same uid, inside the sandbox: the kernel allows it; nothing is gained (no caps, one uid).
    pid = os.fork()
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    try:
        rc = c.ptrace(ptrace_seize, pid, None, None)
        emit(
            "ptrace",
            "own child (same uid, in sandbox)",
            "info",
            True,
            detail="allowed" if rc == 0 else os.strerror(ctypes.get_errno()),
        )
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    visible = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    foreign = []
    for pid in visible:
        try:
            if os.stat(f"/proc/{pid}").st_uid != 10001:
                foreign.append(pid)
        except OSError:
            continue
    emit(
        "processes",
        "/proc",
        "required",
        not foreign,
        detail=f"{len(visible)} visible, not ours: {foreign}",
    )


def probe_device_node(path: str) -> None:
    try:
        with open(path, "rb") as handle:
            data = handle.read(16)
    except OSError as exc:
        emit("mknod", "/tmp", "blocked", True, err=exc, detail=f"made inside gVisor; open: {exc}")
    else:
        emit("mknod", "/tmp", "blocked", False, detail=f"made and read {len(data)} bytes")


def probe_setuid_binaries() -> None:
    """Run each setuid binary; with no-new-privileges its effective uid must stay 10001."""
    found = []
    for directory in (
        "/usr/bin",
        "/usr/sbin",
        "/bin",
        "/sbin",
        "/usr/lib/openssh",
        "/usr/lib/dbus-1.0",
    ):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            try:
                mode = os.stat(path).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                found.append(os.path.realpath(path))
    if not found:
        emit("setuid-exec", "setuid binaries", "info", True, detail="none in the image")
    for path in sorted(set(found))[:12]:
        try:
            child = subprocess.Popen(
                [path], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except OSError as exc:
            emit("setuid-exec", path, "blocked", True, err=exc)
            continue
        uids = ""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{child.pid}/status") as handle:
                    fields = dict(line.split(":", 1) for line in handle if ":" in line)
            except OSError:
                break
            # Wait until the exec has happened; a zombie keeps its name and ids.
            if fields["Name"].strip() == os.path.basename(path)[:15]:
                uids = fields["Uid"].split()[1] + "/" + fields["Gid"].split()[1]
                break
            time.sleep(0.02)
        child.kill()
        child.communicate(timeout=5)
        if not uids:
            emit("setuid-exec", path, "blocked", True, detail="did not run")
        else:
            euid, egid = uids.split("/")
            emit(
                "setuid-exec",
                path,
                "blocked",
                euid == "10001" and egid == "10001",
                detail=f"effective uid/gid {uids}",
            )


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    config = dict(DEFAULTS)
    if len(argv) > 1:
        config.update(json.loads(argv[1]))
    datasets = config["datasets"]
    if datasets is None:
        datasets = sorted(os.listdir("/data")) if os.path.isdir("/data") else []
    started = time.monotonic()

    outside_v4 = list(config["outside_v4"])
    hosts4 = list(dict.fromkeys([*config["hosts4"], *outside_v4]))
    hosts6 = list(dict.fromkeys([*config["hosts6"], *config["outside_v6"]]))
    for host in hosts4:
        probe_tcp(socket.AF_INET, host, int(config["tcp_port"]), "tcp4")
        probe_udp(socket.AF_INET, host, int(config["udp_port"]), "udp4")
    for host in outside_v4 + [h for h in config["hosts4"] if not is_loopback(h)]:
        for port in config["extra_tcp_ports"]:
            probe_tcp(socket.AF_INET, host, int(port), "tcp4")
    probe_tcp(socket.AF_INET, "169.254.169.254", 80, "metadata")
    for host in hosts6:
        probe_tcp(socket.AF_INET6, host, int(config["tcp6_port"]), "tcp6")
        probe_udp(socket.AF_INET6, host, int(config["udp6_port"]), "udp6")
    probe_resolver(list(config["resolver_names"]))
    for server in dict.fromkeys([*outside_v4[:1], "127.0.0.11", *resolv_conf_servers()]):
        probe_dns_udp(server)
        probe_dns_tcp(server)
    probe_icmp(hosts4)
    probe_interfaces()
    probe_engine_sockets(list(config["abstract_sockets"]))
    probe_filesystem(list(datasets))
    probe_kernel_reads(str(config["runtime"]))
    probe_privileges([int(p) for p in config["host_pids"]], str(config["runtime"]))

    failures = [r for r in _records if not r["ok"]]
    summary = {
        "probe": "summary",
        "attempts": len(_records),
        "failures": len(failures),
        "seconds": round(time.monotonic() - started, 2),
        "kernel": os.uname().release,  # which kernel answered: the host's, or gVisor's
    }
    print(json.dumps(summary), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
