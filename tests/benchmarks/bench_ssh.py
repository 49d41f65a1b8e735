"""The SSH gateway against the engine's own exec: what metering, recording and the SSH
protocol cost a terminal, measured in the same run on the same running sandbox.

- open: from nothing to the shell's first prompt: through the gateway (TCP, key exchange,
  public-key login, the policy and the session's records, the exec) against an exec with a
  TTY opened directly on the engine (what the gateway does inside);
- output: 4 MiB printed by the shell (`head -c ... /dev/zero | tr`), read to the end: through
  the gateway (paid for from the ledger in 64 KiB blocks, recorded, encrypted) against the
  same command on a direct exec.

Ratios are gateway over direct for times; there is no aim, only the price of the door.
The policy is opened wide for the run (budgets far above 4 MiB), so no limit ends it.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from console.core import Sealroom
from console.services import launch as launch_service
from console.services import ssh_keys
from console.ssh.server import Gateway
from sandbox.terminal import DockerTerminal, TerminalSize
from tests.benchmarks.bench_home import bench_home
from tests.helpers import supervisor_pass

NAME = "ssh"
RUNS = 5
OUTPUT_BYTES = 4 << 20
SLEEPER = b"import time\nprint('ready', flush=True)\ntime.sleep(600)\n"
PROMPT = b"$ "
DONE = b"bench-done-42"
COMMAND = (f"head -c {OUTPUT_BYTES} /dev/zero | tr '\\0' x; echo; "
           "echo bench-done-$((6*7))\n").encode()


def _key() -> paramiko.Ed25519Key:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption())
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode()))


def _read_until(read: Any, marker: bytes) -> int:
    seen = b""
    total = 0
    while marker not in seen[-4096:]:
        chunk = read(65536)
        if not chunk:
            raise RuntimeError(f"the terminal ended before {marker!r}")
        total += len(chunk)
        seen = seen[-4096:] + chunk
    return total


def _through_gateway(gateway: Gateway, key: paramiko.PKey) -> tuple[float, float]:
    began = time.perf_counter()
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", gateway.address[1], username="bench", pkey=key,
                   look_for_keys=False, allow_agent=False, timeout=60)
    channel = client.invoke_shell(width=200, height=50)
    channel.settimeout(120)
    _read_until(channel.recv, PROMPT)
    opened = time.perf_counter() - began
    began = time.perf_counter()
    channel.sendall(COMMAND)
    _read_until(channel.recv, DONE)
    output = time.perf_counter() - began
    client.close()
    return opened, output


def _direct(api: Any, container: str) -> tuple[float, float]:
    began = time.perf_counter()
    terminal = DockerTerminal(api, container, term="xterm", size=TerminalSize(200, 50))
    _read_until(terminal.read, PROMPT)
    opened = time.perf_counter() - began
    began = time.perf_counter()
    terminal.write(COMMAND)
    _read_until(terminal.read, DONE)
    output = time.perf_counter() - began
    terminal.close()
    return opened, output


def _core(home: Path) -> tuple[Sealroom, str, paramiko.PKey]:
    core, caller = bench_home(home, {"interactive": {"ssh": True,
                                                     "output_per_session_kb": 1 << 20,
                                                     "output_per_minute_kb": 1 << 20}})
    key = _key()
    ssh_keys.add(core, caller, f"{key.get_name()} {key.get_base64()}")
    record = launch_service.launch(core, caller, launch_service.LaunchOrder(
        datasets=["demo"], code_name="train.py", code=SLEEPER, timeout_s=600))
    supervisor_pass(core)
    return core, record.id, key


def run(runs: int = RUNS) -> dict[str, Any]:
    client = docker.from_env(timeout=120)
    opened: dict[str, list[float]] = {"gateway": [], "direct": []}
    output: dict[str, list[float]] = {"gateway": [], "direct": []}
    with tempfile.TemporaryDirectory(prefix="sealroom-bench-") as tmp:
        core, sandbox_id, key = _core(Path(tmp))
        gateway = Gateway(core, "127.0.0.1", 0).start()
        try:
            import json

            from console.models import Sandbox

            with core.read() as session:
                row = session.get(Sandbox, sandbox_id)
            assert row is not None
            container = json.loads(row.backend_state)["members"][0]["container"]
            for i in range(runs + 1):  # the first round warms both up
                sides = ("gateway", "direct") if i % 2 else ("direct", "gateway")
                for side in sides:
                    took = _through_gateway(gateway, key) if side == "gateway" \
                        else _direct(client.api, container)
                    if i:
                        opened[side].append(took[0])
                        output[side].append(took[1])
        finally:
            gateway.stop()
            for container_ in client.containers.list(all=True, filters={
                    "label": f"sealroom.installation={core.settings.installation_id()}"}):
                container_.remove(force=True)
            core.close()
            core.backend.storage.volumes.remove(sandbox_id)  # its loop-mounted workspace
    result: dict[str, Any] = {"runs": runs, "output_bytes": OUTPUT_BYTES}
    print(f"{'':<24}{'gateway s':>11}{'direct s':>11}{'ratio':>8}")
    for name, samples in (("open to first prompt", opened), ("4 MiB of output", output)):
        gateway_s = statistics.median(samples["gateway"])
        direct_s = statistics.median(samples["direct"])
        print(f"{name:<24}{gateway_s:>11.3f}{direct_s:>11.3f}{gateway_s / direct_s:>8.2f}")
        result[name.split()[0]] = {"gateway_s": gateway_s, "direct_s": direct_s,
                                   "ratio": gateway_s / direct_s}
    result["gateway_mb_per_s"] = OUTPUT_BYTES / 1e6 / statistics.median(output["gateway"])
    return result
