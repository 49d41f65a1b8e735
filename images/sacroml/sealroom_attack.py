"""``sealroom-attack``: run SACRO-ML's membership-inference attacks on a released model.

Reads the target description a training job wrote with ``sealroom.save_target`` (JSON, version
1), the model (.safetensors), the job's code and the dataset, and runs the chosen attacks with
``output_dir`` set to the outbox, where sacroml writes ``report.json`` and its ROC arrays
(``report_arrays_*.npz``). Exit 0 done; 1 an attack failed; 2 a bad description, code or data
(one line on stderr); 3 a model file that is not .safetensors.

    sealroom-attack --target /attack/target.json --model /attack/model/model.safetensors \\
        --code /attack/code --data /data --out /outbox --attacks lira,worstcase --shadow-models 10
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

EXIT_ATTACK_FAILED = 1
EXIT_BAD_DESCRIPTION = 2
EXIT_BAD_MODEL_FORMAT = 3
ATTACKS = ("lira", "worstcase")
SEED = 0
#: Names the job's modules are imported under: sacroml turns a module path into a module
#: name with ``rstrip(".py")``, so a name must not end in ``p``, ``y`` or ``.``.
MODEL_MODULE = "sealroom_target_model"
TRAIN_MODULE = "sealroom_target_train"


class BadDescription(Exception):
    """The description, the job's code or the dataset cannot make a sacroml target."""


@dataclass(frozen=True)
class Description:
    """A parsed ``target.json``: paths are relative, row numbers 0-based data rows."""

    model_module: str
    model_class: str
    model_params: dict[str, Any]
    train_module: str
    train_params: dict[str, Any]
    batch_size: int
    dataset: str
    data_file: str
    label: str
    train_rows: list[int]
    test_rows: list[int]


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    if not isinstance(value, dict):
        raise BadDescription(f"'{name}' must be an object")
    return value


def _text(section: dict[str, Any], key: str, where: str) -> str:
    value = section.get(key)
    if not isinstance(value, str) or not value:
        raise BadDescription(f"'{where}.{key}' must be a non-empty string")
    return value


def _relative(path: str, where: str) -> str:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or "\\" in path:
        raise BadDescription(f"'{where}' must be a relative path inside its directory")
    return path


