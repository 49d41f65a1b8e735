"""Bundled example for MPI clusters: the demo MLP trained data-parallel with Horovod.

Every rank reads ``train.csv`` from ``$SEALROOM_DATA``, trains on its own shard of the training
rows, and averages gradients with the other ranks (``hvd.DistributedOptimizer``); rank 0
writes the same outbox files as the single example (``model.safetensors``,
``metrics.json``, ``model.safetensors.target.json``), so a cluster's model goes through the
same release gate; its target description names ``single.py``'s model and training function,
which the gate's model attack trains its shadow models with (on one process). Launch it as a
cluster (kind ``mpi``) on the ``sealroom/horovod`` image.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import horovod.torch as hvd
import torch
from safetensors.torch import save_file
from torch import nn

try:  # the live curves on the sandbox page, a line per rank (images/base/sealroom.py)
    from sealroom import declare_total_steps, log_metrics
except ImportError:  # an image without the helper: the log alone
    def declare_total_steps(total: int) -> None:
        pass

    def log_metrics(step: int, *, rank: int | None = None, **values: float) -> None:
        pass

_single = importlib.util.spec_from_file_location(
    "single", Path(__file__).resolve().parent / "single.py")
assert _single is not None and _single.loader is not None
single = importlib.util.module_from_spec(_single)
_single.loader.exec_module(single)

EPOCHS = int(os.environ.get("SEALROOM_EPOCHS", "5"))
BATCH_SIZE = 64
TEST_FRACTION = 0.2
SEED = 0


def main() -> None:
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    started = time.monotonic()
    x, y = single.load_csv(single.data_dir() / "train.csv")
    order = torch.randperm(len(y))  # the same on every rank (same seed)
    n_test = int(len(y) * TEST_FRACTION)
    test_idx, train_idx = order[:n_test], order[n_test:]
    if single.TRAIN_ROWS > 0:
        train_idx = train_idx[:single.TRAIN_ROWS]
    x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    shard = torch.arange(rank, len(y_train), size)  # this rank's rows
    model_params = {"n_features": int(x.shape[1]), "hidden": single.HIDDEN}
    model = single.MLP(**model_params)
    model.standardise_from(x_train)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    train_params = {"epochs": EPOCHS, "lr": single.LEARNING_RATE,
                    "weight_decay": single.WEIGHT_DECAY}
    optimiser = hvd.DistributedOptimizer(
        torch.optim.Adam(model.parameters(), lr=single.LEARNING_RATE,
                         weight_decay=single.WEIGHT_DECAY),
        named_parameters=model.named_parameters())
    hvd.broadcast_optimizer_state(optimiser, root_rank=0)
    loss_fn = nn.CrossEntropyLoss()
    print(f"rank {rank}/{size}: {len(shard)} of {len(y_train)} training rows", flush=True)

    loss_value = math.nan
    if rank == 0:
        declare_total_steps(EPOCHS)
    for epoch in range(1, EPOCHS + 1):
        model.train()
        perm = shard[torch.randperm(len(shard))]
        total, seen = 0.0, 0
        # Every rank takes the same number of steps (allreduce needs all of them).
        steps = math.ceil(len(y_train) / size / BATCH_SIZE)
        for step in range(steps):
            batch = perm[(step * BATCH_SIZE) % len(perm):][:BATCH_SIZE]
            optimiser.zero_grad()
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        shard_loss = total / seen
        loss_value = hvd.allreduce(torch.tensor(shard_loss), name="loss").item()
        model.eval()
        if math.isfinite(shard_loss):  # each rank its own shard's loss
            log_metrics(epoch, rank=rank, shard_loss=shard_loss)
        if rank == 0:
            print(f"epoch {epoch}/{EPOCHS} loss={loss_value:.4f} "
                  f"acc={single.accuracy(model, x_test, y_test):.4f}", flush=True)

    test_accuracy = single.accuracy(model, x_test, y_test)
    if not (math.isfinite(loss_value) and math.isfinite(test_accuracy)):
        sys.exit("training diverged: loss or accuracy is not finite")
    if rank == 0:
        outbox = Path(os.environ.get("SEALROOM_OUTBOX", "/outbox"))
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(outbox / "model.safetensors"), metadata={"format": "pt"})
        metrics = {"accuracy": round(test_accuracy, 6), "loss": round(loss_value, 6),
                   "epochs": EPOCHS, "ranks": size, "n_train": len(y_train),
                   "n_test": len(y_test), "seconds": round(time.monotonic() - started, 3)}
        (outbox / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if single.save_target is not None:  # the module shadow models are made and trained by
            code_dir, module = single.workspace_path(Path(single.__file__))
            single.save_target(
                str(outbox / "model.safetensors"), model_module=module, model_class="MLP",
                model_params=model_params, train_module=module, train_params=train_params,
                dataset=single.data_dir().name, data_file="train.csv",
                label="label", train_rows=train_idx.tolist(), test_rows=test_idx.tolist(),
                batch_size=BATCH_SIZE, code_dir=code_dir)
        print(f"wrote model.safetensors and metrics.json: accuracy={test_accuracy:.4f}",
              flush=True)


if __name__ == "__main__":
    main()
