"""Which version of a dataset a launch mounts: `name` or `name@version` parsed, resolved
against the registered versions and the policy's pins, and checked again when the launch is
recorded; the files of retired versions removed once unused. Imports no other service, so
the launch, the supervisor and the dataset service can all use it."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence

from sqlmodel import Session, col, select

from audit.chain import append, utc_now
from audit.events import Actor, AuditAction, EventDraft
from console.core import Sealroom
from console.models import LIVE_STATUSES, Dataset, Sandbox
from console.services.errors import BadRequest, Conflict

#: A dataset as a launch names it: `name`, or `name@version`.
_CHOICE = re.compile(r"^([a-z0-9][a-z0-9_-]{0,62})(?:@([1-9][0-9]{0,5}))?$")


def versions_of(session: Session, name: str) -> list[Dataset]:
    return list(session.exec(select(Dataset).where(Dataset.name == name)
                             .order_by(col(Dataset.version).desc())))


def parse_choice(text: str) -> tuple[str, int | None]:
    """`name` or `name@version`, as a launch names a dataset."""
    match = _CHOICE.match(text.strip())
    if match is None:
        raise BadRequest(f"{text[:80]!r} is not a dataset name (name or name@version)")
    return match.group(1), int(match.group(2)) if match.group(2) else None


def resolve(session: Session, name: str, version: int | None,
            pinned: Sequence[int]) -> Dataset:
    """The version a launch mounts: the one asked for, or the newest not retired that the
    policy's pins allow. Retired and unknown versions are refused."""
    rows = versions_of(session, name)
    if not rows:
        raise BadRequest(f"unknown dataset {name!r}")
    if version is not None:
        for row in rows:
            if row.version == version:
                if row.retired_at is not None:
                    raise BadRequest(f"version {version} of dataset {name!r} is retired")
                return row
        raise BadRequest(f"dataset {name!r} has no version {version}")
    for row in rows:
        if row.retired_at is None and (not pinned or row.version in pinned):
            return row
    raise BadRequest(f"dataset {name!r} has no version that may be mounted (every version "
                     "is retired or not among the policy's pins)")


def require_mountable(session: Session, versions: Sequence[dict[str, object]]) -> None:
    """Refuse, in the transaction recording a launch, a version retired since it was chosen."""
    for entry in versions:
        row = session.exec(select(Dataset).where(Dataset.name == entry["name"])
                           .where(Dataset.version == entry["version"])).first()
        if row is None or row.retired_at is not None:
            raise Conflict(f"version {entry['version']} of dataset {entry['name']!r} was "
                           "retired while the sandbox was being launched")


def _in_use(session: Session) -> set[str]:
    """Digests of the dataset versions running sandboxes mount."""
    rows = session.exec(select(Sandbox.datasets)
                        .where(col(Sandbox.status).in_(LIVE_STATUSES))).all()
    return {d["digest"] for text in rows for d in json.loads(text)}


def remove_unused_files(core: Sealroom) -> list[str]:
    """Delete the files of retired versions no running sandbox mounts; their paths."""
    removed: list[str] = []
    with core.read() as session:  # most calls find nothing: no write lock for them
        if session.exec(select(Dataset.id).where(col(Dataset.retired_at).is_not(None))
                        .where(col(Dataset.removed_at).is_(None))).first() is None:
            return removed
    with core.transaction() as session:
        in_use = _in_use(session)
        rows = session.exec(select(Dataset).where(col(Dataset.retired_at).is_not(None))
                            .where(col(Dataset.removed_at).is_(None))).all()
        for row in rows:
            if row.digest in in_use:
                continue
            row.removed_at = utc_now()
            session.add(row)
            append(session, EventDraft(
                Actor.system("datasets"), AuditAction.DATASET_REMOVE,
                f"dataset:{row.name}@{row.version}",
                details={"digest": row.digest, "path": row.path}))
            removed.append(row.path)
    for path in removed:  # recorded first: a crash here leaves files, never a dangling row
        shutil.rmtree(path, ignore_errors=True)
    return removed
