"""The target description a training job writes (``sealroom.save_target``, images/base) and
the attack runner that reads it (``sealroom-attack``, images/sacroml): what each refuses, and
that what one writes the other accepts. Both are loaded by path, as the images hold them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

IMAGES = Path(__file__).resolve().parents[3] / "images"


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


helper = _load(IMAGES / "base" / "sealroom.py", "sealroom_target_helper_under_test")
runner = _load(IMAGES / "sacroml" / "sealroom_attack.py", "sealroom_attack_under_test")


#: The job's code, as under /workspace in a sandbox (set for each test).
CODE = Path()
TRAIN_SOURCE = "class MLP:\n    pass\n"


@pytest.fixture(autouse=True)
def job_code(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    code = tmp_path_factory.mktemp("workspace")
    (code / "train.py").write_text(TRAIN_SOURCE)
    (code / "models").mkdir()
    (code / "models" / "net.py").write_text("NET = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "CODE", code)
    return code


def arguments(**changed: Any) -> dict[str, Any]:
    return {"code_dir": CODE, "model_module": "train.py", "model_class": "MLP",
            "model_params": {"n_features": 16, "hidden": 32}, "train_module": "train.py",
            "train_params": {"epochs": 5, "lr": 0.01}, "dataset": "demo",
            "data_file": "train.csv", "label": "label", "train_rows": [3, 0, 2],
            "test_rows": range(4, 6), "batch_size": 64, **changed}


def test_save_target_writes_the_description_beside_the_model(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    written = helper.save_target(str(model), **arguments())
    assert written == f"{model}.target.json"
    assert json.loads(Path(written).read_text()) == {
        "version": 1,
        "model": {"file": "model.safetensors", "module": "train.py", "class": "MLP",
                  "params": {"n_features": 16, "hidden": 32}},
        "train": {"module": "train.py", "params": {"epochs": 5, "lr": 0.01}, "batch_size": 64},
        "data": {"dataset": "demo", "file": "train.csv", "label": "label"},
        "rows": {"train": [3, 0, 2], "test": [4, 5]},
        "sources": {"train.py": TRAIN_SOURCE},  # the workspace is gone when the gate attacks
    }
    assert "save_target" in helper.__all__
    assert "save_target(" in (helper.__doc__ or "")


def test_what_save_target_writes_the_attack_runner_accepts(tmp_path: Path) -> None:
    written = helper.save_target(str(tmp_path / "model.safetensors"),
                                 **arguments(model_module="models/net.py"))
    raw = json.loads(Path(written).read_text())
    description = runner.parse_description(raw)
    assert description.model_module == "models/net.py"
    attack_workspace = tmp_path / "attack"
    runner.write_sources(raw["sources"], attack_workspace)
    assert (attack_workspace / "models" / "net.py").read_text() == "NET = 1\n"
    assert (attack_workspace / "train.py").read_text() == TRAIN_SOURCE
    assert description.model_class == "MLP"
    assert description.train_rows == [3, 0, 2]
    assert description.test_rows == [4, 5]
    assert description.batch_size == 64


class NumpyLikeInt:
    """An integer scalar of numpy or torch: usable as an index, not an int."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def test_row_numbers_may_be_numpy_or_torch_integers(tmp_path: Path) -> None:
    written = helper.save_target(tmp_path / "m.safetensors",  # a Path will do
                                 **arguments(train_rows=[NumpyLikeInt(7), NumpyLikeInt(1)]))
    assert json.loads(Path(written).read_text())["rows"]["train"] == [7, 1]


