"""Step 3, evaluation: test-split metrics, an overfitting signal, and the plots and report people read.

:func:`evaluate` is the core; :func:`report_html` and the figure helpers make the outputs that KFP
(``Metrics``, ``ClassificationMetrics``, ``HTML``) and MLflow (artifacts) show.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from typing import Any

import numpy as np
from sklearn import metrics as skm

from pillars.components.fit import load_history
from pillars.components.models import Predictor
from pillars.components.prepare_data import load_split
from pillars.components.tracking import configure_tracking

OVERFIT_GAP = 0.05
"""Train-minus-validation accuracy (or relative RMSE) gap above which the model is flagged as overfitting."""


@dataclasses.dataclass
class Evaluation:
    """Metrics of one model on the three splits, plus what the plots need."""

    metrics: dict[str, float]
    kind: str
    classes: list[str] | None = None
    confusion: list[list[int]] | None = None
    roc: dict[str, list[float]] | None = None
    overfitting: bool = False


def split_metrics(predictor: Predictor, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Metrics of ``predictor`` on one split (classification: accuracy, macro F1, ROC-AUC if binary;
    regression: RMSE, MAE, R²)."""
    out = predictor.predict(x)
    if predictor.config.kind == "classification":
        pred = out["class_index"]
        result = {"accuracy": skm.accuracy_score(y, pred),
                  "f1_macro": skm.f1_score(y, pred, average="macro", labels=range(predictor.config.n_outputs),
                                           zero_division=0)}
        if predictor.config.n_outputs == 2 and len(np.unique(y)) == 2:
            result["roc_auc"] = skm.roc_auc_score(y, out["probabilities"][:, 1])
        return {k: float(v) for k, v in result.items()}
    value = out["value"]
    return {"rmse": float(np.sqrt(skm.mean_squared_error(y, value))),
            "mae": float(skm.mean_absolute_error(y, value)),
            "r2": float(skm.r2_score(y, value))}


def evaluate(predictor: Predictor, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Evaluation:
    """Test metrics (unprefixed), ``train_*``/``val_*`` metrics, and the overfitting gap.

    Args:
        predictor: the trained model.
        splits: ``train``, ``val`` and ``test`` as ``(x, y)``.
    """
    config = predictor.config
    metrics = split_metrics(predictor, *splits["test"])
    for name in ("train", "val"):
        metrics.update({f"{name}_{k}": v for k, v in split_metrics(predictor, *splits[name]).items()})
    if config.kind == "classification":
        gap = metrics["train_accuracy"] - metrics["val_accuracy"]
    else:
        gap = (metrics["val_rmse"] - metrics["train_rmse"]) / max(metrics["train_rmse"], 1e-12)
    metrics["overfit_gap"] = float(gap)
    result = Evaluation(metrics, config.kind, config.classes, overfitting=gap > OVERFIT_GAP)
    if config.kind == "classification":
        x_test, y_test = splits["test"]
        out = predictor.predict(x_test)
        result.confusion = skm.confusion_matrix(y_test, out["class_index"],
                                                labels=range(config.n_outputs)).tolist()
        if "roc_auc" in metrics:
            fpr, tpr, thresholds = skm.roc_curve(y_test, out["probabilities"][:, 1])
            result.roc = {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                          "thresholds": np.clip(thresholds, 0.0, 1.0).tolist()}
    return result


def confusion_figure(evaluation: Evaluation) -> Any:
    """A matplotlib figure of the confusion matrix (None for regression)."""
    if evaluation.confusion is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(evaluation.confusion)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * len(matrix), 1 + 0.5 * len(matrix)))
    ax.imshow(matrix, cmap="Blues")
    labels = evaluation.classes or []
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="black" if count < matrix.max() / 2 else "white")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test)")
    fig.tight_layout()
    return fig


def learning_curve_figure(history: list[dict[str, float]]) -> Any:
    """A matplotlib figure of train and validation loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("learning curve")
    fig.tight_layout()
    return fig


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode()


def report_html(evaluation: Evaluation, history: list[dict[str, float]], title: str) -> str:
    """A self-contained HTML page: metrics table, overfitting flag, learning curve and confusion matrix."""
    import matplotlib.pyplot as plt

    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in sorted(evaluation.metrics.items()))
    images = []
    for fig in (learning_curve_figure(history) if history else None, confusion_figure(evaluation)):
        if fig is not None:
            images.append(f'<img alt="plot" src="data:image/png;base64,{_png(fig)}">')
            plt.close(fig)
    flag = ("<p><b>Overfitting:</b> train/validation gap "
            f"{evaluation.metrics['overfit_gap']:.3f} exceeds {OVERFIT_GAP}</p>") if evaluation.overfitting else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1>{flag}<table border='1'><tr><th>metric</th><th>value</th></tr>{rows}"
            f"</table>{''.join(images)}</body></html>")


def mlflow_metric_name(key: str) -> str:
    """Test metrics are logged as ``test_<name>``; train/validation ones as ``eval_<split>_<name>``."""
    return f"eval_{key}" if key.startswith(("train_", "val_")) else f"test_{key}" if key != "overfit_gap" else key


def run_evaluation(model_dir: str, split_paths: dict[str, str], mlflow_run_id: str, report_path: str,
                   tracking_uri: str = "") -> Evaluation:
    """Evaluate the trained model, log metrics and plots to its MLflow run, write the HTML report."""
    import matplotlib.pyplot as plt
    import mlflow

    configure_tracking(tracking_uri or None)
    predictor = Predictor.load(model_dir)
    result = evaluate(predictor, {name: load_split(path) for name, path in split_paths.items()})
    history = load_history(model_dir)
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_metrics({mlflow_metric_name(k): v for k, v in result.metrics.items()})
        mlflow.set_tag("pillars.overfitting", str(result.overfitting).lower())
        figure = confusion_figure(result)
        if figure is not None:
            mlflow.log_figure(figure, "plots/confusion_matrix.png")
            plt.close(figure)
        page = report_html(result, history, f"{predictor.config.task}: evaluation")
        mlflow.log_text(page, "report.html")
    with open(report_path, "w") as f:
        f.write(page)
    return result
