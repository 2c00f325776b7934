"""How closely the estimated accuracy (CBPE) tracks the realised accuracy under covariate shift, window by window.

For each task (``breast_cancer``, ``digits``): prepare the data and train as the pipeline does
(:func:`pillars.components.data.prepare.prepare`, :func:`pillars.components.training.fit.fit`), calibrate on
the validation split with the training step's own function
(:func:`pillars.components.evaluation.calibration.calibrate_saved_model`, temperature) and, for comparison,
with every other method of :func:`pillars.components.evaluation.calibration.calibrate` on the same validation
predictions, load the saved model as the server does, then draw windows of rows (with replacement) from the
test split (never seen in training or calibration) under each shift and compare, per window, the server's
estimator (:class:`pillars.serving.monitoring.performance.AccuracyEstimator`, its ring sized to one window)
with the realised accuracy of the same rows; the uncalibrated estimate (mean raw top probability) is shown
beside it. Window sizes: 200 and 1000 by default (1000 is the server's ``performance_window`` default).

Shifts (the labels of a row never change: covariate shift):

- ``none``: rows drawn uniformly;
- ``select_top_feature``: rows drawn with weight ``sigmoid(3 z)`` of the most important feature's
  standardised value (permutation importance on the validation split): the traffic moves to one end of it;
- ``select_second_feature``: the same on the second most important feature;
- ``select_projection``: the same on a random projection of the standardised inputs (a Gaussian direction
  drawn with ``seed + 2``, the projection standardised on the train split);
- ``select_hard``: rows drawn with weight ``(1 - top probability)^2``: the traffic moves towards the decision
  boundary, where the model is wrong more often (the shift that lowers accuracy the most);
- ``noise_0.5sd`` (stress, not pure covariate shift: noise changes what a row's label means): every feature
  plus Gaussian noise of half its train standard deviation.

``select_second_feature`` and ``select_projection`` were added (issue 19) before their results were seen.

Columns: ``n_eff`` (Kish's effective number of distinct test rows under the shift's weights: a small pool is
a small population, whatever the window), ``noise sd`` (``sqrt(p (1 - p) / n)``, the sampling noise of the
realised accuracy of a window of ``n`` rows at the shift's mean ``p``: a perfect estimator still misses the
realised accuracy by about this much), ``real. sd`` (the realised accuracy's spread over the windows), and per
method the mean signed error (estimated minus realised), the largest absolute error, the windows within 3
points, and the pool bias (the shift's weighted mean of calibrated confidence minus correctness over the whole
test split: the estimator's error without window noise; not defined for the noise shift).

    .venv/bin/python benchmarks/cbpe_bench.py [--windows 20] [--window 200,1000] [--epochs 30] \
        [--val-fraction 0.3] [--test-fraction 0.4] [--calibration temperature,isotonic,platt] [--json FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from _common import write_results
from pillars.components.data.prepare import PrepareParams, prepare
from pillars.components.data.splits import save_split
from pillars.components.evaluation.calibration import (CALIBRATION_KEY, METHODS, calibrate,
                                                      calibrate_saved_model)
from pillars.components.evaluation.scoring import PREDICT_BATCH
from pillars.components.model.predictor import load_predictor
from pillars.components.task.examples import input_columns
from pillars.components.training.fit import TrainParams, fit, write_model
from pillars.serving.monitoring.performance import AccuracyEstimator, estimator_for


def _predict(predictor, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return predictor.predict(inputs)


def _importance_order(predictor, val: dict[str, np.ndarray], input_name: str, y: np.ndarray, seed: int) -> np.ndarray:
    """Features by the validation accuracy their permutation costs, most important first."""
    x = val[input_name]
    flat = x.reshape(len(x), -1)
    base = float((_predict(predictor, {input_name: x})["class_index"] == y).mean())
    rng = np.random.default_rng(seed)
    drops = []
    for j in range(flat.shape[1]):
        shuffled = flat.copy()
        shuffled[:, j] = rng.permutation(shuffled[:, j])
        drops.append(base - float((_predict(predictor, {input_name: shuffled.reshape(x.shape)})["class_index"]
                                   == y).mean()))
    return np.argsort(-np.asarray(drops), kind="stable")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # a constant train pixel gives a huge z: its weight is 0 or 1, as it should
        return 1 / (1 + np.exp(-z))


def _predict_all(predictor, inputs: dict[str, np.ndarray]) -> np.ndarray:
    (name,) = inputs
    x = inputs[name]
    return np.concatenate([_predict(predictor, {name: x[i:i + PREDICT_BATCH]})["probabilities"]
                           for i in range(0, len(x), PREDICT_BATCH)])


def run_task(task: str, windows: int, window_sizes: list[int], epochs: int, seed: int, val_fraction: float,
             test_fraction: float, methods: list[str]) -> dict:
    data = prepare(PrepareParams(task=task, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction))
    result = fit(data.splits["train"], data.splits["val"], data.metadata, TrainParams(epochs=epochs, seed=seed),
                 progress=False)
    with tempfile.TemporaryDirectory(prefix="cbpe-") as tmp:
        model_dir = write_model(result, Path(tmp) / "model")
        save_split(Path(tmp) / "val.npz", data.splits["val"])
        stored = calibrate_saved_model(model_dir, Path(tmp) / "val.npz")  # what training stores (temperature)
        predictor = load_predictor(model_dir)
    assert stored is not None
    task_obj = predictor.task
    val_inputs = input_columns(predictor.signature, data.splits["val"])
    val_y = np.asarray(data.splits["val"][task_obj.target_column], dtype=np.int64)
    # every method fitted on the same validation predictions; the stored one is the training step's own
    val_probabilities = _predict_all(predictor, val_inputs)
    calibrations = {m: stored if m == stored.method else calibrate(val_probabilities, val_y, m) for m in methods}
    extras = {m: {CALIBRATION_KEY: c.to_dict()} for m, c in calibrations.items()}

    test = data.splits["test"]
    inputs = input_columns(predictor.signature, test)
    (input_name,) = inputs
    x = np.asarray(inputs[input_name], dtype=np.float32)
    y = np.asarray(test[task_obj.target_column], dtype=np.int64)
    order = _importance_order(predictor, val_inputs, input_name, val_y, seed)
    flat_train = np.asarray(data.splits["train"][input_name], dtype=np.float32).reshape(
        len(data.splits["train"][input_name]), -1)
    mean, sd = flat_train.mean(axis=0), flat_train.std(axis=0) + 1e-6
    flat = x.reshape(len(x), -1)
    clean = _predict_all(predictor, {input_name: x})
    correct = clean.argmax(axis=1) == y
    standardised = (flat - mean) / sd
    direction = np.random.default_rng(seed + 2).normal(size=flat.shape[1])
    train_projection = ((flat_train - mean) / sd) @ direction
    projection = (standardised @ direction - train_projection.mean()) / train_projection.std()
    weights = {
        "none": np.ones(len(x)),
        "select_top_feature": _sigmoid(3 * standardised[:, order[0]]),
        "select_second_feature": _sigmoid(3 * standardised[:, order[1]]),
        "select_projection": _sigmoid(3 * projection),
        "select_hard": (1 - clean.max(axis=1)) ** 2 + 1e-4,
        "noise_0.5sd": np.ones(len(x)),
    }
    by_size = {}
    for window in window_sizes:
        shifts = {}
        for index, (shift, w) in enumerate(weights.items()):
            rng = np.random.default_rng([seed, index, window])
            p = w / w.sum()
            realised_all, estimated = [], {m: [] for m in ["uncalibrated", *methods]}
            for _ in range(windows):
                take = rng.choice(len(x), size=window, replace=True, p=p)
                rows = x[take]
                if shift.startswith("noise"):
                    rows = (rows.reshape(window, -1) + rng.normal(0, 0.5, (window, sd.size)) * sd).reshape(rows.shape)
                    rows = rows.astype(np.float32)
                outputs = _predict(predictor, {input_name: rows})
                realised_all.append(float((outputs["class_index"] == y[take]).mean()))
                estimated["uncalibrated"].append(float(outputs["probabilities"].max(axis=1).mean()))
                for m in methods:
                    estimator, status = estimator_for(task_obj.kind, extras[m], window, window)
                    assert isinstance(estimator, AccuracyEstimator), status
                    estimator.observe(outputs)
                    estimated[m].append(estimator.estimate())
            realised = np.asarray(realised_all)
            p_mean = float(realised.mean())
            row = {"effective_rows": float(w.sum() ** 2 / (w ** 2).sum()), "realised_mean": p_mean,
                   "sampling_sd": float(np.sqrt(p_mean * (1 - p_mean) / window)),
                   "realised_sd": float(realised.std(ddof=1)), "methods": {}}
            for m, values in estimated.items():
                error = np.asarray(values) - realised
                entry = {"estimated_mean": float(np.mean(values)), "mean_error": float(error.mean()),
                         "mean_abs_error": float(np.abs(error).mean()), "max_abs_error": float(np.abs(error).max()),
                         "windows_within_3_points": int(np.sum(np.abs(error) <= 0.03))}
                if not shift.startswith("noise"):  # the shift's bias over the whole test pool, no window noise
                    c = clean.max(axis=1) if m == "uncalibrated" else calibrations[m].confidence(clean)
                    entry["pool_bias"] = float(np.sum(p * (c - correct)))
                row["methods"][m] = entry
            shifts[shift] = row
        by_size[str(window)] = shifts
    return {"task": task, "test_rows": int(len(x)), "val_rows": int(len(val_y)),
            "val_wrong": int((val_probabilities.argmax(axis=1) != val_y).sum()),
            "calibrations": {m: c.to_dict() for m, c in calibrations.items()},
            "features": [int(order[0]), int(order[1])], "windows": windows, "by_window": by_size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="breast_cancer,digits")
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--window", default="200,1000",
                        help="window sizes, comma-separated (1000: the server's performance_window default)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.3, help="calibration rows (breast_cancer is small)")
    parser.add_argument("--test-fraction", type=float, default=0.4, help="rows the shifted windows are drawn from")
    parser.add_argument("--calibration", default=",".join(METHODS),
                        help=f"calibration methods to compare, comma-separated (of {', '.join(METHODS)}); all are "
                             "fitted on the same validation predictions")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    methods = args.calibration.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown calibration method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    sizes = [int(s) for s in args.window.split(",")]
    results = [run_task(t, args.windows, sizes, args.epochs, args.seed, args.val_fraction, args.test_fraction,
                        methods) for t in args.tasks.split(",")]
    for r in results:
        cal = r["calibrations"]
        print(f"\n{r['task']}: T={cal[methods[0]]['temperature']:.3f}, {r['val_rows']} validation rows "
              f"({r['val_wrong']} wrong), {r['test_rows']} test rows, features by importance {r['features']}; "
              + "; ".join(f"{m}: expected {c['expected_accuracy']:.3f}" for m, c in cal.items()))
        for size, shifts in r["by_window"].items():
            print(f"  {r['windows']} windows of {size} rows; per method: mean signed error / max |error| / "
                  f"windows within 3 points / pool bias")
            print(f"  {'shift':<22}{'n_eff':>7}{'realised':>9}{'noise sd':>9}{'real. sd':>9}"
                  + "".join(f"{m:>28}" for m in ["uncalibrated", *methods]))
            for name, s in shifts.items():
                cells = "".join(
                    f"{e['mean_error']:>+8.3f}{e['max_abs_error']:>7.3f}{e['windows_within_3_points']:>4}/"
                    f"{r['windows']:<2}{e.get('pool_bias', float('nan')):>+7.3f}" for e in s["methods"].values())
                print(f"  {name:<22}{s['effective_rows']:>7.0f}{s['realised_mean']:>9.3f}{s['sampling_sd']:>9.3f}"
                      f"{s['realised_sd']:>9.3f}{cells}")
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
