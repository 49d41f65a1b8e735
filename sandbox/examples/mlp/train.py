"""Bundled example: train a small MLP on a tabular CSV and put the model in the outbox.

Reads ``train.csv`` (features ``f0..f15``, ``label`` 0/1) from ``$SEALROOM_DATA`` (default: the
only directory under /data), writes ``model.safetensors`` and ``metrics.json`` to
``$SEALROOM_OUTBOX`` (default /outbox). Runs on one CPU in a few seconds.

Beside the model it writes ``model.safetensors.target.json`` (``sealroom.save_target``): the
model class and training function below, and the rows it trained and tested on, so the release
gate can attack the model (membership inference) before it leaves. Knobs for trying that out:
``$SEALROOM_EPOCHS`` (5), ``$SEALROOM_HIDDEN`` (32 units), ``$SEALROOM_WEIGHT_DECAY`` (0) and
``$SEALROOM_TRAIN_ROWS`` (train on only the first N training rows).

Resumes from a checkpoint when one is there: ``$SEALROOM_RESUME``, else the
``model.safetensors`` of the one earlier sandbox mounted under /inputs that has one, else
``/workspace/checkpoint.safetensors`` (a project's workspace keeps it between runs). Every
run also saves its model there, so the next run of a project goes on from it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

try:  # the live curves on the sandbox page (images/base/sealroom.py)
    from sealroom import declare_total_steps, log_metrics
except ImportError:  # an image without the helper: the log alone
    def declare_total_steps(total: int) -> None:
        pass

    def log_metrics(step: int, *, rank: int | None = None, **values: float) -> None:
        pass

try:  # the description the release gate's model attack needs (images/base/sealroom.py)
    from sealroom import save_target
except ImportError:  # an older image: the model is released without one
    save_target = None

EPOCHS = int(os.environ.get("SEALROOM_EPOCHS", "5"))
HIDDEN = int(os.environ.get("SEALROOM_HIDDEN", "32"))
WEIGHT_DECAY = float(os.environ.get("SEALROOM_WEIGHT_DECAY", "0"))
TRAIN_ROWS = int(os.environ.get("SEALROOM_TRAIN_ROWS", "0"))  # 0: every training row
LEARNING_RATE = 1e-2
BATCH_SIZE = 64
TEST_FRACTION = 0.2
SEED = 0


def data_dir() -> Path:
    configured = os.environ.get("SEALROOM_DATA")
    if configured:
        return Path(configured)
    candidates = sorted(p for p in Path("/data").iterdir() if p.is_dir())
    if len(candidates) != 1:
        sys.exit(f"set SEALROOM_DATA: expected one dataset under /data, found {len(candidates)}")
    return candidates[0]


def load_csv(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        if header[-1] != "label":
            sys.exit(f"{path}: the last column must be 'label', not {header[-1]!r}")
        rows = [[float(v) for v in row] for row in reader if row]
    table = torch.tensor(rows, dtype=torch.float32)
    return table[:, :-1], table[:, -1].long()


class Standardise(nn.Module):
    """Scales inputs with the training set's statistics, kept as buffers in the state_dict."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MLP(nn.Sequential):
    """The model: standardise, one hidden ReLU layer, two logits. Made from JSON-able
    parameters, so the release gate can make fresh copies (shadow models) to attack it."""

    def __init__(self, n_features: int = 16, hidden: int = 32) -> None:
        super().__init__(Standardise(torch.zeros(n_features), torch.ones(n_features)),
                         nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def standardise_from(self, x: torch.Tensor) -> None:
        """Scale inputs with the statistics of ``x``, the training rows."""
        self[0].mean.copy_(x.mean(dim=0))
        self[0].std.copy_(x.std(dim=0).clamp_min(1e-6))


def train(model: MLP, dataloader: DataLoader, *, epochs: int = 5, lr: float = LEARNING_RATE,
          weight_decay: float = 0.0,
          on_epoch: Callable[[int, float], None] | None = None) -> MLP:
    """Train ``model`` on the batches of ``dataloader`` (features, labels); the gate trains
    its shadow models with this too. ``on_epoch(epoch, mean loss)`` follows each epoch."""
    model.standardise_from(torch.cat([features for features, _ in dataloader]))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, epochs + 1):
        model.train()
        total, seen = 0.0, 0
        for features, labels in dataloader:
            optimiser.zero_grad()
            loss = loss_fn(model(features), labels.long())
            loss.backward()
            optimiser.step()
            total += loss.item() * len(labels)
            seen += len(labels)
        model.eval()
        if on_epoch is not None:
            on_epoch(epoch, total / seen)
    return model


