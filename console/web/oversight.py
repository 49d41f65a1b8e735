"""The security officer's page of every running sandbox of every user (owner, datasets,
kind, image, runtime, age, time left, whether the active policy forbids it) with a Stop on
each; auditors read the same page without the Stop.

It shows only text the console composed: ids, user names, dataset names and versions,
image names, statuses, counts and times (tests/unit/console/test_oversight_pages.py)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from console.guards import caller, core, requires, requires_any
from console.permissions import Permission
from console.services import oversight as oversight_service
from console.services import sandboxes as sandbox_service
from console.services.errors import ServiceError
from console.web import may
from console.web.engineer import clock
from console.web.lineage import dataset_link
from console.web.links import sandbox_link

oversight_pages = Blueprint("oversight_pages", __name__, url_prefix="/oversight")


@oversight_pages.route("/sandboxes")
@requires_any(Permission.SANDBOX_OVERSEE, Permission.SANDBOX_INSPECT)
def sandboxes() -> Any:
    try:
        rows = oversight_service.running(core(), caller())
    except ServiceError as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    return render_template("oversight_sandboxes.html", rows=rows, clock=clock,
                           sandbox_link=sandbox_link, dataset_link=dataset_link,
                           may_stop=may("SANDBOX_OVERSEE"),
                           policy_version=core().policy.version,
                           max_reason=oversight_service.MAX_REASON)


@oversight_pages.route("/sandboxes/<sandbox_id>/stop", methods=["POST"])
@requires(Permission.SANDBOX_OVERSEE)
def stop(sandbox_id: str) -> Any:
    try:
        record = oversight_service.stop(core(), caller(), sandbox_id,
                                        request.form.get("reason", ""))
    except ServiceError as exc:
        flash(f"{sandbox_id[:64]}: {exc.message}", "error")
        return redirect(url_for("oversight_pages.sandboxes")), 303
    flash(sandbox_service.stop_message(record), "info")  # what was recorded, in words
    return redirect(url_for("oversight_pages.sandboxes"), 303)
