"""The policy document, as validated types: a contradictory document cannot load."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from policies.errors import InvalidPolicy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourceMaxima(_Strict):
    max_cpus: float = Field(default=1.0, gt=0, le=64)
    max_memory_mb: int = Field(default=4096, ge=64)
    max_pids: int = Field(default=512, ge=16)
    max_timeout_s: int = Field(default=3600, ge=1)
    max_concurrent: int = Field(default=2, ge=0)


class Resources(_Strict):
    default: ResourceMaxima = ResourceMaxima()
    roles: dict[str, ResourceMaxima] = {}

    def for_role(self, role: str) -> ResourceMaxima:
        return self.roles.get(role, self.default)


class Uploads(_Strict):
    max_code_mb: int = Field(default=50, ge=1)
    max_unpacked_mb: int = Field(default=200, ge=1)
    max_files: int = Field(default=2000, ge=1)


class Launch(_Strict):
    roles: list[str] = []


class Release(_Strict):
    """What may leave through the release gate, and how many approvers must agree."""

    weight_types: list[str] = [".safetensors", ".onnx"]
    metrics_types: list[str] = [".json", ".csv"]
    allow_pickle: bool = False
    max_file_mb: int = Field(default=2048, ge=1)
    max_total_mb: int = Field(default=4096, ge=1)
    max_metric_values: int = Field(default=1000, ge=1)
    small_count_k: int = Field(default=10, ge=1)
    leak_scan: bool = True
    leak_min_row_bytes: int = Field(default=16, ge=4)
    approvals_needed: int = Field(default=2, ge=1)


class Policy(_Strict):
    version: int = Field(ge=1)
    resources: Resources = Resources()
    uploads: Uploads = Uploads()
    launch: Launch = Launch()
    release: Release = Release()


def load_policy(text: str) -> Policy:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidPolicy(f"policy is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidPolicy("policy must be a mapping")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise InvalidPolicy(f"policy does not validate: {exc}") from exc


def default_policy_path() -> Path:
    return Path(__file__).with_name("default.yaml")


def load_default_policy() -> Policy:
    return load_policy(default_policy_path().read_text())
