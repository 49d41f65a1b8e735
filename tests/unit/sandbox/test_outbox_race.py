"""A sandbox swapping a directory of its outbox for a link while the console walks it: no
listing, manifest or opened file ever reaches what the link points at (here a stand-in for
the host holding a canary file)."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sandbox.outbox as outbox_module
from sandbox.outbox import (
    OutboxError,
    OutboxListing,
    OutboxRules,
    hash_outbox,
    list_outbox,
    open_outbox_file,
)

ROUNDS = 200
SANDBOX_PASSWD = b"s" * 64  # the same size as the host's, another content


class _Swapper(threading.Thread):
    """Keeps turning `outbox/d` from a directory into a link to `target` and back."""

    def __init__(self, outbox: Path, target: Path) -> None:
        super().__init__(daemon=True)
        self.outbox, self.target = outbox, target
        self.stop = threading.Event()
        self.swaps = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        d, away = self.outbox / "d", self.outbox / "d.away"
        try:
            while not self.stop.is_set():
                os.rename(d, away)
                os.symlink(self.target, d)
                os.unlink(d)
                os.rename(away, d)
                self.swaps += 1
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


@pytest.fixture
def host(tmp_path: Path) -> tuple[Path, str, str]:
    """A directory standing in for the host's /etc: a canary file with a random name, and a
    `passwd` whose name and size the sandbox copies, so that only its content tells them
    apart. Returns (directory, canary name, sha256 of the host's passwd)."""
    root = tmp_path / "host"
    root.mkdir()
    name = f"canary-{secrets.token_hex(8)}"
    (root / name).write_bytes(secrets.token_bytes(64))
    content = secrets.token_bytes(64)
    (root / "passwd").write_bytes(content)
    return root, name, hashlib.sha256(content).hexdigest()


@pytest.fixture
def swapping(tmp_path: Path, host: tuple[Path, str, str]) -> Iterator[tuple[Path, _Swapper]]:
    outbox = tmp_path / "outbox"
    (outbox / "d" / "sub").mkdir(parents=True)
    (outbox / "d" / "passwd").write_bytes(SANDBOX_PASSWD)
    (outbox / "d" / "sub" / "deeper.txt").write_bytes(b"deeper")
    (outbox / "top.txt").write_bytes(b"top")
    swapper = _Swapper(outbox, host[0])
    swapper.start()
    yield outbox, swapper
    swapper.stop.set()
    swapper.join(timeout=60)


@pytest.mark.timeout(300)
def test_swapping_a_directory_for_a_link_never_reaches_the_host(
        host: tuple[Path, str, str], swapping: tuple[Path, _Swapper]) -> None:
    _root, canary_name, canary_hash = host
    outbox, swapper = swapping
    rules = OutboxRules()
    states: set[str] = set()
    for _ in range(ROUNDS):
        for listing in (list_outbox(outbox, rules), hash_outbox(outbox, rules).listing):
            for item in listing.items:
                assert canary_name not in item.path
                assert item.sha256 != canary_hash
                assert item.path.split("/")[0] in ("d", "d.away", "top.txt")
        states.add(hash_outbox(outbox, rules).state)
        for path in (f"d/{canary_name}", canary_name):
            with pytest.raises(OutboxError):
                open_outbox_file(outbox, path)
    swapper.stop.set()
    swapper.join(timeout=60)
    assert swapper.error is None
    assert swapper.swaps > 0
    assert states <= {"ready", "changed"}


def test_between_swaps_the_same_outbox_lists_and_hashes_as_before(
        host: tuple[Path, str, str], swapping: tuple[Path, _Swapper]) -> None:
    outbox, swapper = swapping
    swapper.stop.set()
    swapper.join(timeout=60)
    manifest = hash_outbox(outbox, OutboxRules())
    assert manifest.state == "ready"
    assert {i.path: i.sha256 for i in manifest.listing.items} == {
        "d/passwd": hashlib.sha256(SANDBOX_PASSWD).hexdigest(),
        "d/sub/deeper.txt": hashlib.sha256(b"deeper").hexdigest(),
        "top.txt": hashlib.sha256(b"top").hexdigest(),
    }


# The worst interleavings, made to happen every time: the sandbox acts exactly between the
# console's look at an entry and its open, or between the listing and the hashing.


def _turn_into_link(directory: Path, target: Path) -> None:
    directory.rename(directory.with_name(directory.name + ".away"))
    os.symlink(target, directory)


def test_a_directory_turned_link_between_stat_and_open_is_not_entered(
        tmp_path: Path, host: tuple[Path, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    outbox = tmp_path / "outbox"
    (outbox / "d").mkdir(parents=True)
    (outbox / "d" / "passwd").write_bytes(SANDBOX_PASSWD)
    real_stat = os.stat

    def stat_then_swap(path: Any, *, dir_fd: int | None = None,
                       follow_symlinks: bool = True) -> os.stat_result:
        result = real_stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        if path == "d" and dir_fd is not None and not (outbox / "d").is_symlink():
            _turn_into_link(outbox / "d", host[0])
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    listing = list_outbox(outbox, OutboxRules())
    monkeypatch.undo()
    assert (outbox / "d").is_symlink()  # the swap did happen in the window
    assert [(i.path, i.kind) for i in listing.items] == [("d", "ignored")]


@pytest.fixture
def acting_after_listing(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], None]], None]:
    """Make the sandbox run `action` right after hash_outbox has listed, before it hashes."""

    def install(action: Callable[[], None]) -> None:
        def list_then_act(outbox: Path, rules: OutboxRules) -> OutboxListing:
            listing = list_outbox(outbox, rules)
            action()
            return listing

        monkeypatch.setattr(outbox_module, "list_outbox", list_then_act)

    return install


