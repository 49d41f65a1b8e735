"""Edits the console makes to a policy document on someone's behalf (a dataset registered
with its access list), keeping the officer's text, comments and layout where it can."""

from __future__ import annotations

import json
from collections.abc import Sequence

import yaml

from policies.errors import InvalidPolicy, PolicyProblem


def with_dataset_rule(text: str, dataset: str, allow: Sequence[str]) -> str:
    """`text` with `datasets.<dataset>.allow` set to `allow` (the dataset must have no rule)."""
    flow = "[" + ", ".join(json.dumps(p) for p in allow) + "]"
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None and not isinstance(root, yaml.MappingNode):
        raise InvalidPolicy([PolicyProblem("", "a policy is a mapping of sections", 1)])
    entry = next(((k, v) for k, v in (root.value if root else []) if k.value == "datasets"),
                 None)
    if entry is None:
        body = text if not text or text.endswith("\n") else text + "\n"
        return f"{body}datasets:\n  {dataset}:\n    allow: {flow}\n"
    key, value = entry
    indent = int(key.start_mark.column) + 2
    block = f"{' ' * indent}{dataset}:\n{' ' * (indent + 2)}allow: {flow}\n"
    empty = (isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null")) or \
        (isinstance(value, yaml.MappingNode) and not value.value)
    if empty:
        # `datasets:` or `datasets: {}`: replace the value, keep any comment after it
        start, end = value.start_mark.index, value.end_mark.index
        line_end = text.find("\n", end)
        line_end = len(text) if line_end < 0 else line_end
        rest = text[end:line_end].strip()
        comment = f"  {rest}" if rest.startswith("#") else ""
        head = text[:start].rstrip(" ")
        tail = text[line_end + 1:] if line_end < len(text) else ""
        return f"{head}{comment}\n{block}{tail}"
    if isinstance(value, yaml.MappingNode) and value.flow_style is False:
        if any(k.value == dataset for k, _v in value.value):
            raise InvalidPolicy([PolicyProblem(f"datasets.{dataset}",
                                               "the dataset already has a rule", None)])
        # insert as the first entry, at the first entry's indentation
        first = value.value[0][0]
        line_start = text.rfind("\n", 0, first.start_mark.index) + 1
        indent = int(first.start_mark.column)
        block = f"{' ' * indent}{dataset}:\n{' ' * (indent + 2)}allow: {flow}\n"
        return text[:line_start] + block + text[line_start:]
    # a flow mapping with entries: rewrite the document (its comments are lost)
    data = yaml.safe_load(text)
    data["datasets"][dataset] = {"allow": list(allow)}
    return yaml.safe_dump(data, sort_keys=False)
