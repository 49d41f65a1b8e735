"""Red team: from inside a real hardened sandbox, try every way out and every way up.

The probe (probes/egress_probe.py, stdlib only) runs as uid 10001 in a sandbox made by
DockerBackend; the host side listens on TCP and UDP and checks that nothing arrived. The
suite runs under each sandbox runtime (`sandbox_runtime`: runc, then gVisor): the probe runs
once per runtime and every assertion reads that one run.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shlex
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.backend import LABEL_INSTALLATION, LABEL_OWNER, LABEL_SANDBOX, RunState
from sandbox.docker_backend import DockerBackend
from sandbox.hardening import ENGINE_RUNTIMES
from sandbox.spec import SANDBOX_UID, DatasetMount, Limits, Runtime, SandboxSpec
from sandbox.storage import LocalStorage
from tests.engine_fixtures import GVISOR_KERNEL

pytestmark = pytest.mark.docker

PROBE = Path(__file__).parent / "probes" / "egress_probe.py"
#: One installation id per test session, so parallel runs on one engine never collide.
INSTALLATION = f"test-egress-{uuid.uuid4().hex[:12]}"
DEFAULT_BRIDGE_GATEWAY = "172.17.0.1"




def _remove_labelled(client: docker.DockerClient) -> None:
    label = f"{LABEL_INSTALLATION}={INSTALLATION}"
    for container in client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)






# --- the host side ----------------------------------------------------------------------


def host_addresses() -> tuple[list[str], list[str]]:
    """Every IPv4 and global IPv6 address of the host, its default gateways and docker0."""
    v4: list[str] = ["127.0.0.1", DEFAULT_BRIDGE_GATEWAY]
    v6: list[str] = ["::1"]
    if shutil.which("ip"):
        links = json.loads(
            subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
        )
        for link in links:
            for addr in link.get("addr_info", []):
                if addr.get("family") == "inet":
                    v4.append(addr["local"])
                elif addr.get("family") == "inet6" and addr.get("scope") == "global":
                    v6.append(addr["local"])
        for family, bucket in (("-4", v4), ("-6", v6)):
            routes = json.loads(
                subprocess.run(
                    ["ip", "-j", family, "route"], capture_output=True, text=True, check=True
                ).stdout
                or "[]"
            )
            bucket.extend(r["gateway"] for r in routes if r.get("gateway"))
    else:
        words = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
        v4.extend(w for w in words if ":" not in w)
        v6.extend(w for w in words if ":" in w and not w.startswith("fe80"))
    return list(dict.fromkeys(v4)), list(dict.fromkeys(v6))


def host_abstract_sockets(limit: int = 20) -> list[str]:
    with open("/proc/net/unix") as handle:
        names = {
            line.split()[-1]
            for line in handle.readlines()[1:]
            if line.split()[-1:] and line.split()[-1].startswith("@")
        }
    return sorted(names)[:limit]


@dataclass
class HostListeners:
    """Sockets on the host that must see nothing from the sandbox."""

    tcp4: socket.socket
    udp4: socket.socket
    tcp6: socket.socket | None
    udp6: socket.socket | None

    def ports(self) -> dict[str, int]:
        return {
            "tcp_port": self.tcp4.getsockname()[1],
            "udp_port": self.udp4.getsockname()[1],
            "tcp6_port": self.tcp6.getsockname()[1] if self.tcp6 else 9,
            "udp6_port": self.udp6.getsockname()[1] if self.udp6 else 9,
        }

    def accepted(self) -> list[str]:
        """Connections or datagrams that arrived (non-blocking: the kernel queued them)."""
        seen = []
        for sock in (self.tcp4, self.tcp6):
            if sock is None:
                continue
            sock.setblocking(False)
            while True:
                try:
                    conn, peer = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                seen.append(f"tcp from {peer}")
        for sock in (self.udp4, self.udp6):
            if sock is None:
                continue
            sock.setblocking(False)
            while True:
                try:
                    data, peer = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                seen.append(f"udp {data[:32]!r} from {peer}")
        return seen


@pytest.fixture
def listeners() -> Iterator[HostListeners]:
    with _open_listeners() as found:
        yield found


@contextmanager
def _open_listeners() -> Iterator[HostListeners]:
    tcp4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp4.bind(("0.0.0.0", 0))
    tcp4.listen(64)
    udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp4.bind(("0.0.0.0", 0))
    tcp6 = udp6 = None
    if socket.has_ipv6:
        try:
            tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            tcp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            tcp6.bind(("::", 0))
            tcp6.listen(64)
            udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            udp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            udp6.bind(("::", 0))
        except OSError:
            tcp6 = udp6 = None
    found = HostListeners(tcp4, udp4, tcp6, udp6)
    try:
        _prove_listeners_work(found)
        yield found
    finally:
        for sock in (tcp4, udp4, tcp6, udp6):
            if sock is not None:
                sock.close()


def _prove_listeners_work(found: HostListeners) -> None:
    """A control: the host itself can reach the listeners, so 'nothing arrived' means something."""
    ports = found.ports()
    with socket.create_connection(("127.0.0.1", ports["tcp_port"]), timeout=2):
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"control", ("127.0.0.1", ports["udp_port"]))
    time.sleep(0.1)
    assert len(found.accepted()) == 2, "host listeners do not work; the test would prove nothing"


# --- running the probe ------------------------------------------------------------------


@pytest.fixture
def sandbox_dirs(tmp_path: Path) -> tuple[LocalStorage, str, Path]:
    return _sandbox_dirs(tmp_path)


def _sandbox_dirs(tmp_path: Path) -> tuple[LocalStorage, str, Path]:
    storage, sandbox_id = LocalStorage(tmp_path / "sandboxes"), f"egress-{uuid.uuid4().hex[:8]}"
    storage.create(sandbox_id)
    workspace, dataset = storage.workspace(sandbox_id), tmp_path / "demo"
    dataset.mkdir()
    (dataset / "train.csv").write_text("x,y\n1,2\n")
    dataset.chmod(0o755)
    (dataset / "train.csv").chmod(0o644)
    shutil.copy(PROBE, workspace / "egress_probe.py")
    storage.seal_staging(sandbox_id)
    return storage, sandbox_id, dataset


def _records(logs: bytes) -> list[dict[str, Any]]:
    records = []
    for line in logs.decode(errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def _config(listeners: HostListeners, runtime: Runtime = Runtime.RUNC) -> dict[str, Any]:
    hosts4, hosts6 = host_addresses()
    return {
        "runtime": str(runtime),
        **listeners.ports(),
        "hosts4": hosts4,
        "hosts6": hosts6,
        "datasets": ["demo"],
        "host_pids": sorted({os.getpid(), os.getppid()}),
        "abstract_sockets": host_abstract_sockets(),
    }


def _wait_exited(poll: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        status = poll()
        if status.state is not RunState.RUNNING and status.state is not RunState.CREATED:
            return status
        assert time.monotonic() < deadline, "the probe did not finish in time"
        time.sleep(0.2)


@dataclass
class ProbeRun:
    """One run of the probe in a hardened sandbox: what it reported, what it was told, how it
    exited, the engine's runtime of its container, and the host listeners it aimed at."""

    records: list[dict[str, Any]]
    config: dict[str, Any]
    exit_code: int
    engine_runtime: str
    listeners: HostListeners


