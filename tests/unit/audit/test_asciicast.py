"""Recordings (asciicast v2) keep exactly the bytes a terminal was sent, however the gateway
chunked them; a console that died mid-line leaves a file that still reads; the check against
the chain's digests names a missing and a changed recording."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from audit.recordings import (
    AsciicastWriter,
    ExpectedRecording,
    check_recordings,
    digest_of,
    output_bytes,
    read_events,
)


def _write(path: Path, chunks: list[bytes]) -> None:
    writer = AsciicastWriter(path, width=80, height=24, started_at=1000.0)
    for index, chunk in enumerate(chunks):
        writer.output(chunk, 1000.0 + index)
    writer.close()


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_the_writer_keeps_exact_bytes_for_any_chunking(chunks: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "s.cast"
        _write(path, chunks)
        assert output_bytes(path) == b"".join(chunks)


def test_a_character_split_across_chunks_is_kept_whole(tmp_path: Path) -> None:
    text = "naïve — 日本語 🙂\r\n".encode()
    cut = text.index("日".encode()) + 1  # inside a three-byte character
    emoji = text.index("🙂".encode()) + 2  # inside a four-byte one
    path = tmp_path / "s.cast"
    _write(path, [text[:cut], text[cut:emoji], text[emoji:]])
    _, events = read_events(path)
    shown = "".join(data for _, code, data in events if code == "o")
    assert shown == "naïve — 日本語 🙂\r\n"
    assert "\ufffd" not in shown
    assert output_bytes(path) == text


def test_bytes_that_are_not_utf8_come_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    _write(path, [b"\xff\xfe ok \x80", b"\xe6\x97"])  # the last one never completes
    assert output_bytes(path) == b"\xff\xfe ok \x80\xe6\x97"


def test_a_torn_last_line_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    _write(path, [b"one\r\n", b"two\r\n"])
    with path.open("ab") as stream:
        stream.write(b'[3.5, "o", "thr')  # the console died mid-write
    _, events = read_events(path)
    assert [data for _, _, data in events] == ["one\r\n", "two\r\n"]
    assert output_bytes(path) == b"one\r\ntwo\r\n"


def test_the_header_is_asciicast_v2(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    writer = AsciicastWriter(path, width=120, height=40, started_at=1_700_000_000.5,
                             title="alice in sb-1")
    writer.output(b"hi", 1_700_000_001.0)
    writer.close()
    header = json.loads(path.read_bytes().splitlines()[0])
    assert header == {"version": 2, "width": 120, "height": 40, "timestamp": 1_700_000_000,
                      "title": "alice in sb-1"}
    first = json.loads(path.read_bytes().splitlines()[1])
    assert first == [0.5, "o", "hi"]
    assert read_events(path)[0]["version"] == 2


def test_check_recordings_names_a_missing_and_a_changed_file(tmp_path: Path) -> None:
    kept, changed = tmp_path / "ssh-a.cast", tmp_path / "ssh-b.cast"
    _write(kept, [b"kept\r\n"])
    _write(changed, [b"secret\r\n"])
    expected = [ExpectedRecording("ssh-a", kept.name, digest_of(kept).sha256),
                ExpectedRecording("ssh-b", changed.name, digest_of(changed).sha256),
                ExpectedRecording("ssh-c", "ssh-c.cast", "0" * 64),
                ExpectedRecording("ssh-d", "../ssh-a.cast", digest_of(kept).sha256)]
    assert check_recordings(expected[:2], tmp_path) == []
    changed.write_bytes(changed.read_bytes().replace(b"secret", b"benign"))
    problems = {p.session: p for p in check_recordings(expected, tmp_path)}
    assert set(problems) == {"ssh-b", "ssh-c", "ssh-d"}
    assert problems["ssh-b"].problem == "changed"
    assert "ssh-b" in problems["ssh-b"].message and "ssh-b.cast" in problems["ssh-b"].message
    assert problems["ssh-c"].problem == "missing"
    assert "ssh-c.cast" in problems["ssh-c"].message
    assert problems["ssh-d"].problem == "missing"  # a name that leaves the directory
