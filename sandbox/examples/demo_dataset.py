"""The demo dataset the bundled MLP example trains on: tabular, binary, deterministic.

Written with the standard library only, so the console can create it on a host without numpy.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

N_FEATURES = 16
#: Label noise relative to the signal's spread; the best possible accuracy is about 91%.
NOISE_RATIO = 0.3

_README = """\
Sealroom demo dataset
=====================

train.csv holds {rows} rows of synthetic tabular data: 16 float features f0..f15, each drawn
from a standard normal distribution, and a binary label (0 or 1). The label is the sign of a
hidden linear rule over the features plus Gaussian noise ({noise:.0%} of the rule's spread),
so a linear model or a small MLP reaches about 90% accuracy and nothing reaches 100%.
It was generated with seed {seed} by sandbox/examples/demo_dataset.py and contains no personal
or real-world data.
"""


def write_demo_dataset(directory: Path, rows: int = 10_000, seed: int = 7) -> Path:
    """Write ``train.csv`` and ``README.txt`` into ``directory``; return the CSV's path.

    The same ``rows`` and ``seed`` always give byte-identical files.
    """
    if rows < 1:
        raise ValueError("rows must be positive")
    rng = random.Random(seed)
    weights = [rng.uniform(-1.0, 1.0) for _ in range(N_FEATURES)]
    bias = rng.uniform(-0.2, 0.2)
    signal_spread = sum(w * w for w in weights) ** 0.5
    noise = NOISE_RATIO * signal_spread

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "train.csv"
    with path.open("w", newline="", encoding="ascii") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*(f"f{i}" for i in range(N_FEATURES)), "label"])
        for _ in range(rows):
            features = [rng.gauss(0.0, 1.0) for _ in range(N_FEATURES)]
            score = sum(w * x for w, x in zip(weights, features, strict=True)) + bias
            label = 1 if score + rng.gauss(0.0, noise) > 0 else 0
            writer.writerow([*(f"{x:.6f}" for x in features), label])
    (directory / "README.txt").write_text(
        _README.format(rows=rows, noise=NOISE_RATIO, seed=seed), encoding="ascii"
    )
    return path