@pytest.fixture(scope="module", params=["sandbox", "attack"])
def probe_image(request: pytest.FixtureRequest, python_image: str) -> str:
    """The sandbox image, and the attack image the gate's model-risk sandbox runs (it runs the
    engineer's model code, so it is attacked from inside like any sandbox)."""
    if request.param == "sandbox":
        return python_image
    return str(request.getfixturevalue("sacroml_image").tag)


@pytest.fixture(scope="module")
def probe_run(
    docker_client: docker.DockerClient,
    probe_image: str,
    sandbox_runtime: Runtime,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProbeRun]:
    """The probe, once per runtime and image, read by every assertion below."""
    storage, sandbox_id, dataset = _sandbox_dirs(tmp_path_factory.mktemp("egress"))
    with _open_listeners() as listeners:
        config = _config(listeners, sandbox_runtime)
        backend = DockerBackend(installation=INSTALLATION, storage=storage)
        spec = SandboxSpec(
            sandbox_id=sandbox_id,
            owner="redteam",
            image=probe_image,
            command=("python3", "/workspace/egress_probe.py", json.dumps(config)),
            datasets=(DatasetMount("demo", dataset),),
            limits=Limits(cpus=1, memory_mb=256, pids=64, timeout_s=120, tmp_mb=16),
            runtime=sandbox_runtime,
        )
        handle = backend.create(spec)
        try:
            (member,) = handle["members"]
            attrs = docker_client.api.inspect_container(member["container"])
            backend.start(handle)  # its self-check passes for the runtime asked
            status = _wait_exited(lambda: backend.poll(handle), 300)
            records = _records(backend.logs(handle))
            yield ProbeRun(records, config,
                           int(status.exit_code if status.exit_code is not None else -1),
                           str(attrs["HostConfig"]["Runtime"]), listeners)
        finally:
            backend.remove(handle)


