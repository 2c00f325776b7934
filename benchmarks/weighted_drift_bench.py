"""Drift that matters: shifting the features a model relies on retrains it, shifting those it ignores does not.

For each seed: prepare and train ``breast_cancer`` as the pipeline does, store the calibration and the
permutation importances as the training step does, then feed the server's drift monitor
(:class:`pillars.serving.monitoring.drift.DriftMonitor`, default settings: JS distance, threshold 0.1, one
window of 1000 rows) and CBPE estimator one window each of:

- ``in_distribution``: rows drawn from the data set as it is;
- ``top2_plus_3sd``: the same rows with the two most important features moved by +3 train standard deviations;
- ``bottom2_plus_3sd``: the two least important features moved by +3 standard deviations.

Each window is judged by the retraining rules of :mod:`pillars.serving.monitoring.alerts` (default
thresholds): weighted drift share >= 0.2, prediction JS distance >= 0.1, estimated accuracy below the task's
gate threshold (0.9); the old rule (unweighted share >= 0.5) is shown beside them.

    .venv/bin/python benchmarks/weighted_drift_bench.py [--seeds 0,1,2] [--epochs 30]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from _common import write_results
from pillars.components.data.prepare import PrepareParams, prepare
from pillars.components.data.splits import save_split
from pillars.components.evaluation.calibration import calibrate_saved_model
from pillars.components.evaluation.importance import store_importance
from pillars.components.model.predictor import load_predictor
from pillars.components.training.fit import TrainParams, fit, write_model
from pillars.serving.monitoring.alerts import AlertSettings
from pillars.serving.monitoring.drift import DriftConfig, DriftMonitor
from pillars.serving.monitoring.performance import estimator_for
from pillars.tasks.tabular import INPUT

WINDOW = 1000
OLD_SHARE = 0.5


@dataclass
class Judged:
    weighted_share: float
    share: float
    prediction_jsd: float
    estimated_accuracy: float | None
    realised_accuracy: float
    fired: list[str]
    drifted: list[str]
    old_rule_fires: bool


def trained_breast_cancer(seed: int, epochs: int, root: Path) -> tuple[Path, dict, dict]:
    """A breast_cancer model saved with calibration and importances; its prepared splits and metadata."""
    data = prepare(PrepareParams(task="breast_cancer", seed=seed))
    result = fit(data.splits["train"], data.splits["val"], data.metadata, TrainParams(epochs=epochs, seed=seed),
                 progress=False)
    model_dir = write_model(result, root / "model")
    save_split(root / "val.npz", data.splits["val"])
    calibrate_saved_model(model_dir, root / "val.npz")
    store_importance(model_dir, root / "val.npz", seed=seed)
    return model_dir, data.splits, data.metadata


def judge(predictor, profile: dict, x: np.ndarray, y: np.ndarray, alerts: AlertSettings) -> Judged:
    """One window of rows through the server's monitors, judged by the alert rules."""
    importance = predictor.config.extra.get("feature_importance")
    monitor = DriftMonitor(profile, list(profile["features"]), "classification", predictor.prep["classes"],
                           DriftConfig(window=WINDOW, min_rows=WINDOW // 2), importance)
    estimator, _ = estimator_for("classification", predictor.config.extra, WINDOW, WINDOW // 2)
    assert estimator is not None
    outputs = predictor.predict({INPUT: x})
    names, rows = predictor.drift_rows({INPUT: x})
    monitor.observe_named(names, rows, outputs)
    estimator.observe(outputs)
    report = monitor.compute()
    assert report is not None
    estimated = estimator.estimate()
    threshold = predictor.task.thresholds.get("accuracy")
    fired = []
    if report.weighted_share >= float(alerts.drift_share):
        fired.append("weighted_drift")
    if report.prediction_jsd >= float(alerts.prediction_jsd):
        fired.append("prediction_drift")
    if estimated is not None and threshold is not None and estimated < threshold:
        fired.append("estimated_accuracy")
    drifted = [n for n, d in zip(monitor.feature_names, report.drifted, strict=True) if d]
    return Judged(report.weighted_share, report.share, report.prediction_jsd, estimated,
                  float((outputs["class_index"] == y).mean()), fired, drifted, report.share >= OLD_SHARE)


def run_seed(seed: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="weighted-drift-") as tmp:
        model_dir, splits, metadata = trained_breast_cancer(seed, epochs, Path(tmp))
        predictor = load_predictor(model_dir)
    profile = metadata["profile"]
    names = list(profile["features"])
    importance = predictor.config.extra["feature_importance"]
    order = sorted(names, key=lambda n: importance[n], reverse=True)
    x_all = np.concatenate([splits[s][INPUT] for s in ("train", "val", "test")]).astype(np.float32)
    y_all = np.concatenate([splits[s]["label"] for s in ("train", "val", "test")])
    take = np.random.default_rng(seed).choice(len(x_all), WINDOW, replace=True)
    x, y = x_all[take], y_all[take]
    sd = np.array([profile["features"][n]["std"] for n in names], dtype=np.float32)
    alerts = AlertSettings()
    windows = {}
    for name, features in (("in_distribution", []), ("top2_plus_3sd", order[:2]), ("bottom2_plus_3sd", order[-2:])):
        shifted = x.copy()
        for feature in features:
            j = names.index(feature)
            shifted[:, j] += 3 * sd[j]
        windows[name] = {"shifted": features, **judge(predictor, profile, shifted, y, alerts).__dict__}
    total = sum(importance.values())
    return {"seed": seed, "top2": order[:2], "top2_importance_share": sum(importance[n] for n in order[:2]) / total,
            "bottom2": order[-2:], "windows": windows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = [run_seed(int(s), args.epochs) for s in args.seeds.split(",")]
    print(f"{'seed':<5}{'window':<18}{'weighted':>9}{'share':>7}{'pred JSD':>9}{'est. acc':>9}{'real acc':>9}"
          f"  {'fired (retrain)':<50}{'old rule'}")
    for r in results:
        for name, w in r["windows"].items():
            estimated = "-" if w["estimated_accuracy"] is None else f"{w['estimated_accuracy']:.3f}"
            print(f"{r['seed']:<5}{name:<18}{w['weighted_share']:>9.3f}{w['share']:>7.3f}{w['prediction_jsd']:>9.3f}"
                  f"{estimated:>9}{w['realised_accuracy']:>9.3f}  {','.join(w['fired']) or 'none':<50}"
                  f"{'fires' if w['old_rule_fires'] else 'quiet'}")
        print(f"     top 2: {r['top2']} ({100 * r['top2_importance_share']:.0f}% of the importance); "
              f"bottom 2: {r['bottom2']}")
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
