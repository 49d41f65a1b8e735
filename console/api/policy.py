"""/api/v1/policy/*: the active policy, its versions, validation, dry run and activation."""

from __future__ import annotations