# --- the assertions ----------------------------------------------------------------------


def test_the_probe_ran_on_the_runtime_asked(probe_run: ProbeRun,
                                            sandbox_runtime: Runtime) -> None:
    assert probe_run.engine_runtime == ENGINE_RUNTIMES[sandbox_runtime]
    summary = probe_run.records[-1]
    assert summary["probe"] == "summary", probe_run.records[-5:]
    if sandbox_runtime is Runtime.GVISOR:
        assert summary["kernel"] == GVISOR_KERNEL
    else:
        assert summary["kernel"] == os.uname().release  # the host's own kernel


def test_no_attempt_got_out(probe_run: ProbeRun) -> None:
    records, exit_code = probe_run.records, probe_run.exit_code
    assert records and records[-1]["probe"] == "summary", records[-5:]
    attempts = records[:-1]
    failures = [r for r in attempts if not r["ok"]]
    assert failures == [], json.dumps(failures, indent=1)
    assert exit_code == 0
    assert probe_run.listeners.accepted() == []


def test_every_kind_of_attempt_was_made(probe_run: ProbeRun) -> None:
    records, config = probe_run.records, probe_run.config
    made = {(r["probe"], r["target"]) for r in records[:-1]}
    kinds = {r["probe"] for r in records[:-1]}
    assert {
        "tcp4",
        "udp4",
        "tcp6",
        "udp6",
        "metadata",
        "dns-resolver",
        "dns-udp",
        "dns-tcp",
        "icmp-raw",
        "packet-raw",
        "icmp-dgram",
        "interfaces",
        "routes",
        "engine-socket",
        "write",
        "append",
        "kernel-write",
        "cgroup-write",
        "kernel-read",
        "devices",
        "identity",
        "capabilities",
        "no-new-privs",
        "seccomp",
        "setuid",
        "setgid",
        "setgroups",
        "chroot",
        "mknod",
        "setuid-exec",
        "mount",
        "unshare",
        "ptrace",
        "processes",
    } <= kinds
    for host in config["hosts4"]:
        assert ("tcp4", f"{host}:{config['tcp_port']}") in made, host
        assert ("udp4", f"{host}:{config['udp_port']}") in made, host
    for host in config["hosts6"]:
        assert ("tcp6", f"[{host}]:{config['tcp6_port']}") in made, host
    for target in ("[2001:4860:4860::8888]", "8.8.8.8", "1.1.1.1"):
        assert any(t.startswith(target) for _, t in made), target
    assert ("metadata", "169.254.169.254:80") in made
    assert ("dns-resolver", "example.com") in made
    assert ("dns-udp", "8.8.8.8:53 udp") in made
    assert ("dns-udp", "127.0.0.11:53 udp") in made
    assert ("engine-socket", "/var/run/docker.sock") in made
    assert ("engine-socket", "/run/docker.sock") in made
    for directory in ("/", "/etc", "/usr", "/opt", "/var", "/home", "/data/demo"):
        assert ("write", directory) in made, directory
    for directory in ("/workspace", "/outbox", "/tmp"):
        assert ("write", directory) in made, directory