def _rows(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        raise BadDescription(f"'rows.{where}' must be a non-empty list of row numbers, 0 or more")
    if len(set(value)) != len(value):
        raise BadDescription(f"'rows.{where}' lists a row twice")
    return list(value)


def write_sources(sources: Any, code: Path) -> None:
    """Write the modules a description carries (`sealroom.save_target` puts them there: the
    job's workspace is gone when the gate attacks) under ``code``; none: ``code`` has them."""
    if sources is None:
        return
    if not isinstance(sources, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in sources.items()):
        raise BadDescription("'sources' must map module paths to their text")
    for relative, text in sources.items():
        path = code / _relative(relative, "sources")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def parse_description(raw: Any) -> Description:
    """Check a decoded ``target.json``; raise BadDescription saying what is wrong."""
    if not isinstance(raw, dict) or raw.get("version") != 1:
        raise BadDescription("not a version 1 target description")
    model, train = _section(raw, "model"), _section(raw, "train")
    data, rows = _section(raw, "data"), _section(raw, "rows")
    for section, where in ((model, "model"), (train, "train")):
        if not isinstance(section.get("params"), dict):
            raise BadDescription(f"'{where}.params' must be an object")
    batch_size = train.get("batch_size")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadDescription("'train.batch_size' must be a whole number, 1 or more")
    train_rows, test_rows = _rows(rows.get("train"), "train"), _rows(rows.get("test"), "test")
    if set(train_rows) & set(test_rows):
        raise BadDescription("'rows.train' and 'rows.test' share rows")
    return Description(
        model_module=_relative(_text(model, "module", "model"), "model.module"),
        model_class=_text(model, "class", "model"),
        model_params=model["params"],
        train_module=_relative(_text(train, "module", "train"), "train.module"),
        train_params=train["params"],
        batch_size=batch_size,
        dataset=_relative(_text(data, "dataset", "data"), "data.dataset"),
        data_file=_relative(_text(data, "file", "data"), "data.file"),
        label=_text(data, "label", "data"),
        train_rows=train_rows,
        test_rows=test_rows,
    )


def load_table(path: Path, label: str) -> tuple[Any, Any]:
    """Features (every column but ``label``, in file order, as float32) and integer labels."""
    import numpy as np

    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            if label not in header:
                raise BadDescription(f"the data file has no column {label!r}")
            at = header.index(label)
            features, labels = [], []
            for row in reader:
                if row:
                    labels.append(int(float(row[at])))
                    features.append([float(v) for i, v in enumerate(row) if i != at])
    except (OSError, StopIteration, ValueError, IndexError) as exc:
        raise BadDescription(
            f"the data file cannot be read as a numeric CSV ({type(exc).__name__})") from None
    return np.asarray(features, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def import_module(code: Path, relative: str, name: str) -> ModuleType:
    """Import the job's module ``code/relative`` as ``name`` (sacroml imports it by name)."""
    path = code / relative
    if not path.is_file() or path.suffix != ".py":
        raise BadDescription(f"the job's code has no Python module {relative!r}")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BadDescription(f"{relative!r} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the job's code may raise anything on import
        raise BadDescription(f"importing {relative!r} failed ({type(exc).__name__})") from exc
    return module


def build_target(description: Description, *, model_file: Path, code: Path, data: Path) -> Any:
    """The sacroml Target: the model with its weights, and the train and test rows."""
    import torch
    from sacroml.attacks.target import Target
    from safetensors.torch import load_file

    model_module = import_module(code, description.model_module, MODEL_MODULE)
    if description.train_module == description.model_module:
        sys.modules[TRAIN_MODULE] = model_module
    else:
        import_module(code, description.train_module, TRAIN_MODULE)
    if not callable(getattr(sys.modules[TRAIN_MODULE], "train", None)):
        raise BadDescription(f"{description.train_module!r} has no function 'train'")
    model_class = getattr(model_module, description.model_class, None)
    if not isinstance(model_class, type) or not issubclass(model_class, torch.nn.Module):
        raise BadDescription(f"{description.model_class!r} is not a torch module class")
    try:
        model = model_class(**description.model_params)
        model.load_state_dict(load_file(str(model_file)))
    except Exception as exc:  # noqa: BLE001 - a mismatch shows up as any of several errors
        raise BadDescription(
            f"the model file does not load into {description.model_class}"
            f" ({type(exc).__name__})") from exc
    model.eval()

    x, y = load_table(data / description.dataset / description.data_file, description.label)
    if max(description.train_rows + description.test_rows) >= len(y):
        raise BadDescription(f"a row number is past the data file's {len(y)} rows")
    train, test = description.train_rows, description.test_rows
    return Target(
        model=model,
        model_module_path=f"{MODEL_MODULE}.py",
        model_name=description.model_class,
        model_params=description.model_params,
        train_module_path=f"{TRAIN_MODULE}.py",
        train_params=description.train_params,
        batch_size=description.batch_size,
        dataset_name=description.dataset,
        X_train=x[train], y_train=y[train], X_test=x[test], y_test=y[test],
    )


def run_attacks(target: Any, attacks: Sequence[str], *, out: Path, shadow_models: int) -> None:
    """Run each attack; sacroml adds its results to ``out/report.json``."""
    from sacroml.attacks.likelihood_attack import LIRAAttack
    from sacroml.attacks.worst_case_attack import WorstCaseAttack

    for name in attacks:
        attack: Any
        if name == "lira":
            attack = LIRAAttack(output_dir=str(out), n_shadow_models=shadow_models)
        else:
            attack = WorstCaseAttack(output_dir=str(out), n_reps=5)
        if not attack.attack(target):
            raise RuntimeError(f"sacroml could not run the {name} attack on this target")
    shutil.rmtree(out / "shadow_models", ignore_errors=True)  # the models, not results


def seed_everything() -> None:
    import numpy as np
    import torch

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(int(os.environ.get("SEALROOM_NUM_THREADS", "1")))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sealroom-attack", description=__doc__.split("\n")[0])
    parser.add_argument("--target", type=Path, required=True, help="the target description")
    parser.add_argument("--model", type=Path, required=True, help="the model (.safetensors)")
    parser.add_argument("--code", type=Path, required=True, help="the training job's code")
    parser.add_argument("--data", type=Path, required=True, help="the datasets' directory")
    parser.add_argument("--out", type=Path, required=True, help="where the report goes")
    parser.add_argument("--attacks", default="lira,worstcase", help="comma-separated")
    parser.add_argument("--shadow-models", type=int, default=10)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    try:
        if not attacks or any(a not in ATTACKS for a in attacks):
            raise BadDescription(f"--attacks must name some of {', '.join(ATTACKS)}")
        if args.shadow_models < 1:
            raise BadDescription("--shadow-models must be 1 or more")
        if args.model.suffix != ".safetensors":
            print("sealroom-attack: the model must be a .safetensors state_dict",
                  file=sys.stderr)
            return EXIT_BAD_MODEL_FORMAT
        try:
            raw = json.loads(args.target.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BadDescription(
                f"the description is not readable JSON ({type(exc).__name__})") from None
        description = parse_description(raw)
        seed_everything()
        code = args.code.resolve()
        write_sources(raw.get("sources"), code)
        sys.path.insert(0, str(code))  # the job's modules may import their neighbours
        # sacroml puts the cwd on sys.path: make it the sandbox's scratch space, not the code.
        os.chdir(os.environ.get("TMPDIR") or tempfile.gettempdir())
        target = build_target(description, model_file=args.model, code=code, data=args.data)
    except BadDescription as exc:
        print(f"sealroom-attack: {exc}", file=sys.stderr)
        return EXIT_BAD_DESCRIPTION
    try:
        run_attacks(target, attacks, out=args.out, shadow_models=args.shadow_models)
    except Exception as exc:  # noqa: BLE001 - any failure inside sacroml is the attack's
        print(f"sealroom-attack: the attack failed ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return EXIT_ATTACK_FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
