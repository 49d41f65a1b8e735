"""Engineer pages: my sandboxes, launch a sandbox (on a dataset version, with earlier
sandboxes' outputs as inputs, in a project), and a sandbox's live detail page with its
lineage.

There is no download link anywhere: the outbox is listed by name, size and hash only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user
from wtforms.fields.choices import SelectChoice

from audit.events import AuditAction, Outcome
from console.guards import caller, core, requires, requires_any
from console.models import SandboxStatus
from console.params import whole_number
from console.permissions import Permission, role_has
from console.services import datasets as dataset_service
from console.services import (
    held_uploads,
    labels,
    sandbox_search,
    sandbox_usage,
    terminal_sessions,
)
from console.services import launch as launch_service
from console.services import projects as project_service
from console.services import releases as release_service
from console.services import sandboxes as sandbox_service
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
    """My sandboxes, newest first, a page at a time: searched by name or id and filtered by
    status, tag, dataset and kind through GET parameters (a search can be bookmarked)."""
    args = request.args
    choices = {"statuses": sandbox_search.STATUSES, "kinds": sandbox_search.KINDS,
               "tags": sandbox_search.tags_in_use(core(), caller()),
               "datasets": sandbox_search.datasets_in_use(core(), caller())}
    try:
        query = sandbox_search.SandboxQuery.parse(
            q=args.get("q", ""), status=args.get("status", ""), tags=args.getlist("tag"),
            dataset=args.get("dataset", ""), kind=args.get("kind", ""),
            page=args.get("page", ""), default_per_page=sandbox_search.PAGE_SIZE)
    except BadRequest as exc:
        _refused_request(exc.message)
        typed = {"q": args.get("q", ""), "status": args.get("status", ""),
                 "tags": args.getlist("tag"), "dataset": args.get("dataset", ""),
                 "kind": args.get("kind", "")}
        return render_template("sandboxes.html", found=None, query=None, typed=typed,
                               error=exc.message, **choices), 400
    found = sandbox_search.search(core(), caller(), query)
    rows = [sandbox_service.to_dict(r) for r in found.sandboxes]
    typed = {"q": query.text, "status": query.status, "tags": list(query.tags),
             "dataset": query.dataset, "kind": query.kind}
    return render_template("sandboxes.html", sandboxes=rows, found=found, query=query,
                           typed=typed, error="", **choices)


def _refused_request(message: str) -> None:
    """Bad input in a page's parameters or a form, refused before any service acted on it:
    recorded at the request level, as the API's parse-time refusals are."""
    core().record(caller().actor, AuditAction.REQUEST_DENIED,
                  target=f"{request.method} {request.path}"[:200], outcome=Outcome.DENIED,
                  reason=message, request_id=caller().request_id)


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
    status, launch time, code name, and the run's name the engineer typed: nothing the
    sandbox wrote)."""
    finished = [r for r in sandbox_service.list_for(core(), caller())
                if SandboxStatus(r.status).terminal][:INPUT_CHOICES_MAX]
    return [SelectChoice(r.id, f"{r.id} — {r.status.replace('_', ' ')}, launched "
                               f"{r.created_at[:16].replace('T', ' ')} UTC, {r.code_name}"
                               + (f" ({r.name})" if r.name else ""))
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


#: The session's note of a refused launch's upload, kept for the next try.
HELD_UPLOAD = "held_upload"


def _held() -> dict[str, Any] | None:
    """The upload kept from the caller's last refused launch, if it is still kept."""
    held = session.get(HELD_UPLOAD)
    if not isinstance(held, dict) or not held_uploads.exists(core(), str(held.get("token"))):
        session.pop(HELD_UPLOAD, None)
        return None
    return held


def _hold(name: str, code: bytes | None) -> None:
    """Keep the upload of a launch being refused for the next try (replacing any older)."""
    _forget_held()
    if code is not None and name:
        session[HELD_UPLOAD] = {"token": held_uploads.hold(core(), code), "name": name,
                                "size": len(code)}


def _forget_held() -> None:
    held = session.pop(HELD_UPLOAD, None)
    if isinstance(held, dict):
        held_uploads.drop(core(), str(held.get("token")))