def test_failure_modes_are_the_expected_ones(probe_run: ProbeRun,
                                            sandbox_runtime: Runtime) -> None:
    """Not just "failed": failed for the right reason (no route, read-only, no privilege).
    Under gVisor its own kernel answers: no route is EHOSTUNREACH where Linux says
    ENETUNREACH, a write into a root-owned read-only directory is EACCES, and unshare succeeds
    inside gVisor's kernel (the probe records it as such: Docker's seccomp profile, which
    refuses it under runc, is not loaded inside gVisor)."""
    records, config = probe_run.records, probe_run.config
    attempts = records[:-1]
    gvisor = sandbox_runtime is Runtime.GVISOR
    no_route = {"ENETUNREACH", "EHOSTUNREACH"} if gvisor else {"ENETUNREACH"}

    def errors(probe: str, target_prefix: str = "") -> set[str]:
        return {
            r["error"]
            for r in attempts
            if r["probe"] == probe and r["target"].startswith(target_prefix)
        }

    for host in config["hosts4"]:
        if not host.startswith("127."):
            assert errors("tcp4", f"{host}:") <= no_route, host
            assert errors("tcp4", f"{host}:"), host
    assert errors("tcp4", "127.0.0.1:") == {"ECONNREFUSED"}  # the sandbox's own loopback
    assert errors("metadata") <= no_route and errors("metadata")
    assert errors("icmp-raw") == {"EPERM"} and errors("packet-raw") == {"EPERM"}
    assert errors("engine-socket") == {"ENOENT"}
    # gVisor checks the directory's permissions before the mount's read-only flag; that the
    # mounts are read-only the container's self-check reads from the engine (assert_hardened).
    read_only = ({"EROFS"}, {"EACCES"}) if gvisor else ({"EROFS"},)
    assert errors("write", "/data/demo") in read_only
    assert errors("write", "/etc") in read_only
    assert errors("mount") == {"EPERM"}
    if gvisor:
        assert all(r["expect"] == "info" or r["error"] == "EPERM"
                   for r in attempts if r["probe"] == "unshare")
    else:
        assert errors("unshare") == {"EPERM"}
    assert errors("setuid") == {"EPERM"}
    assert errors("ptrace", "host pid") == {"ESRCH"}
    assert {r["detail"] for r in attempts if r["probe"] == "interfaces"} == {"['lo']"}
    setuid_runs = [r for r in attempts if r["probe"] == "setuid-exec"]
    assert all("10001/10001" in r["detail"] for r in setuid_runs if r["detail"] != "did not run")


def test_the_probe_does_detect_a_way_out(
    docker_client: docker.DockerClient,
    python_image: str,
    listeners: HostListeners,
    sandbox_dirs: tuple[LocalStorage, str, Path],
) -> None:
    """A control: the same probe in an unhardened container on the default bridge reports the
    host listener as reachable, and the listener sees it. A probe that passes everything
    everywhere would prove nothing."""
    storage, sandbox_id, _ = sandbox_dirs
    workspace = storage.workspace(sandbox_id)
    networks = {n.name for n in docker_client.networks.list()}
    if "bridge" not in networks:
        pytest.skip("the engine has no default bridge network")
    ipam = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    gateway = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))
    config = {
        **listeners.ports(),
        "hosts4": [gateway],
        "hosts6": [],
        "outside_v4": [],
        "outside_v6": [],
        "resolver_names": [],
        "extra_tcp_ports": [],
        "datasets": [],
    }
    container = docker_client.containers.create(
        python_image,
        ["python3", "/workspace/egress_probe.py", json.dumps(config)],
        user=f"{SANDBOX_UID}:{SANDBOX_UID}",
        volumes={str(workspace): {"bind": "/workspace", "mode": "ro"}},
        labels={LABEL_INSTALLATION: INSTALLATION, LABEL_SANDBOX: "control", LABEL_OWNER: "redteam"},
    )
    try:
        container.start()
        container.wait(timeout=120)
        records = _records(container.logs())
    finally:
        container.remove(force=True)
    breached = [r for r in records[:-1] if r["probe"] == "tcp4" and not r["ok"]]
    assert any(r["target"] == f"{gateway}:{config['tcp_port']}" for r in breached), records
    assert any(s.startswith("tcp from") for s in listeners.accepted())


