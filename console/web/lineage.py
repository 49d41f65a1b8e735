"""Lineage pages for the roles that follow it across users (officers, auditors, admins): a
sandbox's place in the graph and every sandbox and release descending from a dataset
version; and the links a lineage section carries, shared with the engineer's detail page.

Every view here shows only what the console composed itself: ids, owners, statuses, version
numbers, digests and counts, never a byte a sandbox wrote (tests/unit/console/
test_lineage_pages.py says so per view)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, render_template, url_for

from console.guards import caller, core, requires
from console.permissions import Permission
from console.services import datasets as dataset_service
from console.services import sandboxes as sandbox_service
from console.services.errors import ServiceError
from console.web import may

lineage_pages = Blueprint("lineage_pages", __name__)

#: Where a sandbox id links to, given its owner; None: shown as plain text.
SandboxLink = Callable[[str, str], str | None]


def _error(exc: ServiceError) -> Any:
    return render_template("error.html", status=exc.status, message=exc.message), exc.status


def dataset_link(name: str, version: int) -> str | None:
    """The page of one dataset version for lineage readers, else of the dataset."""
    if may("LINEAGE_READ"):
        return url_for("lineage_pages.dataset_version", name=name, version=version)
    if may("DATASET_READ"):
        return url_for("dataset_pages.detail", name=name)
    return None


def links(body: dict[str, Any], sandbox_link: SandboxLink) -> dict[str, Any]:
    """The links of one lineage (`sandbox_service.lineage`): every sandbox id it names whose
    page the viewer may open, each dataset version's page, the project's."""
    owners: dict[str, str] = {}
    for entry in [*body["inputs"], *body["used_by"]]:
        owners[str(entry["sandbox"])] = str(entry["owner"])
    for node in body["ancestors"]:
        owners[str(node["sandbox"])] = str(node["owner"])
    sandboxes = {sandbox_id: url for sandbox_id, owner in owners.items()
                 if (url := sandbox_link(sandbox_id, owner)) is not None}
    datasets = {f"{d['name']}@{d.get('version', 1)}": url
                for d in [*body["datasets"], *body["descends_from"]]
                if (url := dataset_link(str(d["name"]), int(d.get("version", 1)))) is not None}
    project = url_for("project_pages.detail", name=body["project"]) \
        if body["project"] and may("PROJECT_USE") else None
    return {"sandboxes": sandboxes, "datasets": datasets, "project": project}


@lineage_pages.route("/lineage/sandboxes/<sandbox_id>")
@requires(Permission.LINEAGE_READ)
def sandbox(sandbox_id: str) -> Any:
    """Any sandbox's lineage, each id linking to its own lineage page (audited)."""
    try:
        body = sandbox_service.lineage(core(), caller(), sandbox_id)
    except ServiceError as exc:
        return _error(exc)
    return render_template(
        "lineage_sandbox.html", lineage=body,
        links=links(body, lambda other, _owner: url_for("lineage_pages.sandbox",
                                                        sandbox_id=other)))


@lineage_pages.route("/datasets/<name>/versions/<int:version>")
@requires(Permission.LINEAGE_READ)
def dataset_version(name: str, version: int) -> Any:
    """One dataset version and everything descending from it (audited)."""
    try:
        body = dataset_service.version_lineage(core(), caller(), name, version)
    except ServiceError as exc:
        return _error(exc)
    return render_template("dataset_version.html", body=body, version=body["dataset"])
