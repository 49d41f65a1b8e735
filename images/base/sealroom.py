"""Training metrics for the Sealroom console: ``from sealroom import log_metrics``.

Each call prints one line, ``SEALROOM-METRIC {json}``, to standard output in one write. The
console reads these lines from the sandbox's log, keeps finite numbers under short names
(letters, digits and ``_ . / : -``, at most 32 characters), and draws them as live curves on
the sandbox page. Whatever a curve shows spends the sandbox's disclosure budget, so the policy
caps how many points and series a run may show and how fast; the rest is dropped and audited.

    from sealroom import declare_total_steps, log_metrics, save_metrics

    declare_total_steps(EPOCHS)          # the sandbox page shows progress and an estimate
    for epoch in range(EPOCHS):
        ...
        log_metrics(epoch, loss=loss, accuracy=accuracy)
    save_metrics("/outbox/metrics.json")  # the last values, as a file a release can carry

The rank of an MPI/Horovod process is found in the environment (``OMPI_COMM_WORLD_RANK``,
``HOROVOD_RANK``, ``RANK``) unless given. Plain ``print`` keeps working beside it.

A model the gate should attack before release (membership inference, SACRO-ML) needs a target
description beside it: which class and training function make it, and which rows of which
dataset it was trained and tested on. One call writes ``<model file>.target.json``:

    from sealroom import save_target

    save_target("/outbox/model.safetensors", model_module="train.py", model_class="MLP",
                model_params={"n_features": 16, "hidden": 32}, train_module="train.py",
                train_params={"epochs": 5}, dataset="demo", data_file="train.csv",
                label="label", train_rows=train_idx, test_rows=test_idx, batch_size=64)

Module paths are relative to /workspace; the training module has a function
``train(model, dataloader, **train_params)`` that trains a fresh ``model_class(**model_params)``
(the gate trains shadow models with it). Row numbers count the CSV's data rows from 0.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
import sys
from typing import Any

__all__ = ["declare_total_steps", "log_metrics", "save_metrics", "save_target"]

#: What starts a metric line; the console reads nothing else as a metric.
PREFIX = "SEALROOM-METRIC "
#: What the console accepts as a metric name.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./:-]{0,31}")

_last: dict[str, float] = {}


def _rank(rank: int | None) -> int:
    if rank is not None:
        return int(rank)
    for variable in ("OMPI_COMM_WORLD_RANK", "HOROVOD_RANK", "PMI_RANK", "RANK"):
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 0


def _emit(record: dict[str, Any]) -> None:
    line = (PREFIX + json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
    sys.stdout.flush()  # what was printed before comes before
    os.write(sys.stdout.fileno(), line)  # one write: never interleaved with another rank's


def log_metrics(step: int, *, rank: int | None = None, **values: float) -> None:
    """Record `values` (name=number) at training step `step`. Names must match ``NAME`` and
    values be finite numbers: anything else raises ValueError here rather than being
    dropped by the console."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError("step must be a whole number, 0 or more")
    numbers: dict[str, float] = {}
    for name, value in values.items():
        if not NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r} is not 1-32 letters, digits or _ . / : -")
        if isinstance(value, bool | str | bytes):
            raise ValueError(f"metric {name!r} must be a number, not {type(value).__name__}")
        number = float(value)  # a torch or numpy scalar becomes a float here
        if not math.isfinite(number):
            raise ValueError(f"metric {name!r} is {number}, not a finite number")
        numbers[name] = number
    if not numbers:
        return
    _emit({"step": step, "rank": _rank(rank), "values": numbers})
    if _rank(rank) == 0:
        _last.update(numbers)


def declare_total_steps(total: int) -> None:
    """Say how many steps the run will take, so the console can show progress."""
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError("total must be a whole number, 1 or more")
    _emit({"total_steps": total, "rank": _rank(None)})


def save_metrics(path: str = "/outbox/metrics.json") -> dict[str, float]:
    """Write rank 0's last value of each metric as a JSON object: the metrics file a release
    request can carry (the gate checks it like any metrics file). Returns what it wrote."""
    final = dict(sorted(_last.items()))
    with open(path, "w", encoding="ascii") as handle:
        json.dump(final, handle, indent=2, allow_nan=False)
        handle.write("\n")
    return final


#: The version of the target description ``save_target`` writes.
TARGET_VERSION = 1