@pytest.mark.parametrize(("changed", "message"), [
    ({"train_rows": []}, "train_rows must not be empty"),
    ({"test_rows": [1.5]}, "test_rows must be a list of whole numbers"),
    ({"train_rows": [True, 2]}, "train_rows must be a list of whole numbers"),
    ({"train_rows": "0,1"}, "train_rows must be a list of row numbers"),
    ({"train_rows": [-1, 2]}, "0 or more"),
    ({"train_rows": [1, 1]}, "lists a row more than once"),
    ({"test_rows": [0, 9]}, "must not share rows"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 64.0}, "batch_size"),
    ({"model_params": {"hidden": float("nan")}}, "model_params must hold only JSON values"),
    ({"train_params": {"scheduler": object()}}, "train_params must hold only JSON values"),
    ({"train_params": {"betas": (0.9, 0.99)}}, "train_params must hold only JSON values"),
    ({"model_params": {1: 2}}, "model_params must be a dict with string keys"),
    ({"model_params": [16, 32]}, "model_params must be a dict"),
    ({"model_module": "/workspace/train.py"}, "model_module must be relative"),
    ({"train_module": "../elsewhere/train.py"}, "train_module must be relative"),
    ({"data_file": ""}, "data_file must be a non-empty path"),
    ({"dataset": "../secret"}, "dataset must be relative"),
    ({"model_class": "not a name"}, "model_class"),
    ({"label": ""}, "label"),
    ({"model_module": "missing.py"}, "is not a readable UTF-8 file"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_save_target_refuses_a_wrong_argument_and_writes_nothing(
        tmp_path: Path, changed: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        helper.save_target(str(tmp_path / "model.safetensors"), **arguments(**changed))
    assert list(tmp_path.iterdir()) == []


def description(**sections: Any) -> dict[str, Any]:
    good: dict[str, Any] = {
        "version": 1,
        "model": {"file": "model.safetensors", "module": "train.py", "class": "MLP",
                  "params": {}},
        "train": {"module": "train.py", "params": {}, "batch_size": 64},
        "data": {"dataset": "demo", "file": "train.csv", "label": "label"},
        "rows": {"train": [0, 1], "test": [2]},
    }
    for name, fields in sections.items():
        good[name] = fields if not isinstance(fields, dict) else {**good[name], **fields}
    return good


@pytest.mark.parametrize(("raw", "message"), [
    ([], "not a version 1"),
    (description(version=2), "not a version 1"),
    (description(model="MLP"), "'model' must be an object"),
    (description(model={"params": None}), "'model.params'"),
    (description(model={"module": "/etc/passwd"}), "'model.module' must be a relative"),
    (description(data={"file": "../../outbox/x.csv"}), "'data.file' must be a relative"),
    (description(train={"batch_size": True}), "'train.batch_size'"),
    (description(rows={"train": [], "test": [2]}), "'rows.train' must be a non-empty"),
    (description(rows={"train": [0, "1"], "test": [2]}), "'rows.train' must be a non-empty"),
    (description(rows={"train": [0, 0], "test": [2]}), "lists a row twice"),
    (description(rows={"train": [0, 2], "test": [2]}), "share rows"),
    (description(data={"label": 3}), "'data.label' must be a non-empty string"),
])
def test_the_runner_refuses_a_bad_description(raw: Any, message: str) -> None:
    with pytest.raises(runner.BadDescription, match=message):
        runner.parse_description(raw)


def test_the_runner_refuses_a_model_that_is_not_safetensors_before_reading_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = runner.main(["--target", str(tmp_path / "absent.json"), "--model",
                        str(tmp_path / "model.pt"), "--code", str(tmp_path), "--data",
                        str(tmp_path), "--out", str(tmp_path)])
    assert code == runner.EXIT_BAD_MODEL_FORMAT == 3
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["--attacks", "lira,everything"], ["--attacks", ","], ["--shadow-models", "0"]])
def test_the_runner_refuses_bad_options_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code = runner.main(["--target", str(tmp_path / "t.json"), "--model",
                        str(tmp_path / "model.safetensors"), "--code", str(tmp_path),
                        "--data", str(tmp_path), "--out", str(tmp_path), *argv])
    assert code == runner.EXIT_BAD_DESCRIPTION == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_description_that_is_not_json_is_exit_2_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "target.json"
    target.write_text("{not json")
    code = runner.main(["--target", str(target), "--model", str(tmp_path / "m.safetensors"),
                        "--code", str(tmp_path), "--data", str(tmp_path),
                        "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("sealroom-attack: ") and err.count("\n") == 1
