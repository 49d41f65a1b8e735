"""Helpers shared by tests: the operator caller, logging in through the real form, tokens."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from hypothesis import HealthCheck

from audit.events import Actor
from console.core import Caller

PASSWORD = "correct horse battery"

#: Hypothesis health checks that time the machine: on two shared cores they fail at random,
#: so no test may depend on them (a cold `make test` once failed on `too_slow`).
UNTIMED_HEALTH_CHECKS = (HealthCheck.too_slow, HealthCheck.data_too_large,
                         HealthCheck.large_base_example)
OPERATOR = Caller(Actor("cli:test", "operator", "cli", "local"))


def supervisor_pass(core: Any) -> None:
    """What the console's supervisor thread does every interval: poll the engine and record
    exits. Pages only read the database, so a test that ends a fake sandbox calls this
    where the running console would have had its supervisor."""
    from console.services import sandboxes as sandbox_service

    sandbox_service.refresh_all(core)


def change_policy(core: Any, changes: dict[str, Any], reason: str = "test") -> int:
    """Activate the active policy with `changes` merged into it (section by section, key by
    key) as the operator; returns the new version number."""
    import yaml

    from console.services import policy as policy_service

    data = yaml.safe_load(policy_service.active_version(core).text)

    def merge(into: dict[str, Any], update: dict[str, Any]) -> None:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(data, changes)
    activation = policy_service.activate(core, OPERATOR, yaml.safe_dump(data, sort_keys=False),
                                         reason)
    return int(activation.version.version)


def recorded(core: Any, action: str | None = None, *,
             request_id: str | None = None) -> list[Any]:
    """The audit events with this action and/or request id, oldest first."""
    from sqlmodel import col, select

    from audit.models import AuditEvent

    query = select(AuditEvent).order_by(col(AuditEvent.id))
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if request_id is not None:
        query = query.where(AuditEvent.request_id == request_id)
    with core.transaction() as session:
        return list(session.exec(query).all())


def write_dataset(directory: Path, rows: int = 200) -> Path:
    from sandbox.examples.demo_dataset import write_demo_dataset

    directory.mkdir(parents=True, exist_ok=True)
    write_demo_dataset(directory, rows=rows)
    return directory


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def launch_example(client: FlaskClient, token: str, **fields: Any) -> str:
    """Launch the bundled mlp example on `demo` through the API; the new sandbox's id."""
    body = {"dataset": "demo", "example": "mlp", **fields}
    response = client.post("/api/v1/sandboxes", headers=bearer(token), json=body)
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def login(client: FlaskClient, name: str, password: str = PASSWORD) -> Any:
    """Log in through the real form, CSRF token included."""
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token, "login form has no CSRF token"
    return client.post("/login", data={"username": name, "password": password,
                                       "csrf_token": token.group(1)})


def csrf_from(client: FlaskClient, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def raw_safetensors(tensors: dict[str, tuple[str, list[int], bytes]],
                    metadata: dict[str, str] | None = None) -> tuple[bytes, int]:
    """A safetensors file written by hand (name -> dtype, shape, little-endian data), and
    the offset where its tensor data starts."""
    import json
    import struct

    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    payload = b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(payload), len(payload) + len(data)]}
        payload += data
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + payload, 8 + len(raw)


