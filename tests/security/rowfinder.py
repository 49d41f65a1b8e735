"""Finding dataset rows in what a person was shown: verbatim, and under the encodings an
insider would use (base64 at any alignment, URL-safe or not, hex, UTF-16 as is or under
either, URL escapes). Counts whole rows and, separately, the distinctive field (the patient id)."""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

_ID = re.compile(r"P\d{5}")
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}=*")
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{16,}")


def _decodings(text: str) -> Iterator[tuple[str, str]]:
    """(form, text): the text itself, and every base64, hex and UTF-16 reading of its runs."""
    yield "verbatim", text
    yield "utf-16", text.replace("\x00", "")
    yield "url", urllib.parse.unquote(text)
    for match in _B64_RUN.finditer(text):
        run = match.group().rstrip("=").replace("-", "+").replace("_", "/")
        for shift in range(4):
            part = run[shift:]
            # a dangling sixth of a byte cannot decode; two or three characters can, padded
            part = part[:-1] if len(part) % 4 == 1 else part
            part += "=" * (-len(part) % 4)
            try:
                decoded = base64.b64decode(part).decode("latin-1")
            except (binascii.Error, ValueError):
                continue
            yield "base64", decoded
            yield "base64+utf-16", decoded.replace("\x00", "")
    for match in _HEX_RUN.finditer(text):
        for shift in range(2):
            part = match.group()[shift:]
            decoded = bytes.fromhex(part[:len(part) // 2 * 2]).decode("latin-1")
            yield "hex", decoded
            yield "hex+utf-16", decoded.replace("\x00", "")


@dataclass
class Found:
    """Rows (whole) and patient ids (the distinctive field) found, with the form they were in."""

    rows: dict[int, set[str]] = field(default_factory=dict)
    ids: dict[int, set[str]] = field(default_factory=dict)

    def add(self, other: Found) -> None:
        for mine, theirs in ((self.rows, other.rows), (self.ids, other.ids)):
            for index, forms in theirs.items():
                mine.setdefault(index, set()).update(forms)


def find_rows(texts: list[str], rows: list[str]) -> Found:
    by_id = {row[:6]: i for i, row in enumerate(rows)}
    found = Found()
    for text in texts:
        for form, view in _decodings(text):
            for match in _ID.finditer(view):
                index = by_id.get(match.group())
                if index is None:
                    continue
                found.ids.setdefault(index, set()).add(form)
                if view.startswith(rows[index], match.start()):
                    found.rows.setdefault(index, set()).add(form)
    return found


