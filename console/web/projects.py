"""Project pages for engineers: the projects they own or share, creating one (name and
quota), and one project's facts and sandboxes. Only the console's own facts are shown:
never the names of the files in a project's workspace, nor how full it is (a sandbox could
signal through either)."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_login import current_user

from console.guards import caller, core, requires
from console.permissions import Permission
from console.services import projects as project_service
from console.services.errors import ServiceError
from console.web import refusal
from console.web.forms import ProjectForm
from console.web.lineage import dataset_link

project_pages = Blueprint("project_pages", __name__, url_prefix="/projects")


def _listing(form: ProjectForm, status: int = 200) -> Any:
    rows = [project_service.to_dict(core(), p)
            for p in project_service.listing(core(), caller())]
    return render_template("projects.html", projects=rows, form=form), status


@project_pages.route("", methods=["GET", "POST"])
@requires(Permission.PROJECT_USE)
def index() -> Any:
    form = ProjectForm()
    if not form.is_submitted():
        return _listing(form)
    if not form.validate():
        errors = "; ".join(f"{form[k].label.text}: {' '.join(v)}"
                           for k, v in form.errors.items())
        flash(f"Check the form: {errors}", "error")
        return _listing(form, 400)
    try:
        record = project_service.create(core(), caller(), form.name.data.strip(),
                                        form.quota_mb.data)
    except ServiceError as exc:
        flash(refusal(exc), "error")
        return _listing(form, exc.status)
    flash(f"Project {record.name} created.", "info")
    return redirect(url_for("project_pages.detail", name=record.name))


@project_pages.route("/<name>")
@requires(Permission.PROJECT_USE)
def detail(name: str) -> Any:
    try:
        record = project_service.get(core(), caller(), name)
    except ServiceError as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    body = project_service.to_dict(core(), record)
    rows = project_service.sandboxes_of(core(), name)
    # Only the console's own facts of each sandbox: id, owner, status, launch time.
    sandboxes = [{"id": s.id, "owner": s.owner, "status": s.status, "created_at": s.created_at}
                 for s in rows]
    links = {"sandboxes": {s.id: url_for("engineer.detail", sandbox_id=s.id) for s in rows
                           if s.owner == current_user.name},
             "datasets": {f"{d['name']}@{d.get('version', 1)}": url
                          for d in json.loads(record.lineage)
                          if (url := dataset_link(d["name"], int(d.get("version", 1))))}}
    return render_template("project_detail.html", project=body, sandboxes=sandboxes,
                           links=links)
