"""`sealroom up` serves the SSH gateway beside the console; `sealroom ssh-gateway` alone;
a port that cannot be had is one clear line and exit 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from audit.events import AuditAction
from console.cli import main
from console.core import Sealroom
from console.settings import Settings
from tests.helpers import free_port, recorded, serve_console


def _banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.settimeout(20)
        return conn.recv(64)


def test_up_serves_the_gateway_with_a_kept_host_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ssh_port = free_port()
    process = serve_console(home, free_port(), ssh_port=ssh_port)
    try:
        assert _banner(ssh_port).startswith(b"SSH-2.0-Sealroom")
    finally:
        process.terminate()
        process.wait(timeout=60)
    key = (home / "ssh_host_ed25519_key").read_bytes()
    assert oct((home / "ssh_host_ed25519_key").stat().st_mode)[-3:] == "600"
    again = serve_console(home, free_port(), ssh_port=ssh_port)
    again.terminate()
    again.wait(timeout=60)
    assert (home / "ssh_host_ed25519_key").read_bytes() == key  # persistent
    core = Sealroom(Settings.from_env(home=home, testing=True))
    started = recorded(core, AuditAction.SSH_GATEWAY_START.value)
    assert len(started) == 2 and started[0].target == f"ssh:127.0.0.1:{ssh_port}"


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "console.cli", "ssh-gateway", "--port", str(port)],
            env={"SEALROOM_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"the SSH gateway cannot listen on 127.0.0.1:{port}" in done.stderr


def test_ssh_gateway_port_0_serves_nothing(tmp_path: Path) -> None:
    done = CliRunner().invoke(main, ["ssh-gateway", "--port", "0"],
                              env={"SEALROOM_HOME": str(tmp_path / "home")})
    assert done.exit_code == 2 and "--port 0 serves nothing" in done.output
