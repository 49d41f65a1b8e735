"""What the release gate checks against: the policy's release section as plain values.

Pure data, no I/O: the console maps the active policy document onto `CheckRules`.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class CheckRules:
    """Limits and switches for one run of the gate's automated checks."""

    weight_types: tuple[str, ...] = (".safetensors", ".onnx")
    metrics_types: tuple[str, ...] = (".json", ".csv")
    pickle_types: tuple[str, ...] = (".pt", ".pth", ".pkl", ".bin")
    #: Pickle-based files may leave only when this is true AND the pickle scan is clean.
    allow_pickle: bool = False
    max_file_bytes: int = 2 * GiB
    max_total_bytes: int = 4 * GiB
    #: Items in a metrics file: every number, every object key and every CSV header column.
    max_metric_values: int = 1000
    #: Characters in one metrics key or CSV column name.
    max_key_length: int = 64
    #: Nesting of objects and arrays in a metrics JSON (the top-level object is depth 1).
    max_key_depth: int = 4
    #: UTF-8 bytes of all metrics keys (or CSV column names) together.
    max_metric_key_bytes: int = 4096
    #: Count-like metrics (`n`, `n_*`, `*_count`, `support`, ...) below k are refused.
    small_count_k: int = 10
    #: Tables a metrics JSON declares (`frequency_tables`, `magnitude_tables`) get acro's
    #: rules: the threshold (`small_count_k`, acro's safe_threshold) on every cell's count,
    #: and for magnitude cells the dominance (n, k) rule (the n largest contributions make up
    #: at least k of the total) and the p% rule (what remains beyond the two largest is less
    #: than p of the largest). Defaults are acro's (safe_nk_n, safe_nk_k, safe_pratio_p).
    dominance_rule: bool = True
    dominance_n: int = 2
    dominance_k: float = 0.9
    p_percent_rule: bool = True
    p_percent: float = 0.1
    #: A metrics file is a handful of numbers; anything bigger is refused unread.
    max_metrics_bytes: int = MiB
    #: UTF-8 bytes of free text in a model: safetensors `__metadata__` keys and values; ONNX
    #: doc strings and metadata_props keys and values.
    max_metadata_bytes: int = 4096
    #: Characters in one tensor name (safetensors) or one ONNX name (graph, node, value, ...).
    max_name_length: int = 128
    #: UTF-8 bytes of every string in a model together (tensor names; for ONNX all strings).
    max_model_strings_bytes: int = 65536
    leak_scan: bool = True
    #: Dataset rows shorter than this are not looked for (too common to mean a leak).
    leak_min_row_bytes: int = 16
