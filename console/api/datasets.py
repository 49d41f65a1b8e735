"""/api/v1/datasets: datasets and their versions, what a version holds (README, files, sizes,
columns: never the files' contents), registering a new version from an upload, retiring one,
and every sandbox and release descending from it."""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from console.api.blueprint import BadApiRequest as _Bad
from console.api.blueprint import api
from console.guards import api_requires, caller, core
from console.permissions import Permission
from console.services import datasets as dataset_service


@api.route("/datasets", methods=["GET"])
@api_requires(Permission.DATASET_READ)
def list_datasets() -> Any:
    return jsonify({"datasets": dataset_service.catalogue(core(), caller())})


@api.route("/datasets", methods=["POST"])
@api_requires(Permission.DATASET_REGISTER)
def register_dataset() -> Any:
    """multipart: `name`, `file` (a .zip of the files, or one file), `allow` (repeatable)."""
    upload = request.files.get("file")
    name = request.form.get("name", "")
    if upload is None or not upload.filename:
        raise _Bad("send the dataset as a multipart 'file' (a .zip, or one file)")
    record = dataset_service.register_upload(core(), caller(), name, upload.filename,
                                             upload.read(), request.form.getlist("allow"))
    response = jsonify(dataset_service.version_dict(record))
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/datasets/{record.name}"
    return response


@api.route("/datasets/<name>", methods=["GET"])
@api_requires(Permission.DATASET_READ)
def get_dataset(name: str) -> Any:
    """The dataset's versions, and `catalog`: what the version a launch would mount holds."""
    body = dataset_service.version_catalog(core(), caller(), name)
    return jsonify({**body.dataset,
                    "catalog": {"version": body.version["version"], **body.catalog}})


@api.route("/datasets/<name>/versions/<int:version>", methods=["GET"])
@api_requires(Permission.DATASET_READ)
def get_dataset_version(name: str, version: int) -> Any:
    """One version and what it holds (`catalog`)."""
    body = dataset_service.version_catalog(core(), caller(), name, version)
    return jsonify({**body.version, "catalog": body.catalog})


@api.route("/datasets/<name>/versions/<int:version>/retire", methods=["POST"])
@api_requires(Permission.DATASET_RETIRE)
def retire_dataset_version(name: str, version: int) -> Any:
    return jsonify(dataset_service.version_dict(
        dataset_service.retire(core(), caller(), name, version)))


@api.route("/datasets/<name>/versions/<int:version>/lineage", methods=["GET"])
@api_requires(Permission.LINEAGE_READ)
def dataset_version_lineage(name: str, version: int) -> Any:
    return jsonify(dataset_service.version_lineage(core(), caller(), name, version))
