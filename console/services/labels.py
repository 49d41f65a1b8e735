"""Run names and tags: what an engineer calls a sandbox and the labels they file it under,
what makes either valid, and relabelling a sandbox later (its owner only, audited).

Names and tags are typed by the engineer into the console (form, API, CLI), never written
by the sandbox, so showing them discloses nothing the sandbox chose.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable

from audit.chain import append
from audit.events import AuditAction, EventDraft
from console.core import Caller, Sealroom
from console.models import Sandbox
from console.services.auditing import refusals
from console.services.errors import BadRequest, NotFound

#: The longest name, in characters.
NAME_MAX = 80
#: A tag: lowercase letters, digits, ".", "_" and "-", starting with a letter or digit.
TAG = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
TAG_MAX_LENGTH = 32
#: The most tags one sandbox carries.
TAGS_MAX = 8
#: Unicode categories a name may not hold: controls, format characters (bidi overrides,
#: zero-width), surrogates, private use, unassigned, and line or paragraph separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def parse_name(text: str) -> str:
    """A run's name: any printable text of at most `NAME_MAX` characters, its white space
    at either end dropped ("" for no name)."""
    name = text.strip()
    if len(name) > NAME_MAX:
        raise BadRequest(f"a name has at most {NAME_MAX} characters (this one has "
                         f"{len(name)})")
    for char in name:
        if unicodedata.category(char) in _UNPRINTABLE:
            raise BadRequest(f"a name must be printable text: it holds the character "
                             f"U+{ord(char):04X}")
    return name


def split_tags(text: str) -> list[str]:
    """Tags typed into one text field, separated by commas and/or white space."""
    return [part for part in text.replace(",", " ").split() if part]


def parse_tags(values: Iterable[str]) -> tuple[str, ...]:
    """A run's tags: each lowercased and checked against `TAG`, each once, sorted; at most
    `TAGS_MAX` of them."""
    tags: set[str] = set()
    for value in values:
        tag = value.strip().lower()
        if not TAG.fullmatch(tag):
            shown = tag[:TAG_MAX_LENGTH + 8]
            raise BadRequest(f"{shown!r} is not a tag: a tag has 1 to {TAG_MAX_LENGTH} "
                             "lowercase letters, digits, '.', '_' or '-', and starts with a "
                             "letter or digit")
        tags.add(tag)
    if len(tags) > TAGS_MAX:
        raise BadRequest(f"at most {TAGS_MAX} tags (these are {len(tags)})")
    return tuple(sorted(tags))


def tags_of(record: Sandbox) -> list[str]:
    tags = json.loads(record.tags or "[]")
    return [str(t) for t in tags] if isinstance(tags, list) else []


def relabel(core: Sealroom, caller: Caller, sandbox_id: str, *, name: str | None = None,
            tags: Iterable[str] | None = None) -> Sandbox:
    """The owner renames a sandbox and/or replaces its tags (None: left as it is), at any
    time, running or ended. Recorded as `sandbox:sandbox:label` with the old and new values
    in the same transaction; a refusal (bad name or tag, not the owner's) is recorded too
    and changes nothing."""
    with refusals(core, caller, AuditAction.SANDBOX_LABEL, f"sandbox:{sandbox_id}"):
        new_name = None if name is None else parse_name(name)
        new_tags = None if tags is None else parse_tags(tags)
        with core.transaction() as session:
            record = session.get(Sandbox, sandbox_id)
            if record is None or record.owner != caller.name:
                raise NotFound("no such sandbox")  # the same answer whether it exists or not
            before = {"name": record.name, "tags": tags_of(record)}
            if new_name is not None:
                record.name = new_name
            if new_tags is not None:
                record.tags = json.dumps(list(new_tags))
            after = {"name": record.name, "tags": tags_of(record)}
            if after != before:
                session.add(record)
                append(session, EventDraft(caller.actor, AuditAction.SANDBOX_LABEL,
                                           f"sandbox:{sandbox_id}",
                                           request_id=caller.request_id,
                                           details={"before": before, "after": after}))
        return record
