"""Lineage: what a sandbox builds on (dataset versions, earlier sandboxes' outputs, its
project's workspace) and what builds on it. A launch resolves it here; the gate's leak scan,
the provenance and the lineage pages read the same graph (`sandbox_input` edges, each
sandbox's `project_parent`, and the dataset versions each sandbox descends from)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from console.models import (
    LIVE_STATUSES,
    Dataset,
    OutboxManifest,
    Project,
    ReleaseRequest,
    Sandbox,
    SandboxInput,
    SandboxStatus,
)
from console.services.errors import BadRequest, Conflict
from policies.evaluator import DatasetVersion, OutputsSource, ProjectFacts
from sandbox.spec import InputMount

_LIVE = LIVE_STATUSES


def versions_of(lineage: str) -> tuple[DatasetVersion, ...]:
    """A recorded lineage (JSON list of {name, version, digest}) as (name, version) pairs."""
    return tuple((str(d["name"]), int(d.get("version", 1))) for d in json.loads(lineage))


def union(*lineages: Iterable[Mapping[str, object]]) -> tuple[dict[str, object], ...]:
    """Dataset versions, each once, in a stable order."""
    found: dict[tuple[str, int], dict[str, object]] = {}
    for lineage in lineages:
        for entry in lineage:
            key = (str(entry["name"]), int(str(entry.get("version", 1))))
            found.setdefault(key, {"name": key[0], "version": key[1],
                                   "digest": str(entry.get("digest", ""))})
    return tuple(found[key] for key in sorted(found))


def outputs_digest(manifest: OutboxManifest) -> str:
    """What an ended sandbox's outbox held, as one digest over its hashed manifest."""
    items = sorted((i["path"], i["kind"], i["size"], i.get("sha256") or "")
                   for i in json.loads(manifest.items))
    text = json.dumps(items, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


# --- what a launch builds on ----------------------------------------------------------------


@dataclass(frozen=True)
class BuiltOn:
    """The earlier work a launch asked for, resolved: each input's mount and the facts the
    policy decides on, the project, and the dataset versions all of it descends from."""

    mounts: tuple[InputMount, ...] = ()
    sources: tuple[OutputsSource, ...] = ()
    project: ProjectFacts | None = None
    project_parent: str = ""
    lineage: tuple[dict[str, object], ...] = ()


def built_on(session: Session, inputs: Sequence[str], project: str) -> BuiltOn:
    """Resolve inputs and project; refuse what cannot be built on (yet)."""
    mounts, sources, lineages = [], [], []
    for source_id in inputs:
        row = session.get(Sandbox, source_id)
        if row is None:
            raise BadRequest(f"no sandbox {source_id!r} to take inputs from")
        if not SandboxStatus(row.status).terminal:
            raise Conflict(f"{source_id} has not finished; its outputs can be mounted once "
                           "it has")
        manifest = session.get(OutboxManifest, source_id)
        if manifest is None:
            raise Conflict(f"the outputs of {source_id} are still being hashed; try again "
                           "in a moment")
        if manifest.state != "ready" or manifest.truncated:
            raise Conflict(f"the outputs of {source_id} could not be hashed whole "
                           f"({manifest.detail or manifest.state}), so they cannot be "
                           "recorded as an input")
        mounts.append(InputMount(source_id, outputs_digest(manifest)))
        sources.append(OutputsSource(source_id, row.owner, versions_of(row.lineage)))
        lineages.append(json.loads(row.lineage))
    facts, parent = None, ""
    if project:
        record = session.get(Project, project)
        if record is None:
            raise BadRequest(f"no project named {project!r}")
        busy = running_in(session, project)
        if busy:
            raise Conflict(f"project {project!r} is in use by {busy}; one sandbox works in a "
                           "project at a time")
        facts = ProjectFacts(project, record.owner, versions_of(record.lineage))
        parent = record.last_sandbox
        lineages.append(json.loads(record.lineage))
    return BuiltOn(tuple(mounts), tuple(sources), facts, parent, union(*lineages))


def running_in(session: Session, project: str) -> str:
    """The sandbox working in `project` now, or ""."""
    row = session.exec(select(Sandbox.id).where(Sandbox.project == project)
                       .where(col(Sandbox.status).in_(_LIVE))).first()
    return row or ""


def claim_project(session: Session, project: str, sandbox_id: str, parent: str,
                  lineage: Iterable[Mapping[str, object]]) -> None:
    """In the transaction that records the sandbox: make it the project's one writer, or
    refuse if another launch got there first."""
    record = session.get(Project, project)
    if record is None:
        raise BadRequest(f"no project named {project!r}")
    busy = running_in(session, project)
    if busy or record.last_sandbox != parent:
        raise Conflict(f"project {project!r} is in use by {busy or 'another launch'}; one "
                       "sandbox works in a project at a time")
    record.last_sandbox = sandbox_id
    record.lineage = json.dumps(list(union(json.loads(record.lineage), lineage)))
    session.add(record)


# --- reading the graph ----------------------------------------------------------------------


def scan_datasets(session: Session, record: Sandbox) -> dict[str, Path | None]:
    """Every dataset version the sandbox's outputs descend from, by label (`name@version`),
    for the leak scan: its directory, or None if its files were removed."""
    found: dict[str, Path | None] = {}
    for name, version in versions_of(record.lineage) or tuple(
            (str(d["name"]), int(d.get("version", 1))) for d in json.loads(record.datasets)):
        row = session.exec(select(Dataset).where(Dataset.name == name)
                           .where(Dataset.version == version)).first()
        found[f"{name}@{version}"] = None if row is None or row.removed_at else Path(row.path)
    return found


def parents(record: Sandbox) -> list[str]:
    """The sandboxes whose outputs `record` mounted (in the order asked)."""
    return [str(i["sandbox"]) for i in json.loads(record.inputs)]


def used_by(session: Session, sandbox_id: str) -> list[Sandbox]:
    """The sandboxes that mounted this one's outputs, or continued its project workspace."""
    ids = set(session.exec(select(SandboxInput.sandbox_id)
                           .where(SandboxInput.source_id == sandbox_id)).all())
    ids |= set(session.exec(select(Sandbox.id)
                            .where(Sandbox.project_parent == sandbox_id)).all())
    if not ids:
        return []
    return list(session.exec(select(Sandbox).where(col(Sandbox.id).in_(ids))
                             .order_by(col(Sandbox.created_at))))


def ancestors(session: Session, record: Sandbox) -> list[dict[str, Any]]:
    """Every sandbox `record` builds on, recursively (inputs and project predecessors), as
    provenance nodes; sorted by id."""
    nodes: dict[str, dict[str, Any]] = {}
    todo = [*parents(record), *([record.project_parent]
                                         if record.project_parent else [])]
    while todo:
        sandbox_id = todo.pop()
        if sandbox_id in nodes:
            continue
        row = session.get(Sandbox, sandbox_id)
        if row is None:
            continue
        manifest = session.get(OutboxManifest, sandbox_id)
        inputs = parents(row)
        nodes[sandbox_id] = {
            "sandbox": sandbox_id, "owner": row.owner,
            "outputs": outputs_digest(manifest) if manifest is not None
            and manifest.state == "ready" else "",
            "code": row.code_digest, "image": row.image_digest,
            "datasets": [{"name": d["name"], "version": int(d.get("version", 1)),
                          "digest": d["digest"]} for d in json.loads(row.datasets)],
            "inputs": inputs, "project_parent": row.project_parent}
        todo.extend(inputs)
        if row.project_parent:
            todo.append(row.project_parent)
    return [nodes[key] for key in sorted(nodes)]


def descendants(session: Session, name: str, version: int,
                ) -> tuple[list[Sandbox], list[ReleaseRequest]]:
    """Every sandbox that descends from a dataset version, and the releases made from them."""
    candidates = session.exec(select(Sandbox).where(
        col(Sandbox.lineage).contains(json.dumps(name))).order_by(
        col(Sandbox.created_at))).all()
    found = [s for s in candidates if (name, version) in versions_of(s.lineage)]
    ids = [s.id for s in found]
    releases = list(session.exec(select(ReleaseRequest).where(
        col(ReleaseRequest.sandbox_id).in_(ids)).order_by(
        col(ReleaseRequest.created_at)))) if ids else []
    return found, releases


# --- as people see it -----------------------------------------------------------------------


def sandbox_lineage(session: Session, record: Sandbox) -> dict[str, Any]:
    """A sandbox's place in the graph, in the console's own words: ids, owners, dataset
    versions and digests (nothing a sandbox wrote)."""
    return {
        "sandbox": record.id,
        "datasets": json.loads(record.datasets),
        "inputs": [{"sandbox": i["sandbox"], "owner": i["owner"], "digest": i["digest"]}
                   for i in json.loads(record.inputs)],
        "project": record.project or None,
        "project_parent": record.project_parent or None,
        "descends_from": json.loads(record.lineage),
        "ancestors": ancestors(session, record),
        "used_by": [{"sandbox": s.id, "owner": s.owner, "status": s.status,
                     "via": _via(s, record.id)} for s in used_by(session, record.id)],
    }


def _via(user: Sandbox, source_id: str) -> str:
    """How `user` built on `source_id`: "inputs", "project", or "inputs and project"."""
    ways = [*(["inputs"] if any(i["sandbox"] == source_id for i in json.loads(user.inputs))
              else []), *(["project"] if user.project_parent == source_id else [])]
    return " and ".join(ways) or "inputs"
