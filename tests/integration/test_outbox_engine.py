"""The outbox read from the host while a real sandbox attacks it: a FIFO, a sparse 10 TB
file, and `/outbox/d` swapped between a directory and a link to `/etc` (the container's own
inside, the HOST's /etc when followed by the console). Nothing outside the outbox is ever
listed or hashed, nothing blocks, and the sparse file puts the manifest over its cap."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from sandbox.backend import LABEL_INSTALLATION, BackendState, RunState
from sandbox.docker_backend import DockerBackend
from sandbox.outbox import (
    OutboxError,
    OutboxListing,
    OutboxRules,
    hash_outbox,
    list_outbox,
    open_outbox_file,
)
from sandbox.spec import SandboxSpec
from sandbox.storage import LocalStorage

pytestmark = pytest.mark.docker

INSTALLATION = f"test-outbox-{uuid.uuid4().hex[:12]}"
HOST_PASSWD = Path("/etc/passwd")
TEN_TB = 10 << 40
RACE_ROUNDS = 200

# The insider. Control files live in /workspace so they never show in the outbox; each
# phase waits for the host's flag and answers with a marker.
INSIDER = r"""
import os
O, W = "/outbox", "/workspace"
def wait_for(flag):
    while not os.path.exists(f"{W}/{flag}"):
        pass
def mark(name):
    open(f"{W}/{name}.tmp", "w").close()
    os.rename(f"{W}/{name}.tmp", f"{W}/{name}")

os.mkfifo(f"{O}/pipe")
with open(f"{O}/model.bin", "wb") as f:
    f.write(b"weights")
os.makedirs(f"{O}/d")
with open(f"{O}/d/passwd", "wb") as f:  # the host's name and size, the sandbox's bytes
    f.write(b"s" * int(os.environ["PASSWD_SIZE"]))

# Phase 1: d held as a link to /etc while the host looks.
os.rename(f"{O}/d", f"{O}/d.away")
os.symlink("/etc", f"{O}/d")
mark("holding-link")
wait_for("go-race")
os.unlink(f"{O}/d")
os.rename(f"{O}/d.away", f"{O}/d")

# Phase 2: swap as fast as possible until told to stop.
swaps = 0
while True:
    os.rename(f"{O}/d", f"{O}/d.away")
    os.symlink("/etc", f"{O}/d")
    os.unlink(f"{O}/d")
    os.rename(f"{O}/d.away", f"{O}/d")
    swaps += 1
    if swaps == 1:
        mark("swapping")
    if swaps % 64 == 0 and os.path.exists(f"{W}/stop-race"):
        break

# Phase 3: a sparse file of 10 TB.
with open(f"{O}/huge.bin", "wb") as f:
    f.truncate(10 << 40)
mark("huge")
wait_for("exit")
"""


@dataclass
class Insider:
    backend: DockerBackend
    handle: BackendState
    workspace: Path
    outbox: Path

    def tell(self, flag: str) -> None:
        (self.workspace / flag).touch()

    def wait_for(self, marker: str, timeout_s: float = 120) -> None:
        """Poll for a marker the insider writes, failing fast if the container has ended."""
        deadline = time.monotonic() + timeout_s
        while not (self.workspace / marker).exists():
            status = self.backend.poll(self.handle)
            if status.state is not RunState.RUNNING:
                logs = self.backend.logs(self.handle).decode(errors="replace")
                pytest.fail(f"insider ended before {marker!r}: {status}\n{logs}")
            assert time.monotonic() < deadline, f"insider never wrote {marker!r}"
            time.sleep(0.05)


@pytest.fixture
def insider(python_image: str, tmp_path: Path,
            docker_client: docker.DockerClient) -> Iterator[Insider]:
    storage = LocalStorage(tmp_path / "sandboxes")
    sandbox_id = f"sb-outbox-{uuid.uuid4().hex[:6]}"
    storage.create(sandbox_id)
    storage.seal_staging(sandbox_id)
    workspace, outbox = storage.workspace(sandbox_id), storage.outbox(sandbox_id)
    spec = SandboxSpec(
        sandbox_id=sandbox_id, owner="mallory", image=python_image,
        command=("python3", "-c", INSIDER),
    ).with_env("PASSWD_SIZE", str(HOST_PASSWD.stat().st_size))
    backend = DockerBackend(installation=INSTALLATION, storage=storage)
    handle = backend.create(spec)
    try:
        backend.start(handle)
        yield Insider(backend, handle, workspace, outbox)
    finally:
        label = f"{LABEL_INSTALLATION}={INSTALLATION}"
        for container in docker_client.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


SANDBOX_PATHS = {"pipe", "model.bin", "d", "d/passwd", "d.away", "d.away/passwd", "huge.bin"}


def _assert_only_the_sandboxs_own(listing: OutboxListing, host_hash: str) -> None:
    for item in listing.items:
        assert item.path in SANDBOX_PATHS, f"listed something the sandbox did not write: {item}"
        assert item.sha256 != host_hash, "hashed the host's /etc/passwd"
        if item.path in ("pipe", "d"):
            assert item.kind == "ignored"


@pytest.mark.timeout(600)  # a safety net only: a blocked open would hang, not fail
def test_an_insider_swapping_links_never_points_the_console_at_the_host(
        insider: Insider) -> None:
    rules = OutboxRules()
    host_hash = _sha256(HOST_PASSWD.read_bytes())
    own_passwd = b"s" * HOST_PASSWD.stat().st_size
    assert _sha256(own_passwd) != host_hash

    # Phase 1: d is a link to /etc, and stays one while the host looks.
    insider.wait_for("holding-link")
    manifest = hash_outbox(insider.outbox, rules)
    _assert_only_the_sandboxs_own(manifest.listing, host_hash)
    assert manifest.state == "ready"
    assert {i.path: (i.kind, i.sha256) for i in manifest.listing.items} == {
        "d": ("ignored", None),
        "d.away/passwd": ("file", _sha256(own_passwd)),
        "model.bin": ("file", _sha256(b"weights")),
        "pipe": ("ignored", None),
    }
    with pytest.raises(OutboxError):
        open_outbox_file(insider.outbox, "d/passwd")

    # Phase 2: d swapped as fast as the sandbox can while the host lists, hashes and opens.
    insider.tell("go-race")
    insider.wait_for("swapping")
    for _ in range(RACE_ROUNDS):
        _assert_only_the_sandboxs_own(list_outbox(insider.outbox, rules), host_hash)
        manifest = hash_outbox(insider.outbox, rules)
        _assert_only_the_sandboxs_own(manifest.listing, host_hash)
        assert manifest.state in ("ready", "changed")
        try:
            with open_outbox_file(insider.outbox, "d/passwd") as handle:
                assert handle.read(len(own_passwd) + 1) == own_passwd
        except OutboxError:
            pass  # d was a link (or away) at that moment: refused, as it should be
    insider.tell("stop-race")

    # Phase 3: a sparse 10 TB file: over the cap at once, nothing read.
    insider.wait_for("huge")
    manifest = hash_outbox(insider.outbox, rules)
    _assert_only_the_sandboxs_own(manifest.listing, host_hash)
    assert (manifest.state, manifest.cap) == ("over_cap", "max_hash_bytes")
    assert (manifest.bytes_hashed, manifest.files_hashed) == (0, 0)
    huge = next(i for i in manifest.listing.items if i.path == "huge.bin")
    assert (huge.kind, huge.size, huge.sha256) == ("file", TEN_TB, None)
    insider.tell("exit")
