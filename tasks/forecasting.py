"""Forecasting: the next ``horizon`` values of a series from its last ``context`` values.

The data is a series shipped inside statsmodels (weekly CO2 at Mauna Loa by default; yearly sunspots or
monthly El Nino sea temperatures by choice), read from the installed distribution's CSV without importing
statsmodels; missing values are filled by linear interpolation. It is cut chronologically: the last
``test_fraction`` of the time points are the test period, the ``val_fraction`` before them the validation
period, the rest the training period. A window belongs to the period its *targets* fall in, and a window
whose targets would cross into a later period is dropped, so no training target is ever seen at
evaluation; a window's history may reach back into earlier periods (it is known at forecast time).

Every window is scaled by its own level (mean) and scale (standard deviation) in :meth:`Forecasting.encode`
and scaled back in :meth:`Forecasting.decode`: the network sees unit-free shapes, the same code runs in
training and serving, and a forecast moves with its history (add ``c`` to a history and its forecast
gains ``c``; multiply it by ``a > 0`` and the forecast is ``a`` times as large). The network is a linear
map plus a small MLP from the scaled window to three quantiles (10%, 50%, 90%) of each future step,
trained with the pinball loss; the median is the point ``forecast``.

The gate compares ``mase``: the forecast's mean absolute error divided by that of the seasonal-naive
forecast (each step repeats the value one season earlier) on the same test windows; below 1 beats it.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from pillars.components.errors import ConfigError, DataError
from pillars.components.task import (
    DataParams,
    Dataset,
    Examples,
    InputError,
    Outputs,
    Preprocessing,
    Signature,
    Task,
    TensorSpec,
)

HISTORY = "history"
TARGET = "target"
ORIGIN = "origin"
QUANTILES = (0.1, 0.5, 0.9)
"""The quantiles the network forecasts; the median is ``forecast``, the others ``forecast_p10``/``_p90``."""
_MEDIAN = QUANTILES.index(0.5)
_RELATIVE_EPS = 1e-6
"""Smallest window scale, relative to ``1 + |level|``: a flat history scales by this instead of zero."""


@dataclasses.dataclass(frozen=True)
class SeriesSource:
    """A series shipped as a CSV inside an installed distribution."""

    distribution: str
    path: str
    layout: str
    """``long``: one row per time point, the value in the second column; ``wide``: a row per year with
    one column per period after the first column."""
    frequency: str
    season: int
    description: str
    requirement: str = "statsmodels>=0.14"
    """What to ``pip install`` when the distribution is missing."""


SERIES: Mapping[str, SeriesSource] = {
    "co2": SeriesSource("statsmodels", "statsmodels/datasets/co2/co2.csv", "long", "weekly", 52,
                        "weekly atmospheric CO2 at Mauna Loa (ppm), 1958-2001"),
    "sunspots": SeriesSource("statsmodels", "statsmodels/datasets/sunspots/sunspots.csv", "long", "yearly", 11,
                             "yearly sunspot activity, 1700-2008"),
    "elnino": SeriesSource("statsmodels", "statsmodels/datasets/elnino/elnino.csv", "wide", "monthly", 12,
                           "monthly El Nino sea surface temperature (degrees C), 1950-2010"),
}


@dataclasses.dataclass
class Forecasting(Task):
    """Forecast a shipped series ``horizon`` steps ahead from its last ``context`` values.

    Attributes:
        series: which shipped series (``co2``, ``sunspots``, ``elnino``).
        context: values of history the model reads (a request may send more; the last ``context`` count).
        horizon: future values forecast per request.
        season: the seasonal period of the baseline and ``mase``; 0 takes the series' own (52 weekly).
        hidden: width of the MLP's hidden layers.
        max_history: the longest history a request may send.
    """

    series: str = "co2"
    context: int = 104
    horizon: int = 13
    season: int = 0
    hidden: int = 128
    max_history: int = 2048

    kind: ClassVar[str] = "forecasting"
    primary_metric: ClassVar[str] = "mase"
    lower_is_better: ClassVar[bool] = True
    thresholds: ClassVar[Mapping[str, float]] = {"mase": 1.0}
    lower_is_better_metrics: ClassVar[frozenset[str]] = frozenset(
        {"mase", "mae", "rmse", "loss", "mae_seasonal_naive", "rmse_seasonal_naive"})
    description: ClassVar[str] = ("forecast a shipped series (weekly CO2 by default) from a context window; "
                                  "gate: MASE against the seasonal-naive forecast")

    def __post_init__(self) -> None:
        if self.series not in SERIES:
            raise ConfigError(f"forecasting: unknown series {self.series!r}; choose one of {', '.join(SERIES)}")
        for name in ("context", "horizon", "hidden"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"forecasting: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.context < 2:
            raise ConfigError(f"forecasting: context must be at least 2 values, got {self.context}")
        if not isinstance(self.season, int) or self.season < 0:
            raise ConfigError(f"forecasting: season must be 0 (the series' own) or a period, got {self.season!r}")
        if self.context < self.period * math.ceil(self.horizon / self.period):
            raise ConfigError(f"forecasting: context {self.context} is shorter than the "
                              f"{self.period * math.ceil(self.horizon / self.period)} values the seasonal-naive "
                              f"baseline (season {self.period}, horizon {self.horizon}) reads")
        if self.max_history < self.context:
            raise ConfigError(f"forecasting: max_history {self.max_history} is below context {self.context}")

    @property
    def period(self) -> int:
        """The seasonal period: ``season``, or the series' own when it is 0."""
        return self.season or SERIES[self.series].season

    # ---- data -------------------------------------------------------------------------------------------
    def load_data(self, params: DataParams) -> Dataset:
        """Windows of the series, split chronologically (the split does not depend on ``params.seed``)."""
        source = SERIES[self.series]
        values, missing = read_series(source)
        total = len(values)
        test_start = total - round(total * params.test_fraction)
        val_start = test_start - round(total * params.val_fraction)
        periods = {"train": (0, val_start), "val": (val_start, test_start), "test": (test_start, total)}
        splits = {name: windows(values, self.context, self.horizon, start, stop)
                  for name, (start, stop) in periods.items()}
        empty = [name for name, split in splits.items() if not len(split[ORIGIN])]
        if empty:
            raise DataError(f"forecasting: the {self.series} series ({total} values) is too short for context "
                            f"{self.context} + horizon {self.horizon}: no {'/'.join(empty)} windows")
        info = {"source": f"{source.distribution}:{source.path}", "series": self.series,
                "description": source.description, "frequency": source.frequency, "season": self.period,
                "length": total, "interpolated": missing,
                "periods": {name: list(bounds) for name, bounds in periods.items()},
                "windows": {name: len(split[ORIGIN]) for name, split in splits.items()}}
        return Dataset(splits["train"], splits["val"], splits["test"], info)

    def fit_preprocessing(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        """Nothing is learned (every window scales itself); records the baseline's season."""
        return {"season": self.period, "quantiles": list(QUANTILES)}

    # ---- model ------------------------------------------------------------------------------------------
    def build_model(self, prep: Preprocessing) -> nn.Module:
        return WindowForecaster(self.context, self.horizon, len(QUANTILES), self.hidden)

    def signature(self, prep: Preprocessing) -> Signature:
        history = TensorSpec(HISTORY, "FP32", (-1,), max_length=self.max_history,
                             description=f"the series up to now, oldest first; at least {self.context} values "
                                         f"(the last {self.context} are read)")
        outputs = [TensorSpec("forecast", "FP32", (self.horizon,),
                              description=f"the next {self.horizon} values (median forecast)")]
        outputs += [TensorSpec(f"forecast_p{round(q * 100)}", "FP32", (self.horizon,),
                               description=f"the {round(q * 100)}% quantile of each of the next {self.horizon} values")
                    for q in QUANTILES if q != 0.5]
        return Signature((history,), tuple(outputs))

    def encode(self, inputs: Examples, prep: Preprocessing) -> dict[str, torch.Tensor]:
        """The last ``context`` values of each history, minus their mean, over their standard deviation."""
        window = self._window(inputs)
        level, scale = window_stats(window)
        return {"window": torch.as_tensor(((window - level) / scale).astype(np.float32))}

    def targets(self, examples: Examples, prep: Preprocessing) -> torch.Tensor:
        """The future values on their window's scale."""
        level, scale = window_stats(self._window(examples))
        target = np.asarray(examples[TARGET], dtype=np.float64)
        return torch.as_tensor(((target - level) / scale).astype(np.float32))

    def loss(self, head: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Pinball loss of the quantiles, averaged over steps, quantiles and the batch."""
        q = torch.as_tensor(QUANTILES, dtype=torch.float32, device=head.device)
        error = targets.unsqueeze(-1) - head.float()
        return torch.maximum(q * error, (q - 1) * error).mean()

    def decode(self, head: torch.Tensor, inputs: Examples, prep: Preprocessing) -> Outputs:
        level, scale = window_stats(self._window(inputs))
        scaled = torch.sort(head.float(), dim=-1).values.cpu().numpy().astype(np.float64)  # quantiles never cross
        values = (level[:, :, None] + scale[:, :, None] * scaled).astype(np.float32)
        outputs = {"forecast": values[..., _MEDIAN]}
        outputs.update({f"forecast_p{round(q * 100)}": values[..., i]
                        for i, q in enumerate(QUANTILES) if i != _MEDIAN})
        return outputs

    def evaluate(self, predict: Callable[[Examples], Outputs], examples: Examples,
                 prep: Preprocessing) -> dict[str, float]:
        """``mase`` (MAE over the seasonal-naive MAE on the same windows), MAE, RMSE, 10-90% coverage."""
        outputs = predict({HISTORY: examples[HISTORY]})
        target = np.asarray(examples[TARGET], dtype=np.float64)
        forecast = np.asarray(outputs["forecast"], dtype=np.float64)
        naive = seasonal_naive(np.asarray(examples[HISTORY], dtype=np.float64), self.horizon, prep["season"])
        mae, mae_naive = float(np.abs(forecast - target).mean()), float(np.abs(naive - target).mean())
        inside = (outputs["forecast_p10"] <= target) & (target <= outputs["forecast_p90"])
        return {"mase": mae / mae_naive if mae_naive > 0 else (0.0 if mae == 0 else math.inf),
                "mae": mae, "rmse": float(np.sqrt(((forecast - target) ** 2).mean())),
                "mae_seasonal_naive": mae_naive, "rmse_seasonal_naive": float(np.sqrt(((naive - target) ** 2).mean())),
                "coverage_p10_p90": float(inside.mean())}

    # ---- monitoring -------------------------------------------------------------------------------------
    def drift_features(self, inputs: Examples, prep: Preprocessing) -> dict[str, np.ndarray]:
        """Level (mean), scale (standard deviation) and last value of the window the model reads."""
        window = self._window(inputs)
        return {"level": window.mean(axis=1), "scale": window.std(axis=1), "last": window[:, -1].copy()}

    # ---- helpers ----------------------------------------------------------------------------------------
    def _window(self, inputs: Examples) -> np.ndarray:
        """The last ``context`` values of each history as float64 ``[N, context]``, or InputError."""
        if HISTORY not in inputs:
            raise InputError(f"input {HISTORY!r} is missing")
        try:
            history = np.asarray(inputs[HISTORY], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise InputError(f"input {HISTORY!r}: not a rectangular array of numbers: {e}") from e
        if history.ndim != 2 or not len(history):
            raise InputError(f"input {HISTORY!r}: expected shape [N, length], got {list(history.shape)}")
        if history.shape[1] < self.context:
            raise InputError(f"input {HISTORY!r}: too short: {history.shape[1]} values per row; this model "
                             f"reads the last {self.context}")
        window = history[:, -self.context:]
        finite = np.isfinite(window).all(axis=1)
        if not finite.all():
            raise InputError(f"input {HISTORY!r}: NaN or Inf in row(s) {np.flatnonzero(~finite)[:5].tolist()}")
        return window


class WindowForecaster(nn.Module):
    """A linear map plus a two-layer MLP from a scaled window ``[N, context]`` to ``[N, horizon, quantiles]``."""

    def __init__(self, context: int, horizon: int, quantiles: int, hidden: int) -> None:
        super().__init__()
        self.horizon, self.quantiles = horizon, quantiles
        self.linear = nn.Linear(context, horizon * quantiles)
        self.mlp = nn.Sequential(nn.Linear(context, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, horizon * quantiles))

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return (self.linear(window) + self.mlp(window)).reshape(-1, self.horizon, self.quantiles)


def window_stats(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's level (mean) and scale (standard deviation, at least a millionth of ``1 + |level|``),
    as ``[N, 1]`` float64 columns."""
    level = window.mean(axis=1, keepdims=True)
    scale = np.maximum(window.std(axis=1, keepdims=True), _RELATIVE_EPS * (1.0 + np.abs(level)))
    return level, scale


def seasonal_naive(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Each future step repeats the value one (or more) whole seasons before it: ``[N, horizon]``."""
    steps = np.arange(horizon)
    back = season * ((steps // season) + 1)
    return history[:, history.shape[1] - back + steps]


def windows(values: np.ndarray, context: int, horizon: int, start: int, stop: int) -> Examples:
    """Every window whose ``horizon`` targets lie in ``values[start:stop]`` and whose history fits before them.

    Returns ``history`` float32 ``[N, context]``, ``target`` float32 ``[N, horizon]`` and ``origin`` int64
    ``[N]`` (the index of the first target).
    """
    origins = np.arange(max(start, context), stop - horizon + 1, dtype=np.int64)
    history = np.stack([values[t - context:t] for t in origins]) if len(origins) else np.zeros((0, context))
    target = np.stack([values[t:t + horizon] for t in origins]) if len(origins) else np.zeros((0, horizon))
    return {HISTORY: history.astype(np.float32), TARGET: target.astype(np.float32), ORIGIN: origins}


def read_series(source: SeriesSource) -> tuple[np.ndarray, int]:
    """The series' values (float64, missing ones interpolated linearly) and how many were missing.

    Raises:
        DataError: the distribution or its file is missing, or the file holds no numbers.
    """
    install = (f"the forecasting task reads {source.distribution}'s {Path(source.path).name}: "
               f"pip install '{source.requirement}'")
    try:
        path = Path(str(importlib.metadata.distribution(source.distribution).locate_file(source.path)))
    except importlib.metadata.PackageNotFoundError as e:
        raise DataError(install) from e
    if not path.is_file():
        raise DataError(f"{install} (no {path} in the installed {source.distribution})")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    cells = [row[1:2] if source.layout == "long" else row[1:] for row in rows if row]
    try:
        values = np.array([float(c) if c.strip() else np.nan for row in cells for c in row], dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{path}: not a numeric series: {e}") from e
    known = np.isfinite(values)
    if known.sum() < 2:
        raise DataError(f"{path}: fewer than two values")
    index = np.arange(len(values))
    values[~known] = np.interp(index[~known], index[known], values[known])
    return values, int((~known).sum())
