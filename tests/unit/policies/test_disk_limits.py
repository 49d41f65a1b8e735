"""The policy's disk sizes (`resources.*.max_workspace_mb`, `max_outbox_mb`, `max_tmp_mb`):
defaults, per-role overrides with the rule they come from, and bounds a document cannot
cross."""

from __future__ import annotations

import pytest
import yaml

from policies.errors import InvalidPolicy
from policies.schema import default_policy_text, load_policy


def test_the_default_policy_sizes_every_sandbox() -> None:
    policy = load_policy(default_policy_text())
    default = policy.resources.effective("bob", "approver")
    assert (default.limits.max_workspace_mb, default.limits.max_outbox_mb,
            default.limits.max_tmp_mb) == (1024, 256, 512)
    engineer = policy.resources.effective("alice", "engineer")
    assert engineer.limits.max_workspace_mb == 4096
    assert engineer.rule("max_workspace_mb") == "resources.roles.engineer.max_workspace_mb"
    assert default.rule("max_tmp_mb") == "resources.default.max_tmp_mb"


@pytest.mark.parametrize("field, value", [
    ("max_workspace_mb", 8), ("max_outbox_mb", 0), ("max_tmp_mb", 0),
    ("max_workspace_mb", 2 * 1024 * 1024), ("max_tmp_mb", 64 * 1024 + 1)])
@pytest.mark.parametrize("section", ["default", "engineer"])
def test_sizes_out_of_bounds_cannot_load(field: str, value: int, section: str) -> None:
    document = yaml.safe_load(default_policy_text())
    resources = document["resources"]
    (resources["default"] if section == "default" else resources["roles"][section])[field] = value
    with pytest.raises(InvalidPolicy):
        load_policy(yaml.safe_dump(document))
