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
    max_metric_values: int = 1000
    max_key_length: int = 64
    #: Count-like metrics (`n`, `n_*`, `*_count`, `support`, ...) below k are refused.
    small_count_k: int = 10
    #: A metrics file is a handful of numbers; anything bigger is refused unread.
    max_metrics_bytes: int = MiB
    leak_scan: bool = True
    #: Dataset rows shorter than this are not looked for (too common to mean a leak).
    leak_min_row_bytes: int = 16
