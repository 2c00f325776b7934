"""Train-step peak RSS at 1x and 4x data: streaming Parquet shards against loading the splits into memory.

    python benchmarks/stream_memory.py --rows 500000 --features 32 --engine pandas

For each scale (1x, 4x ``--rows``): a synthetic table is written as Parquet files chunk by chunk, prepared by
the table data step on ``--engine`` (pandas or spark local[*]) into Parquet shards, then trained for one epoch
in a fresh process twice: through :func:`pillars.components.training.stream.fit_stream` and through the
in-memory :func:`pillars.components.training.fit.fit` on :func:`pillars.components.data.shards.load_examples`.
Each training process reports its peak RSS (``VmHWM``: ``ru_maxrss`` would carry the forking parent's) and its RSS after imports, before any data. Prints
one JSON object; the ratio that matters is the streaming peak at 4x over the streaming peak at 1x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_table

TRAIN = r"""
import json, sys, time
import torch
from pillars.components.data.shards import load_examples
from pillars.components.data.splits import load_metadata
from pillars.components.training.fit import TrainParams, fit
from pillars.components.training.stream import fit_stream
torch.set_num_threads(1)
mode, folder = sys.argv[1], sys.argv[2]
metadata = load_metadata(folder + "/metadata.json")
params = TrainParams(epochs=1, batch_size=512, seed=0, patience=5)
def rss(field="VmRSS"):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024
before = rss()
started = time.perf_counter()
if mode == "stream":
    result = fit_stream(folder + "/train", folder + "/val", metadata, params, shuffle_rows=100_000)
else:
    result = fit(load_examples(folder + "/train", metadata["table"]), load_examples(folder + "/val", metadata["table"]),
                 metadata, params)
print(json.dumps({"mode": mode, "rss_before_mb": round(before, 1),
                  "peak_rss_mb": round(rss("VmHWM"), 1),
                  "seconds": round(time.perf_counter() - started, 1),
                  "val_loss": result.history[-1]["val_loss"]}))
"""


def prepare(table: Path, out: Path, engine: str) -> tuple[dict, float]:
    from pillars.components.data.prepare import PrepareParams
    from pillars.components.data.prepare_table import prepare_table
    from pillars.components.data.splits import save_metadata

    params = PrepareParams(task="tabular_classification", source=str(table), label_column="label", seed=0)
    started = time.perf_counter()
    metadata = prepare_table(params, engine, {s: out / s for s in ("train", "val", "test")},
                             master="local[2]")
    save_metadata(out / "metadata.json", metadata)
    return metadata, time.perf_counter() - started


def train(folder: Path, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", TRAIN, mode, str(folder)], capture_output=True, text=True,
                          check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--engine", default="pandas", choices=("pandas", "spark"))
    parser.add_argument("--scales", default="1,4")
    parser.add_argument("--skip-in-memory", action="store_true")
    args = parser.parse_args()
    report: dict = {"rows_1x": args.rows, "features": args.features, "engine": args.engine, "scales": {}}
    with tempfile.TemporaryDirectory(prefix="pillars-stream-bench-") as tmp:
        for scale in (int(s) for s in args.scales.split(",")):
            root = Path(tmp, f"x{scale}")
            source_bytes = write_table(root / "table", args.rows * scale, args.features, seed=scale)
            metadata, prepare_seconds = prepare(root / "table", root / "prepared", args.engine)
            train_rows = metadata["split_rows"]["train"]
            entry = {"rows": args.rows * scale, "train_rows": train_rows, "source_mb": round(source_bytes / 2**20, 1),
                     "train_float32_mb": round(train_rows * args.features * 4 / 2**20, 1),
                     "prepare_seconds": round(prepare_seconds, 1), "stream": train(root / "prepared", "stream")}
            if not args.skip_in_memory:
                entry["in_memory"] = train(root / "prepared", "memory")
            report["scales"][f"{scale}x"] = entry
            print(json.dumps({f"{scale}x": entry}), file=sys.stderr)
    scales = report["scales"]
    if "1x" in scales and "4x" in scales:
        report["stream_peak_ratio_4x_1x"] = round(scales["4x"]["stream"]["peak_rss_mb"]
                                                  / scales["1x"]["stream"]["peak_rss_mb"], 3)
        if not args.skip_in_memory:
            report["in_memory_peak_ratio_4x_1x"] = round(scales["4x"]["in_memory"]["peak_rss_mb"]
                                                         / scales["1x"]["in_memory"]["peak_rss_mb"], 3)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
