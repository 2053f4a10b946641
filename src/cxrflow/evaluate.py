"""Evaluation on the held-out test split (paper section 4.2).

Accuracy, macro precision / recall / F1, per-class metrics, the confusion matrix and the mean
classification time per image in milliseconds. Metric computation is pure NumPy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of class-``i`` images predicted as ``j``."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return cm


def compute_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro and per-class precision / recall / F1, and the confusion matrix.

    A class with no predictions has precision 0 (and no true images: recall 0), the
    conservative convention.
    """
    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    actual = cm.sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    total = cm.sum()
    out: dict[str, Any] = {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "n_test": int(total),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(actual[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
    }
    return out


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics for MLflow (``test_accuracy``, ``test_f1_covid``...)."""
    out = {
        f"test_{k}": float(metrics[k])
        for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro")
    }
    for c, m in metrics["per_class"].items():
        for name in ("precision", "recall", "f1"):
            out[f"test_{name}_{c}"] = float(m[name])
    if "latency_ms_per_image" in metrics:
        out["test_latency_ms_per_image"] = float(metrics["latency_ms_per_image"])
    return out


def measure_latency(
    predict_one: Callable[[np.ndarray], Any], x: np.ndarray, samples: int, warmup: int
) -> float:
    """Mean wall time (ms) to classify one image, as the paper reports (Figure 6).

    Runs ``warmup`` untimed calls, then ``samples`` timed single-image calls cycling through
    ``x``.
    """
    if len(x) == 0:
        return float("nan")
    for i in range(warmup):
        predict_one(x[i % len(x)][None])
    t0 = time.perf_counter()
    for i in range(samples):
        predict_one(x[i % len(x)][None])
    return (time.perf_counter() - t0) * 1000.0 / samples


def evaluate_model(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    classes: Sequence[str],
    latency_samples: int,
    latency_warmup: int,
) -> tuple[dict[str, Any], np.ndarray]:
    """Predict the test split and compute metrics and latency; returns (metrics, probabilities)."""
    probs = np.asarray(model.predict(x.astype(np.float32), verbose=0))
    metrics = compute_metrics(y, probs.argmax(axis=1), classes)

    def one(img: np.ndarray) -> Any:
        # predict_on_batch runs the compiled predict function: what a serving call costs,
        # without Keras' per-call eager dispatch overhead
        return model.predict_on_batch(img.astype(np.float32))

    metrics["latency_ms_per_image"] = measure_latency(one, x, latency_samples, latency_warmup)
    return metrics, probs


def plot_confusion(
    cm: Sequence[Sequence[int]], classes: Sequence[str], title: str, out: Path
) -> Path:
    """Save a labelled confusion-matrix heat map as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=110)
    ax.imshow(arr, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    vmax = arr.max() if arr.size else 0
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            color = "white" if arr[i, j] > vmax / 2 else "black"
            ax.text(j, i, str(arr[i, j]), ha="center", va="center", color=color)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
