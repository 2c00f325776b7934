"""How closely the estimated accuracy (CBPE) tracks the realised accuracy under covariate shift, window by window.

For each task (``breast_cancer``, ``digits``): prepare the data and train as the pipeline does
(:func:`pillars.components.data.prepare.prepare`, :func:`pillars.components.training.fit.fit`), calibrate on
the validation split with the training step's own function
(:func:`pillars.components.evaluation.calibration.calibrate_saved_model`), load the saved model as the
server does, then draw windows of rows from the test split (never seen in training or calibration) under
each shift and compare, per window, the server's estimator
(:class:`pillars.serving.monitoring.performance.AccuracyEstimator`, its ring sized to one window) with the
realised accuracy of the same rows; the uncalibrated estimate (mean raw top probability) is shown beside it.

Shifts (the labels of a row never change: covariate shift):

- ``none``: rows drawn uniformly;
- ``select_top_feature``: rows drawn with weight ``sigmoid(3 z)`` of the most important feature's
  standardised value (permutation importance on the validation split): the traffic moves to one end of it;
- ``select_hard``: rows drawn with weight ``(1 - top probability)^2``: the traffic moves towards the decision
  boundary, where the model is wrong more often (the shift that lowers accuracy the most);
- ``noise_0.5sd`` (stress, not pure covariate shift: noise changes what a row's label means): every feature
  plus Gaussian noise of half its train standard deviation.

    .venv/bin/python benchmarks/cbpe_bench.py [--windows 20] [--window 200] [--epochs 30] \
        [--val-fraction 0.3] [--test-fraction 0.4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from _common import write_results
from pillars.components.data.prepare import PrepareParams, prepare
from pillars.components.data.splits import save_split
from pillars.components.evaluation.calibration import calibrate_saved_model
from pillars.components.model.predictor import load_predictor
from pillars.components.task.examples import input_columns
from pillars.components.training.fit import TrainParams, fit, write_model
from pillars.serving.monitoring.performance import AccuracyEstimator, estimator_for


def _predict(predictor, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return predictor.predict(inputs)


def _top_feature(predictor, val: dict[str, np.ndarray], input_name: str, y: np.ndarray, seed: int) -> int:
    """The feature whose permutation costs the most validation accuracy."""
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
    return int(np.argmax(drops))


def run_task(task: str, windows: int, window: int, epochs: int, seed: int, val_fraction: float,
             test_fraction: float, method: str = "temperature") -> dict:
    data = prepare(PrepareParams(task=task, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction))
    result = fit(data.splits["train"], data.splits["val"], data.metadata, TrainParams(epochs=epochs, seed=seed),
                 progress=False)
    with tempfile.TemporaryDirectory(prefix="cbpe-") as tmp:
        model_dir = write_model(result, Path(tmp) / "model")
        save_split(Path(tmp) / "val.npz", data.splits["val"])
        calibration = calibrate_saved_model(model_dir, Path(tmp) / "val.npz", method)
        predictor = load_predictor(model_dir)
    assert calibration is not None
    task_obj = predictor.task
    test = data.splits["test"]
    inputs = input_columns(predictor.signature, test)
    (input_name,) = inputs
    x = np.asarray(inputs[input_name], dtype=np.float32)
    y = np.asarray(test[task_obj.target_column], dtype=np.int64)
    val_y = np.asarray(data.splits["val"][task_obj.target_column], dtype=np.int64)
    top = _top_feature(predictor, input_columns(predictor.signature, data.splits["val"]), input_name, val_y, seed)
    flat_train = np.asarray(data.splits["train"][input_name], dtype=np.float32).reshape(
        len(data.splits["train"][input_name]), -1)
    sd = flat_train.std(axis=0) + 1e-6
    clean = _predict(predictor, {input_name: x})
    z = (x.reshape(len(x), -1)[:, top] - flat_train[:, top].mean()) / sd[top]
    weights = {
        "none": np.ones(len(x)),
        "select_top_feature": 1 / (1 + np.exp(-3 * z)),
        "select_hard": (1 - clean["probabilities"].max(axis=1)) ** 2 + 1e-4,
        "noise_0.5sd": np.ones(len(x)),
    }
    rng = np.random.default_rng(seed + 1)
    shifts = {}
    for shift, w in weights.items():
        errors, raw_errors, realised_all, estimated_all = [], [], [], []
        for _ in range(windows):
            take = rng.choice(len(x), size=window, replace=True, p=w / w.sum())
            rows = x[take]
            if shift.startswith("noise"):
                rows = (rows.reshape(window, -1) + rng.normal(0, 0.5, (window, sd.size)) * sd).reshape(rows.shape)
                rows = rows.astype(np.float32)
            outputs = _predict(predictor, {input_name: rows})
            estimator, status = estimator_for(task_obj.kind, predictor.config.extra, window, window)
            assert isinstance(estimator, AccuracyEstimator), status
            estimator.observe(outputs)
            estimated = estimator.estimate()
            realised = float((outputs["class_index"] == y[take]).mean())
            raw = float(outputs["probabilities"].max(axis=1).mean())
            errors.append(abs(estimated - realised))
            raw_errors.append(abs(raw - realised))
            realised_all.append(realised)
            estimated_all.append(estimated)
        shifts[shift] = {"realised_mean": float(np.mean(realised_all)), "estimated_mean": float(np.mean(estimated_all)),
                         "mean_abs_error": float(np.mean(errors)), "max_abs_error": float(np.max(errors)),
                         "windows_within_3_points": int(np.sum(np.asarray(errors) <= 0.03)),
                         "uncalibrated_mean_abs_error": float(np.mean(raw_errors))}
    return {"task": task, "method": method, "test_rows": int(len(x)), "temperature": calibration.temperature,
            "val_accuracy": calibration.val_accuracy, "expected_accuracy": calibration.expected_accuracy,
            "top_feature": top, "window": window, "windows": windows, "shifts": shifts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="breast_cancer,digits")
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.3, help="calibration rows (breast_cancer is small)")
    parser.add_argument("--test-fraction", type=float, default=0.4, help="rows the shifted windows are drawn from")
    parser.add_argument("--calibration", default="temperature", choices=("temperature", "isotonic"),
                        help="calibration method (isotonic: the temperature, then an isotonic map)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = [run_task(t, args.windows, args.window, args.epochs, args.seed, args.val_fraction, args.test_fraction,
                        args.calibration)
               for t in args.tasks.split(",")]
    for r in results:
        print(f"\n{r['task']} ({r['method']}): T={r['temperature']:.3f}, val accuracy {r['val_accuracy']:.3f}, "
              f"expected "
              f"{r['expected_accuracy']:.3f}, {r['test_rows']} test rows, {r['windows']} windows of {r['window']}")
        print(f"{'shift':<20}{'realised':>9}{'estimated':>10}{'mean |err|':>11}{'max |err|':>10}"
              f"{'<=3pt':>7}{'uncal. |err|':>13}")
        for name, s in r["shifts"].items():
            print(f"{name:<20}{s['realised_mean']:>9.3f}{s['estimated_mean']:>10.3f}{s['mean_abs_error']:>11.3f}"
                  f"{s['max_abs_error']:>10.3f}{s['windows_within_3_points']:>4}/{r['windows']:<2}"
                  f"{s['uncalibrated_mean_abs_error']:>13.3f}")
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