def _outbox_with_passwd(tmp_path: Path) -> Path:
    outbox = tmp_path / "outbox"
    (outbox / "d").mkdir(parents=True)
    (outbox / "d" / "passwd").write_bytes(SANDBOX_PASSWD)
    (outbox / "top.txt").write_bytes(b"top")
    return outbox


def test_a_directory_turned_link_before_hashing_is_not_hashed(
        tmp_path: Path, host: tuple[Path, str, str],
        acting_after_listing: Callable[[Callable[[], None]], None]) -> None:
    outbox = _outbox_with_passwd(tmp_path)
    acting_after_listing(lambda: _turn_into_link(outbox / "d", host[0]))
    manifest = hash_outbox(outbox, OutboxRules())
    assert manifest.state == "changed"
    assert all(i.sha256 is None for i in manifest.listing.items)


def test_a_file_turned_link_before_hashing_is_not_hashed(
        tmp_path: Path, host: tuple[Path, str, str],
        acting_after_listing: Callable[[Callable[[], None]], None]) -> None:
    outbox = _outbox_with_passwd(tmp_path)

    def swap() -> None:
        (outbox / "d" / "passwd").unlink()
        os.symlink(host[0] / "passwd", outbox / "d" / "passwd")

    acting_after_listing(swap)
    manifest = hash_outbox(outbox, OutboxRules())
    assert manifest.state == "changed"
    assert host[2] not in {i.sha256 for i in manifest.listing.items}


@pytest.mark.timeout(60)  # a safety net only: a blocking open would hang here, not fail
def test_a_file_turned_fifo_before_hashing_neither_blocks_nor_is_hashed(
        tmp_path: Path, acting_after_listing: Callable[[Callable[[], None]], None]) -> None:
    outbox = _outbox_with_passwd(tmp_path)

    def swap() -> None:
        (outbox / "top.txt").unlink()
        os.mkfifo(outbox / "top.txt")

    acting_after_listing(swap)
    assert hash_outbox(outbox, OutboxRules()).state == "changed"


def test_a_file_that_grew_before_hashing_is_not_hashed_past_its_listed_size(
        tmp_path: Path, acting_after_listing: Callable[[Callable[[], None]], None]) -> None:
    outbox = _outbox_with_passwd(tmp_path)
    acting_after_listing(lambda: os.truncate(outbox / "top.txt", 10 << 40))
    manifest = hash_outbox(outbox, OutboxRules())
    assert (manifest.state, manifest.bytes_hashed) == ("changed", len(SANDBOX_PASSWD))