def safetensors_bytes(tensors: dict[str, list[float]], metadata: dict[str, str] | None = None,
                      trailing: bytes = b"") -> bytes:
    """A float32 safetensors file written by hand (the host has no torch)."""
    import struct

    data, _ = raw_safetensors({name: ("F32", [len(values)],
                                      struct.pack(f"<{len(values)}f", *values))
                               for name, values in tensors.items()}, metadata)
    return data + trailing


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_console(home: Path, port: int, ssh_port: int = 0) -> Any:
    """`sealroom up` as a real process on `port` (and the SSH gateway on `ssh_port`; 0: none,
    so a console a developer runs on 2222 never collides); returns the Popen once /healthz
    answers."""
    import os
    import subprocess
    import sys
    import time

    import requests

    env = {**os.environ, "SEALROOM_HOME": str(home), "SEALROOM_PORT": str(port),
           "SEALROOM_SUPERVISE_INTERVAL": "0.5", "SEALROOM_SSH_PORT": str(ssh_port)}
    process = subprocess.Popen([sys.executable, "-m", "console.cli", "up"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the console did not come up")


def wait_for_outbox(client: FlaskClient, token: str, sandbox_id: str,
                    attempts: int = 600) -> dict[str, Any]:
    """The outbox listing once the console has hashed it in the background (it answers
    "hashing" until then); polls a bounded number of times, each a real request."""
    import time

    for _ in range(attempts):
        response = client.get(f"/api/v1/sandboxes/{sandbox_id}/outbox",
                              headers={"Authorization": f"Bearer {token}"})
        body: dict[str, Any] = response.get_json()
        if response.status_code != 200 or body.get("state") != "hashing":
            return body
        time.sleep(0.05)
    raise AssertionError(f"the outbox of {sandbox_id} was never hashed")


def settled_release(client: FlaskClient, token: str, release: dict[str, Any],
                    timeout_s: float = 900) -> dict[str, Any]:
    """The release request once the gate's attacks on its models have run (it is
    `submitted` until then); polls the API a bounded number of times, as a client would."""
    import time

    deadline = time.monotonic() + timeout_s
    body = release
    while body["status"] == "submitted":
        assert time.monotonic() < deadline, f"the attacks on {body['id']} did not finish"
        time.sleep(0.5)
        body = client.get(f"/api/v1/releases/{body['id']}", headers=bearer(token)).get_json()
    return body


def staged_sandbox(storage: Any, prefix: str, files: dict[str, bytes]) -> str:
    """A new sandbox id whose workspace holds `files`, staged in `storage` (a `LocalStorage`)
    and handed to the sandbox user, as a launch would stage it."""
    import uuid

    sandbox_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    storage.create(sandbox_id)
    for name, data in files.items():
        (storage.workspace(sandbox_id) / name).write_bytes(data)
    storage.seal_staging(sandbox_id)
    return sandbox_id


def run_to_success(backend: Any, state: Any, timeout_s: float = 240) -> bytes:
    """Start a created sandbox on a real backend, wait until it has exited, and return its
    log; it must have exited with 0."""
    import time

    from sandbox.backend import RunState

    backend.start(state)
    deadline = time.monotonic() + timeout_s
    while (status := backend.poll(state)).state not in (RunState.EXITED, RunState.MISSING):
        assert time.monotonic() < deadline, "the sandbox did not finish"
        time.sleep(0.1)
    output: bytes = backend.logs(state)
    assert (status.state, status.exit_code) == (RunState.EXITED, 0), output
    return output


def record_terminal_session(core: Any, *, user: str = "alice", sandbox_id: str = "sb-term",
                            output: list[bytes] | None = None, member: str = "main",
                            started_at: str = "2026-12-02T10:00:00.000000Z",
                            end_reason: str = "the engineer logged out") -> Any:
    """A finished SSH session as the gateway leaves one: its recording written with
    `AsciicastWriter`, then, in one transaction, the `terminal_session` row and the
    `sandbox:terminal:end` event that takes the recording's hash into the chain."""
    import secrets
    import time

    from audit.chain import append, utc_now
    from audit.events import AuditAction, EventDraft
    from audit.recordings import AsciicastWriter
    from console.models import TerminalSession

    chunks = [b"$ ls\r\n", b"train.py  data\r\n"] if output is None else output
    session_id = f"ssh-{secrets.token_hex(8)}"
    name = f"{session_id}.cast"
    directory = core.settings.recordings_dir
    directory.mkdir(parents=True, exist_ok=True)
    begun = time.time()
    writer = AsciicastWriter(directory / name, width=80, height=24, started_at=begun,
                             title=f"{user} in {sandbox_id}")
    for index, chunk in enumerate(chunks):
        writer.output(chunk, begun + 0.1 * (index + 1))
    digest = writer.close()
    sent = sum(len(chunk) for chunk in chunks)
    actor = Actor(user, "engineer", "ssh", "10.0.0.7")
    with core.transaction() as session:
        row = TerminalSession(id=session_id, user=user, sandbox_id=sandbox_id, member=member,
                              key_fingerprint="SHA256:" + "k" * 43, source="10.0.0.7",
                              started_at=started_at, ended_at=utc_now(),
                              end_reason=end_reason, end_rule="", bytes_out=sent, bytes_in=5,
                              recording=name, recording_sha256=digest.sha256,
                              recording_bytes=digest.size)
        session.add(row)
        append(session, EventDraft(actor, AuditAction.SSH_END, f"terminal:{session_id}",
                                   details={"session": session_id, "sandbox": sandbox_id,
                                            "member": member, "recording": name,
                                            "recording_sha256": digest.sha256,
                                            "recording_bytes": digest.size,
                                            "bytes_out": sent, "bytes_in": 5,
                                            "rule": ""}))
        session.flush()
        session.expunge(row)
    return row