def workspace_path(path: Path) -> tuple[Path, str]:
    """Where the job's code is (/workspace in a sandbox, the script's folder elsewhere) and
    ``path`` relative to it."""
    try:
        return Path("/workspace"), str(path.absolute().relative_to(Path("/workspace")))
    except ValueError:
        return path.absolute().parent, path.name


def checkpoint() -> Path | None:
    """The checkpoint to resume from, if any (see the module docstring)."""
    configured = os.environ.get("SEALROOM_RESUME")
    if configured:
        return Path(configured)
    inputs = Path(os.environ.get("SEALROOM_INPUTS", "/inputs"))
    found = sorted(inputs.glob("*/model.safetensors")) if inputs.is_dir() else []
    if len(found) > 1:
        sys.exit("more than one input holds model.safetensors: set SEALROOM_RESUME")
    if found:
        return found[0]
    kept = Path("/workspace/checkpoint.safetensors")
    return kept if kept.is_file() else None


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def main() -> None:
    torch.set_num_threads(int(os.environ.get("SEALROOM_NUM_THREADS", "1")))
    torch.manual_seed(SEED)
    outbox = Path(os.environ.get("SEALROOM_OUTBOX", "/outbox"))
    source = data_dir() / "train.csv"
    started = time.monotonic()

    x, y = load_csv(source)
    order = torch.randperm(len(y))
    n_test = int(len(y) * TEST_FRACTION)
    test_idx, train_idx = order[:n_test], order[n_test:]
    if TRAIN_ROWS > 0:
        train_idx = train_idx[:TRAIN_ROWS]
    x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    print(
        f"data {source}: {len(y_train)} train, {len(y_test)} test, {x.shape[1]} features",
        flush=True,
    )

    model_params = {"n_features": int(x.shape[1]), "hidden": HIDDEN}
    model = MLP(**model_params)
    resume = checkpoint()
    if resume is not None:
        model.load_state_dict(load_file(str(resume)))
        model.eval()
        print(f"resumed from {resume}: acc={accuracy(model, x_test, y_test):.4f}", flush=True)

    loss_value = math.nan

    def after_epoch(epoch: int, loss: float) -> None:
        nonlocal loss_value
        loss_value = loss
        epoch_accuracy = accuracy(model, x_test, y_test)
        print(f"epoch {epoch}/{EPOCHS} loss={loss:.4f} acc={epoch_accuracy:.4f}", flush=True)
        if math.isfinite(loss):
            log_metrics(epoch, loss=loss, accuracy=epoch_accuracy)

    declare_total_steps(EPOCHS)
    train_params = {"epochs": EPOCHS, "lr": LEARNING_RATE, "weight_decay": WEIGHT_DECAY}
    batches = DataLoader(TensorDataset(x_train, y_train), batch_size=BATCH_SIZE, shuffle=True)
    train(model, batches, **train_params, on_epoch=after_epoch)

    test_accuracy = accuracy(model, x_test, y_test)
    if not (math.isfinite(loss_value) and math.isfinite(test_accuracy)):
        sys.exit("training diverged: loss or accuracy is not finite")

    outbox.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(outbox / "model.safetensors"), metadata={"format": "pt"})
    if save_target is not None:
        code_dir, module = workspace_path(Path(__file__))
        save_target(str(outbox / "model.safetensors"), model_module=module, model_class="MLP",
                    model_params=model_params, train_module=module, train_params=train_params,
                    dataset=source.parent.name, data_file=source.name, label="label",
                    train_rows=train_idx.tolist(), test_rows=test_idx.tolist(),
                    batch_size=BATCH_SIZE, code_dir=code_dir)
    kept = Path("/workspace/checkpoint.safetensors")
    if os.access(kept.parent, os.W_OK):
        save_file(tensors, str(kept), metadata={"format": "pt"})
    metrics = {
        "accuracy": round(test_accuracy, 6),
        "loss": round(loss_value, 6),
        "epochs": EPOCHS,
        "resumed": int(resume is not None),
        "n_train": len(y_train),
        "n_test": len(y_test),
        "seconds": round(time.monotonic() - started, 3),
    }
    (outbox / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"wrote {outbox / 'model.safetensors'} and metrics.json: accuracy={test_accuracy:.4f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
