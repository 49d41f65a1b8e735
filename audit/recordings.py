"""Terminal session recordings: asciicast v2 files written as a session runs, their digests
(which enter the audit chain when a session ends), exact replay and the check that a
recording is still the one the chain names.

asciicast v2 is a header line and one JSON array per event: `[seconds, code, data]` with
code "o" (output), "i" (input), "r" (resize, "COLSxROWS") or "m" (marker). Data is text; bytes
that are not UTF-8 are kept as lone surrogates (Python's `surrogateescape`), so `output_bytes`
gives back exactly what the client was sent, while players show a replacement character.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from audit.files import fsync_dir

#: The file mode of a recording: the console's own, like the database.
RECORDING_MODE = 0o600


@dataclass(frozen=True)
class RecordingDigest:
    """What the chain holds of a finished recording."""

    sha256: str
    size: int


@dataclass(frozen=True)
class ExpectedRecording:
    """A recording the chain names: the session, the file name and its recorded digest."""

    session: str
    name: str
    sha256: str


@dataclass(frozen=True)
class RecordingProblem:
    """A recording that is not the one the chain names, in words an auditor reads."""

    session: str
    name: str
    problem: str  # "missing" or "changed"
    message: str


class _Decoder:
    """Bytes to text across chunk boundaries: a multi-byte character split between two reads
    is kept whole; invalid bytes become surrogates that encode back to themselves."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")

    def decode(self, data: bytes, *, final: bool = False) -> str:
        return self._decoder.decode(data, final)


class AsciicastWriter:
    """Writes one session's recording as it happens; every event reaches the operating
    system at once (a console that dies leaves a readable file up to its last event)."""

    def __init__(self, path: Path, *, width: int, height: int, started_at: float,
                 title: str = "", env: dict[str, str] | None = None) -> None:
        self.path = path
        self._started = started_at
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, RECORDING_MODE)
        self._file: IO[bytes] | None = os.fdopen(fd, "wb")
        self._out = _Decoder()
        self._in = _Decoder()
        header: dict[str, Any] = {"version": 2, "width": max(1, width),
                                  "height": max(1, height), "timestamp": int(started_at)}
        if title:
            header["title"] = title
        if env:
            header["env"] = env
        self._line(header)
        fsync_dir(path.parent)

    def _line(self, item: object) -> None:
        if self._file is None:
            return
        # ensure_ascii keeps lone surrogates as \\udcXX escapes: valid JSON, exact bytes back.
        self._file.write(json.dumps(item, ensure_ascii=True, separators=(", ", ": "))
                         .encode("ascii") + b"\n")
        self._file.flush()

    def _event(self, at: float, code: str, data: str) -> None:
        if data:
            self._line([round(max(0.0, at - self._started), 6), code, data])

    def output(self, data: bytes, at: float) -> None:
        self._event(at, "o", self._out.decode(data))

    def input(self, data: bytes, at: float) -> None:
        self._event(at, "i", self._in.decode(data))

    def resize(self, width: int, height: int, at: float) -> None:
        self._event(at, "r", f"{width}x{height}")

    def marker(self, label: str, at: float) -> None:
        self._event(at, "m", label)

    def close(self) -> RecordingDigest:
        """Finish the file (any split character left is written as it is), make it durable,
        and return its digest. Safe to repeat."""
        if self._file is not None:
            self._event(self._started, "o", self._out.decode(b"", final=True))
            self._event(self._started, "i", self._in.decode(b"", final=True))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        return digest_of(self.path)


def digest_of(path: Path) -> RecordingDigest:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return RecordingDigest(sha.hexdigest(), size)


def read_events(path: Path) -> tuple[dict[str, Any], Iterator[tuple[float, str, str]]]:
    """The header and the events of a recording (a torn last line, from a console that died
    mid-write, is left out)."""
    stream = path.open("rb")
    header = json.loads(stream.readline())
    if not isinstance(header, dict) or header.get("version") != 2:
        stream.close()
        raise ValueError(f"{path.name} is not an asciicast v2 recording")

    def events() -> Iterator[tuple[float, str, str]]:
        with stream:
            for line in stream:
                try:
                    at, code, data = json.loads(line)
                except ValueError:
                    return
                yield float(at), str(code), str(data)

    return header, events()


def output_bytes(path: Path) -> bytes:
    """Exactly the bytes the session's client was sent, in order."""
    _, events = read_events(path)
    return b"".join(data.encode("utf-8", "surrogateescape")
                    for _, code, data in events if code == "o")


def check_recordings(expected: Iterable[ExpectedRecording],
                     directory: Path) -> list[RecordingProblem]:
    """Every recording the chain names that is missing or no longer hashes as recorded."""
    problems: list[RecordingProblem] = []
    for item in expected:
        path = directory / item.name
        if Path(item.name).name != item.name or not path.is_file():
            problems.append(RecordingProblem(
                item.session, item.name, "missing",
                f"the recording of session {item.session} ({item.name}) is missing"))
            continue
        if digest_of(path).sha256 != item.sha256:
            problems.append(RecordingProblem(
                item.session, item.name, "changed",
                f"the recording of session {item.session} ({item.name}) was changed after "
                "the session ended: its hash is not the one in the audit chain"))
    return problems
