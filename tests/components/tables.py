"""A small generated table prepared by the table data step (pandas) into Parquet shard splits, for the tests
of what reads shards (streaming training, streamed scoring)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pillars.components.data.prepare import PrepareParams
from pillars.components.data.prepare_table import prepare_table


def prepared_table(tmp_path: Path, rows: int = 3000, task: str = "tabular_classification") -> tuple[dict, Path]:
    """``(metadata, folder)``: six normal features, a label from three of them plus noise (``y > 0`` for a
    classifier), split into ``folder/{train,val,test}``."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=rows) for i in range(6)})
    signal = frame["x0"] + frame["x1"] - frame["x2"] + rng.normal(0, 0.3, size=rows)
    frame["y"] = (signal > 0).astype(int) if task == "tabular_classification" else signal
    frame.to_csv(tmp_path / "table.csv", index=False)
    out = tmp_path / "prepared"
    params = PrepareParams(task=task, source=str(tmp_path / "table.csv"), label_column="y", seed=1)
    metadata = prepare_table(params, "pandas", {s: out / s for s in ("train", "val", "test")})
    return metadata, out
