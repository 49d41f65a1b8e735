"""Datasets: registered from a host path into the data directory with a content hash,
mounted read-only into sandboxes, never downloadable. Who may mount one is policy: the
access list given at registration is activated as a new policy version."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from sqlmodel import Session, select

from audit.chain import append, utc_now
from audit.events import AuditAction, EventDraft
from console.core import Caller, Sealroom
from console.models import Dataset, Role, User
from console.services import policy as policy_service
from console.services.auditing import refusals
from console.services.errors import BadRequest, Conflict
from sandbox.errors import InvalidUpload
from sandbox.files import tree_digest

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


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
        if session.exec(select(Dataset).where(Dataset.name == name)).first():
            raise Conflict(f"dataset {name!r} already exists")
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
        final = core.settings.datasets_dir / f"{name}-{digest[7:19]}"
        if final.exists():
            shutil.rmtree(final)
        (staging / "d").rename(final)
        _make_read_only(final)
        with core.transaction() as session:
            dataset = Dataset(name=name, path=str(final), digest=digest, size_bytes=size,
                              files=files, registered_by=caller.name, created_at=utc_now())
            session.add(dataset)
            session.flush()
            append(session, EventDraft(
                caller.actor, AuditAction.DATASET_REGISTER, f"dataset:{name}",
                request_id=caller.request_id,
                details={"digest": digest, "bytes": size, "files": files,
                         "source": str(source), "allow": principals}))
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
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def usable_datasets(core: Sealroom, user: str, role: str) -> list[Dataset]:
    """The datasets the active policy lets `user` mount, for the launch form."""
    allowed = set(core.evaluator.usable_datasets(user, role))
    with core.read() as session:
        rows = session.exec(select(Dataset).order_by(Dataset.name)).all()
        return [d for d in rows if d.name in allowed]


def find_dataset(session: Session, name: str) -> Dataset | None:
    return session.exec(select(Dataset).where(Dataset.name == name)).first()
