"""Datasets and their versions: registered from a host path into the data directory with a
content hash (a known name gets its next version), mounted read-only into sandboxes, never
downloadable; retired versions take no new mounts and their files go once no running
sandbox uses them. Who may mount one is policy: the access list given at registration is
activated as a new policy version. What a version holds (its catalog) is shown to those who
may use it (`version_catalog`, read by `dataset_catalog`)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from sqlmodel import Session, col, select

from audit.chain import append, utc_now
from audit.events import AuditAction, EventDraft
from console.core import Caller, Sealroom
from console.files import seal_dataset_copy
from console.models import Dataset, Role, User
from console.permissions import Permission, role_has
from console.services import dataset_catalog, dataset_versions
from console.services import lineage as lineage_service
from console.services import policy as policy_service
from console.services.auditing import refusals
from console.services.errors import BadRequest, Conflict, NotFound
from sandbox.errors import InvalidUpload
from sandbox.files import UploadLimits, tree_digest, unpack_code

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

log = logging.getLogger(__name__)


def _principal(core: Sealroom, session: Session, text: str) -> str:
    """A grant names a user, a role or a policy group; `role:engineer` and `engineer` (a
    role) both work."""
    if text.startswith("group:"):
        if text[6:] not in core.policy.groups:
            raise BadRequest(f"the active policy defines no group {text[6:]!r}")
        return text
    value = text.removeprefix("role:")
    if value in {r.value for r in Role}:
        return f"role:{value}"
    if text.startswith("role:"):
        raise BadRequest(f"unknown role {value!r}")
    if session.exec(select(User).where(User.name == text)).first() is None:
        raise BadRequest(f"--allow names neither a user nor a role: {text!r}")
    return text


def register_dataset(core: Sealroom, caller: Caller, source: Path, name: str,
                     allow: list[str]) -> Dataset:
    with refusals(core, caller, AuditAction.DATASET_REGISTER, f"dataset:{name[:64]}"):
        return _register(core, caller, source, name, allow)


def _register(core: Sealroom, caller: Caller, source: Path, name: str,
              allow: list[str]) -> Dataset:
    if not _NAME.match(name):
        raise BadRequest("dataset names are lower-case letters, digits, - and _ (max 63)")
    source = source.resolve()
    if not source.exists():
        raise BadRequest(f"no such path: {source}")
    with core.read() as session:
        versions = list(session.exec(select(Dataset).where(Dataset.name == name)))
        principals = list(dict.fromkeys(_principal(core, session, a) for a in allow))
    # Copy first (outside the transaction), then record; a failure leaves no row and no copy.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=core.settings.datasets_dir))
    try:
        if source.is_dir():
            shutil.copytree(source, staging / "d", symlinks=True)
        else:
            (staging / "d").mkdir()
            shutil.copy2(source, staging / "d" / source.name)
        try:
            digest, size, files = tree_digest(staging / "d")
        except InvalidUpload as exc:
            raise BadRequest(f"dataset refused: {exc.user_message}") from exc
        for known in versions:
            if known.digest == digest:
                raise Conflict(f"these files are already version {known.version} of "
                               f"dataset {name!r}")
        version = max((v.version for v in versions), default=0) + 1
        final = core.settings.datasets_dir / f"{name}-v{version}-{digest[7:19]}"
        if final.exists():
            shutil.rmtree(final)
        (staging / "d").rename(final)
        _make_read_only(final)
        with core.transaction() as session:
            if session.exec(select(Dataset).where(Dataset.name == name)
                            .where(Dataset.version == version)).first() is not None:
                raise Conflict(f"version {version} of dataset {name!r} was registered at the "
                               "same time; register again")
            dataset = Dataset(name=name, version=version, path=str(final), digest=digest,
                              size_bytes=size, files=files, registered_by=caller.name,
                              created_at=utc_now())
            session.add(dataset)
            session.flush()
            append(session, EventDraft(
                caller.actor, AuditAction.DATASET_REGISTER, f"dataset:{name}",
                request_id=caller.request_id,
                details={"digest": digest, "version": version, "bytes": size,
                         "files": files, "source": str(source), "allow": principals}))
            if principals:
                policy_service.grant_dataset(core, session, caller, name, principals)
        return dataset
    except BaseException:
        if "final" in locals() and final.exists():
            shutil.rmtree(final, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _make_read_only(root: Path) -> None:
    # The sandbox user's alone (0500/0400, owned 10001): mounted read-only into sandboxes,
    # unreadable to every other local user; a link in the copy is never followed.
    seal_dataset_copy(root)


def usable_datasets(core: Sealroom, user: str, role: str) -> list[Dataset]:
    """The newest usable version of each dataset the active policy lets `user` mount, for
    the launch form."""
    allowed = set(core.evaluator.usable_datasets(user, role))
    with core.read() as session:
        rows = session.exec(select(Dataset).order_by(Dataset.name,
                                                     col(Dataset.version).desc())).all()
    newest: dict[str, Dataset] = {}
    for row in rows:
        if row.name in allowed and row.name not in newest and _mountable(core, row):
            newest[row.name] = row
    return list(newest.values())


def _mountable(core: Sealroom, row: Dataset) -> bool:
    pinned = core.evaluator.pinned_versions(row.name)
    return row.retired_at is None and (not pinned or row.version in pinned)


def find_dataset(session: Session, name: str) -> Dataset | None:
    """The newest version of dataset `name`."""
    return session.exec(select(Dataset).where(Dataset.name == name)
                        .order_by(col(Dataset.version).desc())).first()


# --- retiring a version ---------------------------------------------------------------------


def retire(core: Sealroom, caller: Caller, name: str, version: int) -> Dataset:
    """Retire a version: no new mounts from now on; its files are removed once no running
    sandbox mounts it (now, or when the last one ends)."""
    with refusals(core, caller, AuditAction.DATASET_RETIRE, f"dataset:{name[:64]}@{version}"), \
            core.transaction() as session:
        row = session.exec(select(Dataset).where(Dataset.name == name)
                           .where(Dataset.version == version)).first()
        if row is None:
            raise NotFound(f"dataset {name!r} has no version {version}")
        if row.retired_at is not None:
            raise Conflict(f"version {version} of dataset {name!r} is already retired")
        row.retired_at = utc_now()
        session.add(row)
        append(session, EventDraft(
            caller.actor, AuditAction.DATASET_RETIRE, f"dataset:{name}@{version}",
            request_id=caller.request_id,
            details={"digest": row.digest, "version": version}))
    dataset_versions.remove_unused_files(core)
    with core.read() as session:
        return session.get(Dataset, row.id) or row


def all_versions(core: Sealroom) -> list[Dataset]:
    """Every version of every dataset, by name then version."""
    with core.read() as session:
        return list(session.exec(select(Dataset).order_by(col(Dataset.name),
                                                          col(Dataset.version))))


# --- from the console: an upload, and what people see -------------------------------------

#: A dataset sent through the console: a zip unpacks, any other file is kept as it is.
UPLOAD_LIMITS = UploadLimits(max_bytes=1 << 30, max_unpacked_bytes=4 << 30, max_files=100_000)
_SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def register_upload(core: Sealroom, caller: Caller, name: str, filename: str, data: bytes,
                    allow: list[str]) -> Dataset:
    """Register `data` (a zip of files, or one file) as dataset `name` or its next version."""
    with refusals(core, caller, AuditAction.DATASET_REGISTER, f"dataset:{name[:64]}"), \
            tempfile.TemporaryDirectory(prefix=".upload-", dir=core.settings.datasets_dir) as tmp:
        root = Path(tmp) / "upload"
        root.mkdir()
        base = PurePosixPath(filename.replace("\\", "/")).name
        if base.lower().endswith(".zip"):
            try:
                unpack_code(base, data, root, UPLOAD_LIMITS)
            except InvalidUpload as exc:
                raise BadRequest(f"dataset refused: {exc.user_message}") from exc
        elif _SAFE_FILE.match(base):
            (root / base).write_bytes(data)
        else:
            raise BadRequest("send a .zip of the dataset's files, or one file whose name is "
                             "letters, digits, '.', '-' and '_'")
        return _register(core, caller, root, name, allow)


def version_dict(row: Dataset) -> dict[str, object]:
    return {"name": row.name, "version": row.version, "label": row.label,
            "digest": row.digest, "bytes": row.size_bytes, "files": row.files,
            "registered_by": row.registered_by, "created_at": row.created_at,
            "retired_at": row.retired_at, "files_removed": row.removed_at is not None}


def catalogue(core: Sealroom, caller: Caller) -> list[dict[str, object]]:
    """Every dataset with its versions, for officers, auditors and admins; an engineer sees
    the datasets the policy lets them use."""
    everything = _sees_every_dataset(caller)
    allowed = set(core.evaluator.usable_datasets(caller.name, caller.role))
    with core.read() as session:
        rows = session.exec(select(Dataset).order_by(Dataset.name,
                                                     col(Dataset.version).desc())).all()
    found: dict[str, dict[str, object]] = {}
    for row in rows:
        if not everything and row.name not in allowed:
            continue
        entry = found.setdefault(row.name, {
            "name": row.name, "versions": [],
            "pinned_versions": list(core.evaluator.pinned_versions(row.name)),
            "usable": row.name in allowed})
        versions = entry["versions"]
        assert isinstance(versions, list)
        versions.append(version_dict(row))
    return list(found.values())


def _sees_every_dataset(caller: Caller) -> bool:
    # the host's operator (the CLI) reads the data directory anyway
    return role_has(caller.role, Permission.LINEAGE_READ) or caller.role == "operator"


def dataset_detail(core: Sealroom, caller: Caller, name: str) -> dict[str, object]:
    for entry in catalogue(core, caller):
        if entry["name"] == name:
            return entry
    raise NotFound("no such dataset")


class VersionCatalog(NamedTuple):
    """One version as its catalog page shows it: the dataset (its versions), the version,
    and what the version holds (`dataset_catalog.Catalog.as_dict`)."""

    dataset: dict[str, object]
    version: dict[str, object]
    catalog: dict[str, object]


def version_catalog(core: Sealroom, caller: Caller, name: str,
                    version: int | None = None) -> VersionCatalog:
    """What one version holds (`version` None: the one a launch naming the dataset would
    mount, else the newest), for someone who may see the dataset. Read from the
    files the dataset's registrar gave, never from a sandbox; audited as a view, and a
    dataset the caller may not see is not found (audited as a refusal)."""
    target = f"dataset:{name[:64]}" + (f"@{version}" if version is not None else "")
    with refusals(core, caller, AuditAction.DATASET_VIEW, target):
        entry = dataset_detail(core, caller, name)
        with core.read() as session:
            rows = dataset_versions.versions_of(session, name)
        row = _chosen(core, rows, version)
        if row is None:
            raise NotFound(f"dataset {name!r} has no version {version}")
    catalog = dataset_catalog.Catalog(available=False) if row.removed_at is not None \
        else dataset_catalog.read_catalog(Path(row.path), row.digest)
    core.record(caller.actor, AuditAction.DATASET_VIEW, target=f"dataset:{row.label}",
                request_id=caller.request_id, digest=row.digest,
                files=len(catalog.files), readme=catalog.readme_file)
    return VersionCatalog(entry, version_dict(row), catalog.as_dict())


def _chosen(core: Sealroom, rows: list[Dataset], version: int | None) -> Dataset | None:
    if version is not None:
        return next((r for r in rows if r.version == version), None)
    return next((r for r in rows if _mountable(core, r)), rows[0] if rows else None)


def version_lineage(core: Sealroom, caller: Caller, name: str,
                    version: int) -> dict[str, object]:
    """Every sandbox and release descending from one dataset version (audited)."""
    with core.read() as session:
        row = session.exec(select(Dataset).where(Dataset.name == name)
                           .where(Dataset.version == version)).first()
        if row is None:
            raise NotFound(f"dataset {name!r} has no version {version}")
        sandboxes, releases = lineage_service.descendants(session, name, version)
    core.record(caller.actor, AuditAction.LINEAGE_VIEW, target=f"dataset:{name}@{version}",
                request_id=caller.request_id,
                sandboxes=len(sandboxes), releases=len(releases))
    direct = {s.id for s in sandboxes
              if any(d["digest"] == row.digest for d in json.loads(s.datasets))}
    return {"dataset": version_dict(row),
            "sandboxes": [{"id": s.id, "owner": s.owner, "status": s.status,
                           "created_at": s.created_at, "mounted": s.id in direct}
                          for s in sandboxes],
            "releases": [{"id": r.id, "sandbox": r.sandbox_id, "status": r.status,
                          "requester": r.requester} for r in releases]}
