"""Projects: a named, quota'd workspace an engineer's sandboxes carry from run to run, one
running sandbox at a time. Creating one asks the policy and makes its volume in the same
step that records it; who besides the owner may work in it is policy (`projects.shared`)."""

from __future__ import annotations

import json
import re

from sqlmodel import col, select

from audit.chain import append, utc_now
from audit.events import AuditAction, EventDraft
from console.core import Caller, Sealroom
from console.models import Project, Sandbox, User
from console.services.auditing import refusals
from console.services.errors import BadRequest, Conflict, EngineDown, NotFound, PolicyDenied
from console.services.lineage import running_in
from sandbox.errors import SandboxError
from sandbox.projects import InvalidProject, ProjectExists

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MIN_QUOTA_MB = 16


def create(core: Sealroom, caller: Caller, name: str, quota_mb: int) -> Project:
    """Create a project and its volume; every refusal is audited and leaves nothing."""
    with refusals(core, caller, AuditAction.PROJECT_CREATE, f"project:{name[:64]}",
                  quota_mb=quota_mb):
        return _create(core, caller, name, quota_mb)


def _create(core: Sealroom, caller: Caller, name: str, quota_mb: int) -> Project:
    if not _NAME.match(name):
        raise BadRequest("project names are lower-case letters, digits, - and _ (max 63)")
    if quota_mb < MIN_QUOTA_MB:
        raise BadRequest(f"a project's quota is at least {MIN_QUOTA_MB} MB")
    with core.read() as session:
        if session.get(Project, name) is not None:
            raise Conflict(f"a project named {name!r} already exists")
        owned = len(session.exec(select(Project.name).where(Project.owner == caller.name)).all())
    decision = core.evaluator.may_create_project(caller.name, caller.role, quota_mb=quota_mb,
                                                 owned=owned)
    if not decision:
        raise PolicyDenied(decision.reason, rule=decision.rule,
                           policy_version=decision.policy_version)
    try:
        core.storage.create_project(name, quota_mb)
    except ProjectExists as exc:
        raise Conflict(f"a project named {name!r} already exists") from exc
    except InvalidProject as exc:
        raise BadRequest(exc.user_message) from exc
    except SandboxError as exc:
        raise EngineDown(f"the project's volume could not be made: {exc.user_message}",
                         detail=exc.detail) from exc
    try:
        with core.transaction() as session:
            if session.get(Project, name) is not None:
                raise Conflict(f"a project named {name!r} already exists")
            owner = session.exec(select(User).where(User.name == caller.name)).one()
            assert owner.id is not None
            record = Project(name=name, owner_id=owner.id, owner=caller.name,
                             quota_mb=quota_mb, created_at=utc_now())
            session.add(record)
            append(session, EventDraft(
                caller.actor, AuditAction.PROJECT_CREATE, f"project:{name}",
                request_id=caller.request_id,
                details={"quota_mb": quota_mb, "rule": decision.rule,
                         "policy_version": decision.policy_version}))
    except BaseException:
        core.storage.remove_project(name)  # fail closed: no row, no volume
        raise
    return record


def _visible(core: Sealroom, caller: Caller, record: Project) -> bool:
    if record.owner == caller.name:
        return True
    rule = core.policy.projects.shared.get(record.name)
    principals = core.evaluator.principals(caller.name, caller.role)
    return rule is not None and bool(principals & set(rule.allow))


def listing(core: Sealroom, caller: Caller) -> list[Project]:
    """The projects `caller` owns or the policy shares with them."""
    with core.read() as session:
        rows = session.exec(select(Project).order_by(col(Project.name))).all()
    return [r for r in rows if _visible(core, caller, r)]


def get(core: Sealroom, caller: Caller, name: str) -> Project:
    with core.read() as session:
        record = session.get(Project, name)
    if record is None or not _visible(core, caller, record):
        raise NotFound("no such project")
    return record


def sandboxes_of(core: Sealroom, name: str) -> list[Sandbox]:
    with core.read() as session:
        return list(session.exec(select(Sandbox).where(Sandbox.project == name)
                                 .order_by(col(Sandbox.created_at).desc())))


def to_dict(core: Sealroom, record: Project) -> dict[str, object]:
    """A project as its users see it: the console's own facts (never its files' names, and
    not how full it is while a sandbox could change that to signal)."""
    with core.read() as session:
        busy = running_in(session, record.name)
    return {
        "name": record.name,
        "owner": record.owner,
        "quota_mb": record.quota_mb,
        "created_at": record.created_at,
        "in_use_by": busy or None,
        "last_sandbox": record.last_sandbox or None,
        "lineage": json.loads(record.lineage),
    }