def _relative_path(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty path")
    parts = value.replace("\\", "/").split("/")
    if value.startswith("/") or ".." in parts or "\\" in value:
        raise ValueError(f"{what} must be relative and stay inside its directory: {value!r}")
    return value


#: The most source one description carries (its modules together).
MAX_SOURCE_BYTES = 1 << 20


def _sources(modules: set[str], code_dir: str | os.PathLike[str]) -> dict[str, str]:
    sources, total = {}, 0
    for module in sorted(modules):
        path = os.path.join(os.fspath(code_dir), module)
        try:
            with open(path, encoding="utf-8") as handle:
                sources[module] = handle.read()
        except (OSError, UnicodeDecodeError):
            raise ValueError(f"the module {module!r} is not a readable UTF-8 file under "
                             f"{os.fspath(code_dir)}") from None
        total += len(sources[module].encode("utf-8"))
    if total > MAX_SOURCE_BYTES:
        raise ValueError(f"the modules together are over {MAX_SOURCE_BYTES >> 10} KiB")
    return sources


def _row_numbers(rows: Any, what: str) -> list[int]:
    """Whole numbers from a list, range, numpy array or torch tensor of them."""
    if isinstance(rows, str | bytes | dict):
        raise ValueError(f"{what} must be a list of row numbers")
    numbers: list[int] = []
    try:
        for row in rows:
            if isinstance(row, bool):
                raise TypeError
            numbers.append(operator.index(row))  # a numpy or torch integer too
    except TypeError:
        raise ValueError(f"{what} must be a list of whole numbers (row numbers)") from None
    if not numbers:
        raise ValueError(f"{what} must not be empty")
    if min(numbers) < 0:
        raise ValueError(f"{what} must hold row numbers, 0 or more (0 is the first data row)")
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"{what} lists a row more than once")
    return numbers


def _json_params(params: object, what: str) -> dict[str, Any]:
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise ValueError(f"{what} must be a dict with string keys")
    try:
        text = json.dumps(params, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must hold only JSON values (numbers, text, lists): {exc}") \
            from None
    decoded: dict[str, Any] = json.loads(text)
    if decoded != params:  # a tuple became a list, an int key a string: not what was meant
        raise ValueError(f"{what} must hold only JSON values (numbers, text, lists, dicts)")
    return decoded


def save_target(model_file: str | os.PathLike[str], *, model_module: str, model_class: str,
                model_params: dict[str, Any], train_module: str, train_params: dict[str, Any],
                dataset: str, data_file: str, label: str, train_rows: Any, test_rows: Any,
                batch_size: int, code_dir: str | os.PathLike[str] = "/workspace") -> str:
    """Write ``<model_file>.target.json``: what the release gate needs to attack the model,
    the source of its modules (paths relative to ``code_dir``) included.

    Raises ValueError, saying which argument is wrong, before writing anything. Returns the
    path written.
    """
    if not isinstance(model_file, str | os.PathLike) or not os.fspath(model_file):
        raise ValueError("model_file must be the path of the saved model")
    if not isinstance(model_class, str) or not model_class.isidentifier():
        raise ValueError("model_class must be the name of the model's class")
    if not isinstance(label, str) or not label:
        raise ValueError("label must be the name of the label column")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("batch_size must be a whole number, 1 or more")
    train = _row_numbers(train_rows, "train_rows")
    test = _row_numbers(test_rows, "test_rows")
    if set(train) & set(test):
        raise ValueError("train_rows and test_rows must not share rows")
    description = {
        "version": TARGET_VERSION,
        "model": {"file": os.path.basename(os.fspath(model_file)),
                  "module": _relative_path(model_module, "model_module"),
                  "class": model_class,
                  "params": _json_params(model_params, "model_params")},
        "train": {"module": _relative_path(train_module, "train_module"),
                  "params": _json_params(train_params, "train_params"),
                  "batch_size": batch_size},
        "data": {"dataset": _relative_path(dataset, "dataset"),
                 "file": _relative_path(data_file, "data_file"),
                 "label": label},
        "rows": {"train": train, "test": test},
    }
    # The job's workspace is gone once it ends: the modules travel in the description.
    description["sources"] = _sources({model_module, train_module}, code_dir)
    path = os.fspath(model_file) + ".target.json"
    with open(path, "w", encoding="ascii") as handle:
        json.dump(description, handle, separators=(",", ":"))
        handle.write("\n")
    return path
