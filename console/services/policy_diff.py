"""What changes between two policy documents, as the console shows it: a unified diff whose
every line carries its kind (added, removed, hunk header, file header or context), so a page
can mark each line without parsing the text again. Policy documents are written by officers,
never by a sandbox."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import StrEnum


class LineKind(StrEnum):
    ADDED = "add"
    REMOVED = "del"
    HUNK = "hunk"
    HEADER = "head"
    CONTEXT = "same"


@dataclass(frozen=True)
class DiffLine:
    kind: LineKind
    text: str


def _kind(line: str) -> LineKind:
    if line.startswith("@@"):
        return LineKind.HUNK
    if line.startswith("+"):
        return LineKind.ADDED
    if line.startswith("-"):
        return LineKind.REMOVED
    return LineKind.CONTEXT


def policy_diff(old: str, new: str, old_label: str, new_label: str) -> list[DiffLine]:
    """A unified diff (three lines of context) from `old` to `new`; empty when the documents
    are the same line for line."""
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), old_label, new_label,
                                 lineterm="")
    # The two file headers come first and only there: an added line "++ x" is not a header.
    return [DiffLine(LineKind.HEADER if n < 2 else _kind(line), line)
            for n, line in enumerate(lines)]
