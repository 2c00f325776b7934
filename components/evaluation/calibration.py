"""Confidence calibration of a classifier, for estimating its accuracy without labels (CBPE).

Confidence-based performance estimation (NannyML's CBPE) reads a classifier's accuracy off its own
confidences: if the confidences are calibrated, the expected accuracy of a window of predictions is the mean
of their top-class probability. A network's softmax is usually over-confident, so at training time
:func:`fit_temperature` fits one temperature ``T`` on the validation split (Guo et al. 2017, "On calibration
of modern neural networks": the probabilities become ``softmax(log p / T)``, which is ``softmax(logits / T)``,
so the argmax and accuracy do not change). Temperature scaling needs only the served ``probabilities``, which
every :class:`pillars.components.task.ClassificationTask` returns, so the server can apply it to what it
already computes.

The fitted :class:`Calibration` travels inside the saved model's ``config.json`` (``extra["calibration"]``),
which survives logging to MLflow, registration and download; :func:`read_calibration` reads it back and
returns None for a model that has none (a regressor, a model trained before this existed): the server then
says the estimate is unavailable and never invents one.

``method="isotonic"`` (an option, :func:`calibrate`) adds, on top of the temperature, an isotonic map
(scikit-learn's ``IsotonicRegression``, pool-adjacent-violators) from the temperature-scaled top-class
probability to the chance of being right, fitted on the same split and kept as its knots; it can bend where
one temperature cannot (a model under-confident at low confidence and over-confident at high), at the cost of
a step function fitted on few wrong rows. The argmax never changes; only the estimate does.

``method="platt"`` (an option) adds, on top of the temperature, a two-parameter logistic map of the
temperature-scaled top-class probability to the chance of being right (top-label Platt scaling, Gupta &
Ramdas 2021): ``sigmoid(a logit(top) + b)``, fitted by maximum likelihood of "the top class is right" on the
same split with a Gaussian prior centred on the identity (``a = 1``, ``b = 0``, weight :data:`PLATT_PRIOR`),
so that with few wrong rows it stays near the temperature instead of a step function; unlike one
temperature, its intercept lets the map bend at low confidence.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from pillars.components.evaluation.scoring import sample_rows, score
from pillars.components.model.predictor import CONFIG_FILE, load_predictor, locate_model_dir

CALIBRATION_KEY = "calibration"
"""The key of the calibration in a saved model's ``config.json`` ``extra``."""
METHOD = "temperature"
METHODS = (METHOD, "isotonic", "platt")
PLATT_PRIOR = 1.0
"""Weight of the penalty ``(a - 1)^2 + b^2`` on the Platt map (about one pseudo-row's log-likelihood): a
missing or one-sided set of wrong rows cannot send the slope to infinity."""
LOGIT_CLIP = 1e-6
"""Top probabilities are clipped to ``[LOGIT_CLIP, 1 - LOGIT_CLIP]`` before the Platt map's logit."""
LOG_T_BOUNDS = (-4.0, 4.0)
"""Search range of ``log T``: temperatures from ~0.02 to ~55, far beyond any real network's."""
EPSILON = 1e-12
SAMPLE_ROWS = 200_000
"""Validation rows a calibration is fitted on, at most (a seeded sample of a larger split): one temperature (or a
two-parameter map) is pinned far more tightly than the split's own noise by that many rows, and the train step's
memory then stays flat however large the split (about 16 bytes a row would grow with it otherwise)."""


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A classifier's fitted temperature and what it expects of itself on data like its validation split.

    Attributes:
        temperature: ``T`` in ``softmax(log p / T)``; above 1 softens over-confident probabilities.
        expected_accuracy: mean calibrated top-class probability on the validation split (what CBPE
            estimates on data like it).
        val_accuracy: the realised accuracy on that split, for comparison.
        rows: validation rows it was fitted on.
        method: ``temperature``, ``isotonic`` (the temperature, then the isotonic map ``knots``) or ``platt``
            (the temperature, then the logistic map ``platt``).
        knots: the isotonic map's ``[x, y]`` (increasing x), linearly interpolated and clipped at the ends.
        platt: the Platt map's ``(a, b)``: ``sigmoid(a logit(top) + b)``.
    """

    temperature: float
    expected_accuracy: float
    val_accuracy: float
    rows: int
    method: str = METHOD
    knots: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    platt: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.knots is None:
            del data["knots"]
        else:
            data["knots"] = [list(self.knots[0]), list(self.knots[1])]
        if self.platt is None:
            del data["platt"]
        else:
            data["platt"] = list(self.platt)
        return data

    def confidence(self, probabilities: np.ndarray) -> np.ndarray:
        """Each row's chance of being right under this calibration (what CBPE averages)."""
        top = confidence(probabilities, self.temperature)
        if self.knots is not None:
            return np.interp(top, self.knots[0], self.knots[1])
        if self.platt is not None:
            return platt_map(top, *self.platt)
        return top

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Raises:
            ValueError: not a calibration this version can apply (unknown method, non-positive temperature).
        """
        method = data.get("method", METHOD)
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
        temperature = float(data["temperature"])
        if not np.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"calibration temperature must be a positive number, got {data['temperature']!r}")
        knots = None
        if method == "isotonic":
            x, y = (np.asarray(k, dtype=np.float64) for k in data.get("knots") or ([], []))
            if len(x) == 0 or x.shape != y.shape or np.any(np.diff(x) < 0) or not np.all(np.isfinite(x)) \
                    or np.any((y < 0) | (y > 1)):
                raise ValueError("isotonic calibration knots must be [x, y] of equal length, x increasing, y in [0, 1]")
            knots = (tuple(x.tolist()), tuple(y.tolist()))
        platt = None
        if method == "platt":
            ab = np.asarray(data.get("platt") or [], dtype=np.float64)
            if ab.shape != (2,) or not np.all(np.isfinite(ab)):
                raise ValueError("platt calibration needs platt: [a, b], two finite numbers")
            platt = (float(ab[0]), float(ab[1]))
        return cls(temperature=temperature, expected_accuracy=float(data["expected_accuracy"]),
                   val_accuracy=float(data["val_accuracy"]), rows=int(data["rows"]), method=method, knots=knots,
                   platt=platt)


def calibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row (``[N, C]`` float)."""
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def confidence(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The calibrated top-class probability of each row: the chance CBPE gives that the prediction is right."""
    return calibrated(probabilities, temperature).max(axis=1)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` under the calibrated probabilities.

    Args:
        probabilities: ``[N, C]`` predicted probabilities (rows summing to 1).
        labels: ``[N]`` true class indices.

    Raises:
        ValueError: no rows, mismatched lengths, or a label outside ``0..C-1``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if p.ndim != 2 or len(p) == 0 or len(p) != len(y):
        raise ValueError(f"need [N, C] probabilities and N labels, got {p.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must be class indices in 0..{p.shape[1] - 1}")
    log_p = np.log(np.clip(p, EPSILON, 1.0))

    def nll(log_t: float) -> float:
        z = log_p / np.exp(log_t)
        z -= z.max(axis=1, keepdims=True)
        log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_softmax[np.arange(len(y)), y].mean())

    result = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def fit_isotonic(top: np.ndarray, correct: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The knots of the increasing map from top-class probability to the chance of being right."""
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(top, correct.astype(np.float64))
    return tuple(model.X_thresholds_.tolist()), tuple(model.y_thresholds_.tolist())


def _logit(top: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(top, dtype=np.float64), LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(q) - np.log1p(-q)


def platt_map(top: np.ndarray, a: float, b: float) -> np.ndarray:
    """``sigmoid(a logit(top) + b)``: the Platt map of top-class probabilities."""
    return 1 / (1 + np.exp(-(a * _logit(top) + b)))


def fit_platt(top: np.ndarray, correct: np.ndarray, prior: float = PLATT_PRIOR) -> tuple[float, float]:
    """The ``(a, b)`` of ``sigmoid(a logit(top) + b)`` maximising the likelihood of ``correct`` less
    ``prior * ((a - 1)^2 + b^2)`` (shrunk towards the identity map)."""
    x, ok = _logit(top), np.asarray(correct, dtype=np.float64)

    def loss(ab: np.ndarray) -> float:
        z = ab[0] * x + ab[1]
        return float(np.sum(np.logaddexp(0.0, z) - ok * z) + prior * ((ab[0] - 1) ** 2 + ab[1] ** 2))

    result = minimize(loss, np.array([1.0, 0.0]), method="BFGS")
    return float(result.x[0]), float(result.x[1])


def calibrate(probabilities: np.ndarray, labels: np.ndarray, method: str = METHOD) -> Calibration:
    """Fit the temperature (and for ``method="isotonic"`` or ``"platt"`` the map on top of it) on a labelled
    split and record what the model expects of itself there."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    temperature = fit_temperature(probabilities, labels)
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    correct = p.argmax(axis=1) == y
    top = confidence(p, temperature)
    knots = fit_isotonic(top, correct) if method == "isotonic" else None
    platt = fit_platt(top, correct) if method == "platt" else None
    result = Calibration(temperature=temperature, expected_accuracy=0.0, val_accuracy=float(correct.mean()),
                         rows=int(len(y)), method=method, knots=knots, platt=platt)
    return dataclasses.replace(result, expected_accuracy=float(result.confidence(p).mean()))


def read_calibration(extra: Mapping[str, Any]) -> Calibration | None:
    """The calibration in a saved config's ``extra``, or None when the model has none.

    Raises:
        ValueError: there is one, but it cannot be applied.
    """
    data = extra.get(CALIBRATION_KEY)
    return None if data is None else Calibration.from_dict(data)


def calibrate_saved_model(model_dir: str | Path, val_path: str | Path, method: str = METHOD,
                          rows: int = SAMPLE_ROWS) -> Calibration | None:
    """Fit the calibration of the classifier saved in ``model_dir`` on the validation split at ``val_path``
    (a seeded sample of at most about ``rows`` of its rows; all of a smaller split) and store it in its
    ``config.json``; None (nothing written) for a task that is not a classifier.

    The predictions go through the served path (:class:`pillars.components.model.predictor.Predictor`), so
    the probabilities are those the server will see.
    """
    directory = locate_model_dir(model_dir)
    predictor = load_predictor(directory)
    task = predictor.task
    if task.kind != "classification":
        return None
    val = score(predictor, sample_rows(val_path, rows), keep=("probabilities",))  # read streaming, sample kept
    result = calibrate(val.outputs["probabilities"], np.asarray(val.examples[task.target_column], dtype=np.int64),
                       method)
    config_file = directory / CONFIG_FILE
    config = json.loads(config_file.read_text())
    config.setdefault("extra", {})[CALIBRATION_KEY] = result.to_dict()
    config_file.write_text(json.dumps(config, indent=2))
    return result
