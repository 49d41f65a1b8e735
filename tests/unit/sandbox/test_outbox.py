"""The outbox is read without trusting it: names are judged, links never followed, special
files never opened, sizes charged before any byte is read, and one file opened for the gate
only when every component is a real directory and the last a regular file."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import SandboxError
from sandbox.outbox import (
    OutboxError,
    OutboxItem,
    OutboxListing,
    OutboxRules,
    hash_outbox,
    list_outbox,
    open_outbox_file,
)

RULES = OutboxRules()
TEN_TB = 10 << 40


def _by_path(listing: OutboxListing) -> dict[str, OutboxItem]:
    return {item.path: item for item in listing.items}


def _write(root: Path, rel: str, data: bytes = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    root = tmp_path / "outbox"
    root.mkdir()
    return root


@pytest.fixture
def fifo(outbox: Path) -> Iterator[Path]:
    path = outbox / "pipe"
    os.mkfifo(path)
    yield path


# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["model.safetensors", "metrics.json", "a", "A-b_c.9",
                                  "x" * 64, "...dots"])
def test_names_matching_the_pattern_may_be_shown(outbox: Path, name: str) -> None:
    _write(outbox, name)
    (item,) = list_outbox(outbox, RULES).items
    assert (item.path, item.kind, item.name_ok) == (name, "file", True)


@pytest.mark.parametrize("name", [
    "000 P00000,1940-01-01,M,diabetes type 2,5.0",  # a dataset row as a name
    "x" * 65, "naïve.txt", "tab\there", "new\nline", "semi;colon", "a=b", "ends-with-nl\n",
])
def test_names_not_matching_the_pattern_are_withheld(outbox: Path, name: str) -> None:
    _write(outbox, name)
    (item,) = list_outbox(outbox, RULES).items
    assert item.kind == "file" and item.name_ok is False


def test_one_bad_component_withholds_the_whole_path(outbox: Path) -> None:
    _write(outbox, "row 1,alice/ok.txt")
    (item,) = list_outbox(outbox, RULES).items
    assert item.path == "row 1,alice/ok.txt" and item.name_ok is False


def test_the_pattern_comes_from_the_rules(outbox: Path) -> None:
    _write(outbox, "upper.TXT")
    rules = OutboxRules(name_pattern=r"[a-z.]{1,16}")
    assert list_outbox(outbox, rules).items[0].name_ok is False


def test_non_utf8_names_are_listed_and_withheld(outbox: Path) -> None:
    os.close(os.open(os.fsencode(outbox) + b"/\xff\xfe.bin", os.O_CREAT | os.O_WRONLY))
    (item,) = list_outbox(outbox, RULES).items
    assert item.kind == "file" and item.name_ok is False


# ---------------------------------------------------------------------------- shape


def test_positions_follow_sorted_order_and_are_stable(outbox: Path) -> None:
    for rel in ["b.txt", "a/z.txt", "a/c/d.txt", "c.txt", "a.txt"]:
        _write(outbox, rel)
    first = list_outbox(outbox, RULES)
    assert [(i.position, i.path) for i in first.items] == [
        (1, "a/c/d.txt"), (2, "a/z.txt"), (3, "a.txt"), (4, "b.txt"), (5, "c.txt")]
    assert list_outbox(outbox, RULES) == first
    assert first.entries_seen == 7 and first.truncated is False  # two directories met


def test_sizes_are_the_real_sizes_and_empty_directories_list_nothing(outbox: Path) -> None:
    _write(outbox, "w.bin", b"\0" * 1234)
    (outbox / "empty").mkdir()
    assert [(i.path, i.size) for i in list_outbox(outbox, RULES).items] == [("w.bin", 1234)]


def test_depth_is_bounded(outbox: Path) -> None:
    _write(outbox, "a/b/c/deep-enough.txt")
    _write(outbox, "a/b/c/d/too-deep.txt")
    items = _by_path(list_outbox(outbox, RULES))
    assert set(items) == {"a/b/c/deep-enough.txt", "a/b/c/d"}
    too_deep = items["a/b/c/d"]
    assert too_deep.kind == "ignored" and too_deep.size == 0


def test_depth_zero_lists_only_the_root(outbox: Path) -> None:
    _write(outbox, "top.txt")
    _write(outbox, "sub/inner.txt")
    listing = list_outbox(outbox, OutboxRules(max_depth=0))
    assert [(i.path, i.kind) for i in listing.items] == [("sub", "ignored"), ("top.txt", "file")]


def test_entries_beyond_the_cap_truncate_the_listing(outbox: Path) -> None:
    for n in range(5):
        _write(outbox, f"f{n}.txt")
    listing = list_outbox(outbox, OutboxRules(max_entries=3))
    assert [i.path for i in listing.items] == ["f0.txt", "f1.txt", "f2.txt"]
    assert listing.truncated is True and listing.entries_seen == 5


def test_the_walk_stops_after_ten_times_the_cap(outbox: Path) -> None:
    for n in range(25):
        _write(outbox, f"d{n % 3}/f{n}.txt")
    listing = list_outbox(outbox, OutboxRules(max_entries=1))
    assert len(listing.items) == 1
    assert listing.truncated is True and listing.entries_seen == 10


def test_exactly_the_cap_is_not_truncated(outbox: Path) -> None:
    for n in range(3):
        _write(outbox, f"f{n}.txt")
    listing = list_outbox(outbox, OutboxRules(max_entries=3))
    assert len(listing.items) == 3 and listing.truncated is False


def test_a_missing_outbox_lists_as_empty(tmp_path: Path) -> None:
    listing = list_outbox(tmp_path / "never-created", RULES)
    assert listing == OutboxListing(items=(), truncated=False, entries_seen=0)
    assert hash_outbox(tmp_path / "never-created", RULES).state == "ready"


def test_an_outbox_root_that_is_a_link_is_refused(tmp_path: Path, outbox: Path) -> None:
    os.symlink(outbox, tmp_path / "link")
    with pytest.raises(OutboxError) as raised:
        list_outbox(tmp_path / "link", RULES)
    assert isinstance(raised.value, SandboxError)


@pytest.mark.parametrize("kwargs", [{"max_entries": 0}, {"max_depth": -1},
                                    {"max_hash_bytes": -1}, {"max_hash_files": -1}])
def test_contradictory_rules_cannot_be_built(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        OutboxRules(**kwargs)


def test_a_bad_pattern_fails_when_the_rules_are_built() -> None:
    with pytest.raises(Exception, match="unterminated|missing"):
        OutboxRules(name_pattern="[a-z")


# ---------------------------------------------------------------------------- links, specials


def test_a_link_to_a_file_is_ignored_not_followed(tmp_path: Path, outbox: Path) -> None:
    secret = _write(tmp_path, "host/secret.txt", b"host secret")
    os.symlink(secret, outbox / "passwd")
    manifest = hash_outbox(outbox, RULES)
    (item,) = manifest.listing.items
    assert (item.path, item.kind, item.size, item.sha256) == ("passwd", "ignored", 0, None)
    assert manifest.state == "ready" and manifest.bytes_hashed == 0


def test_a_link_to_a_directory_is_ignored_not_descended(tmp_path: Path, outbox: Path) -> None:
    _write(tmp_path, "host/canary.txt")
    os.symlink(tmp_path / "host", outbox / "d")
    os.symlink("/etc", outbox / "etc")
    os.symlink("missing", outbox / "dangling")
    listing = list_outbox(outbox, RULES)
    assert [(i.path, i.kind) for i in listing.items] == [
        ("d", "ignored"), ("dangling", "ignored"), ("etc", "ignored")]


@pytest.mark.timeout(60)  # a safety net only: a blocking open would hang here, not fail
def test_a_fifo_neither_blocks_the_listing_nor_the_hashing(outbox: Path, fifo: Path) -> None:
    _write(outbox, "real.txt", b"data")
    manifest = hash_outbox(outbox, RULES)
    assert manifest.state == "ready"
    items = _by_path(manifest.listing)
    assert items["pipe"].kind == "ignored"
    assert items["pipe"].sha256 is None
    assert items["real.txt"].sha256 == hashlib.sha256(b"data").hexdigest()


def test_a_socket_is_ignored(outbox: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(outbox / "s"))
        (item,) = hash_outbox(outbox, RULES).listing.items
    finally:
        server.close()
    assert (item.path, item.kind, item.sha256) == ("s", "ignored", None)


@pytest.mark.timeout(60)
def test_a_device_is_ignored(outbox: Path) -> None:
    try:  # /dev/zero's numbers: hashing it would never end
        os.mknod(outbox / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    (item,) = hash_outbox(outbox, RULES).listing.items
    assert (item.kind, item.size, item.sha256) == ("ignored", 0, None)


# ---------------------------------------------------------------------------- hashing


def test_a_ready_manifest_hashes_every_regular_file(outbox: Path) -> None:
    _write(outbox, "model.safetensors", b"weights")
    _write(outbox, "sub/metrics.json", b"{}")
    os.symlink("/etc/passwd", outbox / "passwd")
    manifest = hash_outbox(outbox, RULES)
    assert (manifest.state, manifest.cap) == ("ready", None)
    assert (manifest.files_hashed, manifest.bytes_hashed) == (2, 9)
    hashes = {i.path: i.sha256 for i in manifest.listing.items}
    assert hashes == {"model.safetensors": hashlib.sha256(b"weights").hexdigest(),
                      "passwd": None, "sub/metrics.json": hashlib.sha256(b"{}").hexdigest()}


def test_listing_alone_never_hashes(outbox: Path) -> None:
    _write(outbox, "a.txt")
    assert list_outbox(outbox, RULES).items[0].sha256 is None


@pytest.mark.timeout(60)
def test_a_sparse_10_tb_file_is_over_cap_without_reading(outbox: Path) -> None:
    _write(outbox, "small.txt", b"small")
    with open(outbox / "huge.bin", "wb") as handle:
        handle.truncate(TEN_TB)
    manifest = hash_outbox(outbox, RULES)
    assert (manifest.state, manifest.cap) == ("over_cap", "max_hash_bytes")
    assert (manifest.bytes_hashed, manifest.files_hashed) == (0, 0)
    assert [(i.path, i.size, i.sha256) for i in manifest.listing.items] == [
        ("huge.bin", TEN_TB, None), ("small.txt", 5, None)]


def test_the_byte_cap_counts_every_file(outbox: Path) -> None:
    _write(outbox, "a.bin", b"\0" * 6)
    _write(outbox, "b.bin", b"\0" * 5)
    assert hash_outbox(outbox, OutboxRules(max_hash_bytes=11)).state == "ready"
    manifest = hash_outbox(outbox, OutboxRules(max_hash_bytes=10))
    assert (manifest.state, manifest.cap) == ("over_cap", "max_hash_bytes")


def test_the_file_cap_is_checked_before_hashing(outbox: Path) -> None:
    for n in range(3):
        _write(outbox, f"f{n}.txt")
    assert hash_outbox(outbox, OutboxRules(max_hash_files=3)).state == "ready"
    manifest = hash_outbox(outbox, OutboxRules(max_hash_files=2))
    assert (manifest.state, manifest.cap) == ("over_cap", "max_hash_files")
    assert all(i.sha256 is None for i in manifest.listing.items)


def test_a_truncated_listing_is_over_cap(outbox: Path) -> None:
    for n in range(3):
        _write(outbox, f"f{n}.txt")
    manifest = hash_outbox(outbox, OutboxRules(max_entries=2))
    assert (manifest.state, manifest.cap) == ("over_cap", "max_entries")
    assert manifest.files_hashed == 0


# ---------------------------------------------------------------------------- opening one file


def test_a_regular_file_opens_for_the_gate(outbox: Path) -> None:
    _write(outbox, "a/b/model.bin", b"weights")
    with open_outbox_file(outbox, "a/b/model.bin") as handle:
        assert handle.read() == b"weights"
        assert os.fstat(handle.fileno()).st_size == 7


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../outside.txt", "a/../../outside.txt",
                                  "a/..", "./a.txt", "a//b", "a/", "nul\0byte"])
def test_paths_outside_the_outbox_are_refused(tmp_path: Path, outbox: Path, path: str) -> None:
    _write(tmp_path, "outside.txt", b"host")
    _write(outbox, "a.txt")
    with pytest.raises(OutboxError):
        open_outbox_file(outbox, path)


def test_a_link_to_a_file_does_not_open(tmp_path: Path, outbox: Path) -> None:
    os.symlink(_write(tmp_path, "host/secret.txt"), outbox / "model.bin")
    with pytest.raises(OutboxError) as raised:
        open_outbox_file(outbox, "model.bin")
    assert "model.bin" not in raised.value.user_message + raised.value.detail


def test_a_link_in_a_directory_component_does_not_open(tmp_path: Path, outbox: Path) -> None:
    _write(tmp_path, "host/secret.txt")
    os.symlink(tmp_path / "host", outbox / "d")
    with pytest.raises(OutboxError):
        open_outbox_file(outbox, "d/secret.txt")


@pytest.mark.timeout(60)
def test_a_fifo_does_not_open_and_does_not_block(outbox: Path, fifo: Path) -> None:
    with pytest.raises(OutboxError, match="not a regular file"):
        open_outbox_file(outbox, "pipe")


def test_a_directory_does_not_open(outbox: Path) -> None:
    _write(outbox, "d/f.txt")
    with pytest.raises(OutboxError, match="not a regular file"):
        open_outbox_file(outbox, "d")


def test_a_missing_file_does_not_open(outbox: Path) -> None:
    with pytest.raises(OutboxError):
        open_outbox_file(outbox, "missing.txt")
    with pytest.raises(OutboxError):
        open_outbox_file(outbox.parent / "no-outbox", "missing.txt")


def test_errors_never_repeat_the_sandboxs_names(outbox: Path) -> None:
    name = "000 P00000,1940-01-01,M,diabetes"
    os.mkfifo(outbox / name)
    for path in (name, f"{name}/x", f"../{name}"):
        with pytest.raises(OutboxError) as raised:
            open_outbox_file(outbox, path)
        assert "P00000" not in raised.value.user_message + raised.value.detail