def _uploaded() -> tuple[str, bytes | None]:
    """The code file of this request, or else the one kept from the last refused launch."""
    upload = request.files.get("code")
    if upload is not None and upload.filename:
        return upload.filename, upload.read()
    held = _held()
    if held is None:
        return "", None
    code = held_uploads.take(core(), str(held["token"]))
    session.pop(HELD_UPLOAD, None)
    return (str(held["name"]), code) if code is not None else ("", None)


@engineer.route("/new", methods=["GET", "POST"])
@requires(Permission.SANDBOX_LAUNCH)
def new() -> Any:
    form = _launch_form()
    maxima = core().evaluator.limits_for(current_user.name, current_user.role).limits
    if request.method != "POST":
        return render_template("sandbox_new.html", form=form, maxima=maxima, held=_held())
    code_name, code = _uploaded() if form.source.data == "upload" else ("", None)

    def refused(message: str, status: int) -> Any:
        """The form again, with every value as sent and the upload kept for the next try
        (unless the upload itself was refused as too large)."""
        flash(message, "error")
        if form.source.data == "upload" and status != 413:
            _hold(code_name, code)
        return render_template("sandbox_new.html", form=form, maxima=maxima,
                               held=_held()), status

    if not form.validate():
        errors = "; ".join(f"{form[k].label.text}: {' '.join(v)}"
                           for k, v in form.errors.items())
        return refused(f"Check the form: {errors}", 400)
    order = launch_service.LaunchOrder(
        datasets=[form.dataset.data], command=form.command.data,
        shell=form.command_kind.data == "shell",
        cpus=float(form.cpus.data), memory_mb=form.memory_mb.data,
        pids=form.pids.data or 256, timeout_s=form.timeout_s.data,
        kind=form.kind.data, ranks=form.ranks.data,
        inputs=[*(form.inputs.data or []), *split_ids(form.other_inputs.data or "")],
        project=form.project.data or "", name=form.name.data or "",
        tags=labels.split_tags(form.tags.data or ""))
    if form.source.data == "upload":
        if code is None:
            return refused("Choose a script or zip to upload.", 400)
        order.code_name, order.code = code_name, code
    else:
        order.example = form.example.data
    try:
        record = launch_service.launch(core(), caller(), order)
    except ServiceError as exc:
        return refused(refusal(exc), exc.status)
    _forget_held()
    flash(f"Sandbox {record.id} launched.", "info")
    return redirect(url_for("engineer.detail", sandbox_id=record.id))


@engineer.route("/<sandbox_id>")
@requires_any(Permission.SANDBOX_READ, Permission.SANDBOX_INSPECT)
def detail(sandbox_id: str) -> Any:
    """The owner's page; an auditor's is the same read-only (`may_act` false), its log,
    outbox names and metrics fetched through the owner's paid paths, charged to them."""
    return _detail_page(sandbox_id)


@engineer.route("/<sandbox_id>/label", methods=["POST"])
@requires(Permission.SANDBOX_LAUNCH)
def label(sandbox_id: str) -> Any:
    """The owner renames the sandbox and/or replaces its tags (audited); a bad name or tag
    is the page again with the form's error and what was typed, status 400."""
    name, tags = request.form.get("name", ""), request.form.get("tags", "")
    try:
        labels.relabel(core(), caller(), sandbox_id, name=name, tags=labels.split_tags(tags))
    except BadRequest as exc:
        return _detail_page(sandbox_id, label_error=exc.message,
                            label_typed={"name": name, "tags": tags}, status=400)
    except ServiceError as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    flash("Name and tags saved.", "info")
    return redirect(url_for("engineer.detail", sandbox_id=sandbox_id), 303)


