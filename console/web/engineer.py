"""Engineer pages: my sandboxes, launch a sandbox (on a dataset version, with earlier
sandboxes' outputs as inputs, in a project), and a sandbox's live detail page with its
lineage.

There is no download link anywhere: the outbox is listed by name, size and hash only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from wtforms.fields.choices import SelectChoice

from console.guards import caller, core, requires
from console.models import SandboxStatus
from console.params import whole_number
from console.permissions import Permission
from console.services import datasets as dataset_service
from console.services import launch as launch_service
from console.services import projects as project_service
from console.services import sandboxes as sandbox_service
from console.services import terminal_sessions
from console.services.errors import BadRequest, PolicyDenied, ServiceError
from console.web import lineage as lineage_web
from console.web import refusal
from console.web.forms import LaunchForm, split_ids

engineer = Blueprint("engineer", __name__, url_prefix="/sandboxes")
#: Bundled examples written for an MPI cluster (the form suggests them for one).
CLUSTER_EXAMPLES = frozenset({"mlp-horovod"})
#: At most this many log bytes per poll of the live view.
LIVE_LOG_MAX = 256 * 1024


@engineer.route("")
@requires(Permission.SANDBOX_READ)
def sandboxes() -> Any:
    rows = [sandbox_service.to_dict(r) for r in sandbox_service.list_for(core(), caller())]
    return render_template("sandboxes.html", sandboxes=rows)


#: At most this many of one's own finished sandboxes are offered as inputs (newest first).
INPUT_CHOICES_MAX = 50


def _dataset_choices() -> list[SelectChoice]:
    """Each usable dataset's newest mountable version first (`name`: resolved to the newest
    at launch), then its older mountable versions by number (`name@version`)."""
    choices = []
    for entry in dataset_service.catalogue(core(), caller()):
        if not entry["usable"]:
            continue
        name, pinned = str(entry["name"]), entry["pinned_versions"]
        assert isinstance(pinned, list)
        versions = entry["versions"]
        assert isinstance(versions, list)
        mountable = [v for v in versions
                     if v["retired_at"] is None and (not pinned or v["version"] in pinned)]
        for position, v in enumerate(mountable):
            size = f"{v['files']} files, {v['bytes']:,} bytes"
            choices.append(
                SelectChoice(name, f"{name} — version {v['version']} (newest), {size}")
                if position == 0 else SelectChoice(f"{name}@{v['version']}",
                                                   f"{name}@{v['version']}, {size}"))
    return choices


def _input_choices() -> list[SelectChoice]:
    """The caller's own finished sandboxes, newest first, in the console's own words (id,
    status, launch time, code name: nothing the sandbox wrote)."""
    finished = [r for r in sandbox_service.list_for(core(), caller())
                if SandboxStatus(r.status).terminal][:INPUT_CHOICES_MAX]
    return [SelectChoice(r.id, f"{r.id} — {r.status.replace('_', ' ')}, launched "
                               f"{r.created_at[:16].replace('T', ' ')} UTC, {r.code_name}")
            for r in finished]


def _project_choices() -> list[SelectChoice]:
    choices = [SelectChoice("", "None: a fresh workspace")]
    for row in project_service.listing(core(), caller()):
        shown = project_service.to_dict(core(), row)
        busy = f", in use by {shown['in_use_by']}" if shown["in_use_by"] else ""
        choices.append(SelectChoice(row.name, f"{row.name} (owner {row.owner}, "
                                              f"{row.quota_mb:,} MB{busy})"))
    return choices


def _launch_form() -> LaunchForm:
    form = LaunchForm()
    form.dataset.choices = _dataset_choices()
    form.example.choices = [SelectChoice(name, name + (" (suggested for clusters)"
                                                       if name in CLUSTER_EXAMPLES else ""))
                            for name in launch_service.examples()]
    form.inputs.choices = _input_choices()
    form.project.choices = _project_choices()
    if not form.is_submitted():  # "build on this" and "launch in this project" links
        offered = {c.value for c in form.inputs.choices}
        form.inputs.data = [i for i in request.args.getlist("input") if i in offered]
        asked = request.args.get("project", "")
        if asked in {c.value for c in form.project.choices}:
            form.project.data = asked
    return form


@engineer.route("/new", methods=["GET", "POST"])
@requires(Permission.SANDBOX_LAUNCH)
def new() -> Any:
    form = _launch_form()
    maxima = core().evaluator.limits_for(current_user.name, current_user.role).limits
    if request.method == "POST":
        if not form.validate():
            errors = "; ".join(f"{form[k].label.text}: {' '.join(v)}"
                               for k, v in form.errors.items())
            flash(f"Check the form: {errors}", "error")
            return render_template("sandbox_new.html", form=form, maxima=maxima), 400
        order = launch_service.LaunchOrder(
            datasets=[form.dataset.data], command=form.command.data,
            cpus=float(form.cpus.data), memory_mb=form.memory_mb.data,
            pids=form.pids.data or 256, timeout_s=form.timeout_s.data,
            kind=form.kind.data, ranks=form.ranks.data,
            inputs=[*(form.inputs.data or []), *split_ids(form.other_inputs.data or "")],
            project=form.project.data or "")
        if form.source.data == "upload":
            upload = request.files.get("code")
            if upload is None or not upload.filename:
                flash("Choose a script or zip to upload.", "error")
                return render_template("sandbox_new.html", form=form, maxima=maxima), 400
            order.code_name, order.code = upload.filename, upload.read()
        else:
            order.example = form.example.data
        try:
            record = launch_service.launch(core(), caller(), order)
        except ServiceError as exc:
            flash(refusal(exc), "error")
            return render_template("sandbox_new.html", form=form, maxima=maxima), exc.status
        flash(f"Sandbox {record.id} launched.", "info")
        return redirect(url_for("engineer.detail", sandbox_id=record.id))
    return render_template("sandbox_new.html", form=form, maxima=maxima)


@engineer.route("/<sandbox_id>")
@requires(Permission.SANDBOX_READ)
def detail(sandbox_id: str) -> Any:
    try:
        record = sandbox_service.get(core(), caller(), sandbox_id)
    except ServiceError as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    outbox: dict[str, Any] | None = None
    outbox_note = ""
    try:
        outbox = sandbox_service.outbox(core(), caller(), sandbox_id)
    except PolicyDenied as exc:
        outbox_note = f"{exc.message} (policy rule {exc.rule})"
    lineage = sandbox_service.lineage(core(), caller(), sandbox_id)
    me = current_user.name
    terminal = terminal_sessions.terminal_facts(
        core(), caller(), record, urlsplit(request.host_url).hostname or "localhost")
    return render_template(
        "sandbox_detail.html", sandbox=sandbox_service.to_dict(record), outbox=outbox,
        terminal=terminal,
        outbox_note=outbox_note, approvals_needed=core().policy.release.approvals_needed,
        lineage=lineage, links=lineage_web.links(
            lineage, lambda other, owner: url_for("engineer.detail", sandbox_id=other)
            if owner == me else None))


@engineer.route("/<sandbox_id>/live")
@requires(Permission.LOGS_READ)
def live(sandbox_id: str) -> Any:
    """What the detail page polls: status, new log bytes since `offset` (of one rank's lines
    with `rank`), and the outbox."""
    offset = request.args.get("offset", default=0, type=int)
    rank_arg = request.args.get("rank")
    try:
        rank = None if rank_arg is None else whole_number(rank_arg)
        if rank_arg is not None and rank is None:
            raise BadRequest("rank must be a whole number")
        body: dict[str, Any] = {"log": "", "offset": offset}
        if request.args.get("log", "1") != "0":
            try:
                if rank is None:
                    chunk, start, total = sandbox_service.logs(
                        core(), caller(), sandbox_id, offset=offset, limit=LIVE_LOG_MAX)
                    end = start + len(chunk)
                else:
                    chunk, start, end, total = sandbox_service.rank_logs(
                        core(), caller(), sandbox_id, rank, offset=offset, limit=LIVE_LOG_MAX)
                body.update(log=chunk.decode("utf-8", "replace"), offset=end,
                            total=total, skipped=start - offset)
            except PolicyDenied as exc:  # the viewing budget is used up: say so, once
                body.update(log_refused=exc.message, rule=exc.rule)
        record = sandbox_service.get(core(), caller(), sandbox_id)
        body["sandbox"] = sandbox_service.to_dict(record)
        if SandboxStatus(record.status).terminal and request.args.get("outbox"):
            body["outbox"] = sandbox_service.outbox(core(), caller(), sandbox_id)
    except ServiceError as exc:
        return jsonify({"error": {"code": exc.code, "message": exc.message}}), exc.status
    return jsonify(body)


@engineer.route("/<sandbox_id>/metrics")
@requires(Permission.LOGS_READ)
def metrics(sandbox_id: str) -> Any:
    """What the detail page's charts poll: new training-metric points past `since`."""
    since = whole_number(request.args.get("since", "0"))
    try:
        if since is None:
            raise BadRequest("since must be a whole number")
        return jsonify(sandbox_service.metrics(core(), caller(), sandbox_id, since=since))
    except ServiceError as exc:
        return jsonify({"error": {"code": exc.code, "message": exc.message}}), exc.status


@engineer.route("/<sandbox_id>/stop", methods=["POST"])
@requires(Permission.SANDBOX_STOP)
def stop(sandbox_id: str) -> Any:
    try:
        record = sandbox_service.stop(core(), caller(), sandbox_id)
    except ServiceError as exc:
        flash(exc.message, "error")
        return redirect(url_for("engineer.detail", sandbox_id=sandbox_id)), 303
    flash(sandbox_service.stop_message(record), "info")  # what was recorded, in words
    return redirect(url_for("engineer.detail", sandbox_id=sandbox_id))
