"""Dataset pages: the catalogue of datasets and their versions, one dataset's versions with
what its newest usable version holds (README, files, sizes, columns), each version's own
catalog, and for security officers and admins registering a new version from an upload and
retiring a version. Engineers see the datasets the policy lets them use."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from console.guards import caller, core, requires
from console.permissions import Permission
from console.services import datasets as dataset_service
from console.services.errors import ServiceError
from console.web import refusal
from console.web.forms import DatasetUploadForm, RetireForm, split_ids

dataset_pages = Blueprint("dataset_pages", __name__, url_prefix="/datasets")


def _catalogue(form: DatasetUploadForm, status: int = 200) -> Any:
    return render_template("datasets.html", datasets=dataset_service.catalogue(core(), caller()),
                           form=form), status


def _detail(name: str, form: DatasetUploadForm, status: int = 200) -> Any:
    if status != 200:
        try:
            dataset_service.dataset_detail(core(), caller(), name)
        except ServiceError:  # a refused upload for a dataset that does not exist (yet)
            return _catalogue(form, status)
    try:
        body = dataset_service.version_catalog(core(), caller(), name)
    except ServiceError as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    form.name.data = name
    return render_template("dataset_detail.html", dataset=body.dataset,
                           version=body.version, catalog=body.catalog, form=form,
                           retire=RetireForm()), status


@dataset_pages.route("")
@requires(Permission.DATASET_READ)
def index() -> Any:
    return _catalogue(DatasetUploadForm())


@dataset_pages.route("/<name>")
@requires(Permission.DATASET_READ)
def detail(name: str) -> Any:
    return _detail(name, DatasetUploadForm())


@dataset_pages.route("/<name>/versions/<int:version>/catalog")
@requires(Permission.DATASET_READ)
def version(name: str, version: int) -> Any:
    """What one version holds: its README, files with sizes, and columns (audited)."""
    try:
        body = dataset_service.version_catalog(core(), caller(), name, version)
    except ServiceError as exc:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status
    return render_template("dataset_catalog.html", dataset=body.dataset,
                           version=body.version, catalog=body.catalog)


@dataset_pages.route("", methods=["POST"])
@requires(Permission.DATASET_REGISTER)
def register() -> Any:
    """A new dataset, or the next version of one (the name says which)."""
    form = DatasetUploadForm()
    name = (form.name.data or "").strip()
    back = request.form.get("from") == "detail" and name
    upload = request.files.get("data")
    message = ""
    if not form.validate():
        message = "Check the form: " + "; ".join(f"{form[k].label.text}: {' '.join(v)}"
                                                 for k, v in form.errors.items())
    elif upload is None or not upload.filename:
        message = "Choose the dataset's files: a .zip, or one file."
    if message:
        flash(message, "error")
        return _detail(name, form, 400) if back else _catalogue(form, 400)
    assert upload is not None and upload.filename
    try:
        record = dataset_service.register_upload(core(), caller(), name, upload.filename,
                                                 upload.read(), split_ids(form.allow.data or ""))
    except ServiceError as exc:
        flash(refusal(exc), "error")
        return _detail(name, form, exc.status) if back else _catalogue(form, exc.status)
    flash(f"Registered {record.name} version {record.version} "
          f"({record.files} files, {record.size_bytes:,} bytes).", "info")
    return redirect(url_for("dataset_pages.detail", name=record.name))


@dataset_pages.route("/<name>/versions/<int:version>/retire", methods=["POST"])
@requires(Permission.DATASET_RETIRE)
def retire(name: str, version: int) -> Any:
    form = RetireForm()
    if not form.validate():
        flash(f"Tick the box to confirm retiring {name}@{version}; nothing was changed.",
              "error")
        return _detail(name, DatasetUploadForm(formdata=None), 400)
    try:
        dataset_service.retire(core(), caller(), name, version)
    except ServiceError as exc:
        flash(refusal(exc), "error")
        return _detail(name, DatasetUploadForm(formdata=None), exc.status)
    flash(f"Version {version} of {name} is retired: no new sandbox may mount it. Its files "
          "are removed once no running sandbox mounts it.", "info")
    return redirect(url_for("dataset_pages.detail", name=name))
