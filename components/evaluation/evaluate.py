"""Step 3, evaluation: test-split metrics, an overfitting signal, and the plots and report people read.

:func:`evaluate` is the core: the task's own ``evaluate`` over the served path (the saved model loaded
with :func:`pillars.components.model.predictor.load_predictor`); :func:`report_html` and the figure helpers
make the outputs that KFP (``Metrics``, ``ClassificationMetrics``, ``HTML``) and MLflow (artifacts) show.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from pillars.components.evaluation.scoring import Split, score, task_metrics
from pillars.components.training.fit import load_history
from pillars.components.model.predictor import Predictor, load_predictor
from pillars.components.records import as_test_metric
from pillars.components.registry.tracking import configure_tracking

OVERFIT_GAP = 0.05
"""Train-minus-validation gap of the primary metric (relative for lower-is-better metrics) above which the
model is flagged as overfitting."""


@dataclasses.dataclass
class Evaluation:
    """Metrics of one model on the three splits, plus what the plots need."""

    metrics: dict[str, float]
    kind: str
    classes: list[str] | None = None
    confusion: list[list[int]] | None = None
    roc: dict[str, list[float]] | None = None
    overfitting: bool = False


def split_metrics(predictor: Predictor, split: Split) -> dict[str, float]:
    """The task's metrics of ``predictor`` on one split (in memory, an ``.npz`` file, or shards, streamed)."""
    return task_metrics(predictor, score(predictor, split))


def overfit_gap(metrics: dict[str, float], primary: str, lower_is_better: bool) -> float:
    """Train-minus-validation gap of ``primary`` (for lower-is-better metrics, relative validation excess)."""
    train, val = metrics[f"train_{primary}"], metrics[f"val_{primary}"]
    if lower_is_better:
        return float((val - train) / max(abs(train), 1e-12))
    return float(train - val)


def evaluate(predictor: Predictor, splits: Mapping[str, Split]) -> Evaluation:
    """Test metrics (unprefixed), ``train_*``/``val_*`` metrics, and the overfitting gap on the primary metric.

    A classifier (outputs ``class_index`` and ``probabilities``) also gets the test confusion matrix, and
    a binary one the ROC curve.

    Args:
        predictor: the trained model, loaded with its task.
        splits: ``train``, ``val`` and ``test``: named arrays, ``.npz`` files, or shard folders (streamed,
            one split at a time).
    """
    task, prep = predictor.task, predictor.prep
    test = score(predictor, splits["test"])  # kept for the plots; the other splits' outputs are dropped
    metrics = task_metrics(predictor, test)
    for name in ("train", "val"):
        metrics.update({f"{name}_{k}": v for k, v in split_metrics(predictor, splits[name]).items()})
    primary = task.primary_metric
    gap = 0.0
    if f"train_{primary}" in metrics and f"val_{primary}" in metrics:
        gap = overfit_gap(metrics, primary, task.lower_is_better)
    metrics["overfit_gap"] = gap
    classes = list(prep["classes"]) if prep.get("classes") else None
    result = Evaluation(metrics, task.kind, classes, overfitting=gap > OVERFIT_GAP)
    outputs = {s.name for s in predictor.signature.outputs}
    target = getattr(task, "target_column", "label")
    if (task.kind == "classification" and classes and {"class_index", "probabilities"} <= outputs
            and target in test.examples):
        from sklearn import metrics as skm  # seconds of imports: only in the processes that score

        y_test = np.asarray(test.examples[target], dtype=np.int64)
        out = test.outputs
        result.confusion = skm.confusion_matrix(y_test, out["class_index"], labels=range(len(classes))).tolist()
        if len(classes) == 2 and len(np.unique(y_test)) == 2:
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
    return f"eval_{key}" if key.startswith(("train_", "val_")) else as_test_metric(key) if key != "overfit_gap" else key


def run_evaluation(model_dir: str, split_paths: dict[str, str], mlflow_run_id: str, report_path: str,
                   tracking_uri: str = "") -> Evaluation:
    """Evaluate the trained model, log metrics and plots to its MLflow run, write the HTML report."""
    import matplotlib.pyplot as plt
    import mlflow

    configure_tracking(tracking_uri or None)
    predictor = load_predictor(model_dir)
    result = evaluate(predictor, split_paths)
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