# --- the same probe through the console's own launch path --------------------------------


def test_probe_launched_through_the_api_is_contained_and_audited(
    docker_core: Any, listeners: HostListeners, tmp_path: Path, sandbox_runtime: Runtime
) -> None:
    """What an engineer would do: upload the probe as their code through the API. Every
    attempt fails, the host sees nothing, and the audit log names who ran which code. Under
    gVisor, because the policy marks the dataset so: the launch records the rule."""
    from sqlmodel import select

    from audit.models import AuditEvent
    from console.app import create_app
    from console.services import accounts, datasets
    from tests.helpers import OPERATOR, PASSWORD, bearer, change_policy, write_dataset

    accounts.create_user(docker_core, OPERATOR, "mallory", "engineer", PASSWORD)
    datasets.register_dataset(docker_core, OPERATOR, write_dataset(tmp_path / "d"), "demo",
                              ["mallory"])
    change_policy(docker_core, {"datasets": {"demo": {"isolation": str(sandbox_runtime)}}})
    token = accounts.create_token(docker_core, OPERATOR, "mallory")
    client = create_app(sealroom=docker_core, supervise=True).test_client()
    config = _config(listeners, sandbox_runtime)
    with PROBE.open("rb") as probe:
        created = client.post("/api/v1/sandboxes", headers=bearer(token), data={
            "request": json.dumps({"dataset": "demo", "limits": {"memory_mb": 256},
                                   "command": "python egress_probe.py "
                                              + shlex.quote(json.dumps(config))}),
            "code": (probe, "egress_probe.py")}, content_type="multipart/form-data")
    assert created.status_code == 201, created.get_json()
    sandbox_id = created.get_json()["id"]
    deadline = time.monotonic() + 120
    while (body := client.get(f"/api/v1/sandboxes/{sandbox_id}",
                              headers=bearer(token)).get_json())["status"] == "running":
        assert time.monotonic() < deadline, "the probe did not finish in time"
        time.sleep(0.3)
    log = client.get(f"/api/v1/sandboxes/{sandbox_id}/logs", headers=bearer(token)).data
    records = _records(log)
    assert records and records[-1]["probe"] == "summary", log[-2000:]
    assert [r for r in records[:-1] if not r["ok"]] == []
    assert len(records) > 100
    assert body["status"] == "succeeded"
    assert listeners.accepted() == []
    if sandbox_runtime is Runtime.GVISOR:
        assert records[-1]["kernel"] == GVISOR_KERNEL

    with docker_core.transaction() as session:
        events = session.exec(select(AuditEvent).where(
            AuditEvent.target == f"sandbox:{sandbox_id}")).all()
    by_action = {e.action: e for e in events}
    upload = json.loads(by_action["sandbox:code:upload"].details)
    assert upload["code"] == "egress_probe.py"
    assert upload["digest"] == "sha256:" + hashlib.sha256(PROBE.read_bytes()).hexdigest()
    assert by_action["sandbox:sandbox:launch"].actor == "mallory"
    assert json.loads(by_action["sandbox:sandbox:launch"].details)["isolation"] == {
        "runtime": str(sandbox_runtime), "rule": "datasets.demo.isolation"
        if sandbox_runtime is Runtime.GVISOR else "isolation.default"}
    assert by_action["sandbox:sandbox:exit"].outcome == "ok"
