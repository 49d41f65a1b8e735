"""Registering a dataset from the host through the console: only from the import directory
(`SEALROOM_IMPORT_DIR`, default `<home>/imports`), never from any other host path. The
registration itself, and the grants through the policy, are `datasets.register_dataset`'s.
"""

from __future__ import annotations

from pathlib import Path

from audit.events import AuditAction
from console.core import Caller, Sealroom
from console.models import Dataset
from console.services import datasets
from console.services.auditing import refusals
from console.services.errors import BadRequest, NotFound


def import_root(core: Sealroom) -> Path:
    assert core.settings.import_dir is not None
    return core.settings.import_dir


def candidates(core: Sealroom) -> list[str]:
    """What the import directory holds (its top-level entries, hidden ones left out)."""
    root = import_root(core)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def resolve_import(core: Sealroom, entry: str) -> Path:
    """The host path of `entry`, which must name something inside the import directory once
    every symbolic link is followed; anything else is refused."""
    root = import_root(core)
    if not root.is_dir():
        raise NotFound(f"the import directory {root} does not exist")
    if not entry or "\x00" in entry or Path(entry).is_absolute():
        raise BadRequest("name an entry of the import directory, not a host path")
    real_root = root.resolve(strict=True)
    path = (real_root / entry).resolve()
    if path == real_root or not path.is_relative_to(real_root):
        raise BadRequest(f"{entry!r} is outside the import directory")
    if not path.exists():
        raise NotFound(f"the import directory has no {entry!r}")
    return path


def register_from_import(core: Sealroom, caller: Caller, entry: str, name: str,
                         allow: list[str]) -> Dataset:
    """Register `entry` of the import directory as dataset `name` (or its next version),
    granted to `allow` through the policy."""
    with refusals(core, caller, AuditAction.DATASET_REGISTER, f"dataset:{name[:64]}",
                  source=entry[:200]):
        source = resolve_import(core, entry)
    return datasets.register_dataset(core, caller, source, name, allow)