def _detail_page(sandbox_id: str, *, label_error: str = "",
                 label_typed: dict[str, str] | None = None, status: int = 200) -> Any:
    """The sandbox's page; after a refused relabelling, with the error and what was typed."""
    try:
        record = sandbox_service.get(core(), caller(), sandbox_id)
    except ServiceError as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    may_act = record.owner == current_user.name
    if not may_act:
        core().record(caller().actor, AuditAction.SANDBOX_VIEW, target=f"sandbox:{sandbox_id}",
                      request_id=caller().request_id, owner=record.owner, read_only=True)
    outbox: dict[str, Any] | None = None
    outbox_note = ""
    try:
        outbox = sandbox_service.outbox(core(), caller(), sandbox_id)
    except PolicyDenied as exc:
        outbox_note = f"{exc.message} (policy rule {exc.rule})"
    lineage = sandbox_service.lineage(core(), caller(), sandbox_id)
    me = current_user.name
    everyone = role_has(current_user.role, Permission.SANDBOX_INSPECT)
    terminal = terminal_sessions.terminal_facts(
        core(), caller(), record, urlsplit(request.host_url).hostname or "localhost")
    return render_template(
        "sandbox_detail.html", sandbox=sandbox_service.to_dict(record), outbox=outbox,
        terminal=terminal, clock=clock, may_act=may_act,
        # Rendered from the record alone (a page never waits on the engine); the live poll,
        # which reads the engine for the log anyway, brings CPU and memory.
        usage=sandbox_usage.figures(core(), record, ask_engine=False),
        log_window=LIVE_LOG_MAX,
        outbox_note=outbox_note, approvals_needed=core().policy.release.approvals_needed,
        requested=release_service.requested_files(core(), caller(), sandbox_id),
        releases=release_service.of_sandbox(core(), caller(), sandbox_id),
        label_error=label_error, label_typed=label_typed,
        lineage=lineage, links=lineage_web.links(
            lineage, lambda other, owner: url_for("engineer.detail", sandbox_id=other)
            if owner == me or everyone else None)), status


@engineer.route("/<sandbox_id>/live")
@requires_any(Permission.LOGS_READ, Permission.SANDBOX_INSPECT)
def live(sandbox_id: str) -> Any:
    """What the detail page polls: status and running figures, new log bytes since `offset`
    (negative: the last bytes; of one rank's lines with `rank`), and the outbox.

    `more` says the log had more than one answer's worth past `offset`: the page asks again
    at once until it reaches the end. A showing is charged and audited by the log service
    (a block shown once is free again), so polling from where the last answer ended never
    pays twice for a byte."""
    offset = request.args.get("offset", default=0, type=int)
    rank_arg = request.args.get("rank")
    try:
        rank = None if rank_arg is None else whole_number(rank_arg)
        if rank_arg is not None and rank is None:
            raise BadRequest("rank must be a whole number")
        if rank is not None and offset < 0:
            raise BadRequest("a rank's lines are read from a position, not from the end")
        record = sandbox_service.get(core(), caller(), sandbox_id)
        ended = SandboxStatus(record.status).terminal
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
                if end < total or not ended:
                    # A character cut by the window waits for the next answer.
                    kept = whole_characters(chunk)
                    end -= len(chunk) - len(kept)
                    chunk = kept
                body.update(log=chunk.decode("utf-8", "replace"), offset=end, start=start,
                            total=total, skipped=max(start - offset, 0) if offset >= 0 else 0,
                            more=total - start > LIVE_LOG_MAX)
            except PolicyDenied as exc:  # the viewing budget is used up: say so, once
                body.update(log_refused=exc.message, rule=exc.rule)
        record = sandbox_service.get(core(), caller(), sandbox_id)
        body["sandbox"] = sandbox_service.to_dict(record)
        body["usage"] = sandbox_usage.figures(core(), record)
        if SandboxStatus(record.status).terminal and request.args.get("outbox"):
            body["outbox"] = sandbox_service.outbox(core(), caller(), sandbox_id)
    except ServiceError as exc:
        return jsonify({"error": {"code": exc.code, "message": exc.message}}), exc.status
    return jsonify(body)


def clock(seconds: float) -> str:
    """A duration as the page shows it (sandbox.js writes the same): "4 min 05 s"."""
    whole = max(round(seconds), 0)
    hours, minutes, rest = whole // 3600, whole % 3600 // 60, whole % 60
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def whole_characters(chunk: bytes) -> bytes:
    """`chunk` without a UTF-8 character its end cuts in two (at most the last 3 bytes)."""
    for back in range(1, min(len(chunk), 4) + 1):
        byte = chunk[-back]
        if byte < 0x80:
            return chunk  # ASCII: nothing cut
        if byte >= 0xC0:  # the lead byte of the last character: is the character whole?
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return chunk if back >= needed else chunk[:-back]
    return chunk


@engineer.route("/<sandbox_id>/metrics")
@requires_any(Permission.LOGS_READ, Permission.SANDBOX_INSPECT)
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
