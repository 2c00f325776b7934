"""Training throughput: the train component against a bare PyTorch loop on the same model and data,
interleaved in one process, one thread each.

    python benchmarks/train_throughput.py [--rows 20000] [--epochs 10] [--rounds 3]

Two ratios (target >= 0.95): the component's epoch loop (``fit``: training plus per-epoch validation,
checkpoint and MLflow metric logging) against the bare loop's training alone; and the whole
``run_training`` call, which adds fixed costs per job (MLflow run start, parameters, the learning-curve
plot, saving the model) that shrink relative to longer jobs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient
from sklearn.datasets import make_classification

from pillars.components.data.prepare import PrepareParams, prepare
from pillars.components.data.splits import save_metadata, save_split, task_of
from pillars.components.settings import Settings
from pillars.components.registry.tracking import configure_tracking
from pillars.components.training.fit import TrainParams, init_model
from pillars.components.training.train import run_training


def bare_loop(x: np.ndarray, y: np.ndarray, metadata: dict, params: TrainParams) -> float:
    """The textbook loop: same model, optimiser, batches and epochs; nothing else. Returns seconds."""
    model = init_model(task_of(metadata), metadata["prep"], params)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long)
    start = time.perf_counter()
    for epoch in range(params.epochs):
        model.train()
        order = torch.randperm(len(xt))
        for i in range(0, len(order), params.batch_size):
            idx = order[i:i + params.batch_size]
            loss = loss_fn(model(xt[idx]), yt[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # both sides on one core: the comparison, not the machine's load, decides

    work = Path(tempfile.mkdtemp(prefix="pillars-bench-"))
    x, y = make_classification(n_samples=args.rows, n_features=32, n_informative=16, random_state=0)
    table = pd.DataFrame(x, columns=[f"f{i}" for i in range(32)]).assign(label=y)
    table.to_parquet(work / "data.parquet")
    data = prepare(PrepareParams(task="tabular_classification", source=str(work / "data.parquet"), label_column="label"))
    paths = {name: str(work / f"{name}.npz") for name in data.splits}
    for name, split in data.splits.items():
        save_split(paths[name], split)
    save_metadata(work / "meta.json", data.metadata)
    params = TrainParams(epochs=args.epochs, patience=args.epochs + 1, batch_size=64)
    settings = Settings(home=work / ".pillars")
    uri = configure_tracking(f"sqlite:///{work / 'mlflow.db'}", settings)
    x_train, y_train = data.splits["train"]["input-0"], data.splits["train"]["label"]
    samples = len(x_train) * args.epochs

    from pillars.components.registry.tracking import ensure_experiment

    ensure_experiment("bench", settings)  # creates the SQLite schema outside the timed region
    bare, loop, whole = [], [], []
    for r in range(args.rounds):
        bare.append(bare_loop(x_train, y_train, data.metadata, params))
        start = time.perf_counter()
        run_id = run_training(paths["train"], paths["val"], str(work / "meta.json"), params,
                              str(work / f"model{r}"), "bench", kfp_run_id=f"round-{r}", tracking_uri=uri,
                              checkpoint_root=str(work / "ckpt"), progress=False)
        whole.append(time.perf_counter() - start)
        loop.append(MlflowClient().get_run(run_id).data.metrics["train_seconds"])
    b, f, w = statistics.median(bare), statistics.median(loop), statistics.median(whole)
    print(f"rows={len(x_train)} epochs={args.epochs} batch={params.batch_size} rounds={args.rounds} threads=1")
    print(f"bare loop            {samples / b:9.0f} samples/s  (median {b:.2f}s)")
    print(f"component epoch loop {samples / f:9.0f} samples/s  (median {f:.2f}s)  ratio {b / f:.3f}")
    print(f"component whole job  {samples / w:9.0f} samples/s  (median {w:.2f}s)  ratio {b / w:.3f}")

if __name__ == "__main__":
    main()
