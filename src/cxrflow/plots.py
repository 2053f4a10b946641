"""Evaluation and training plots, written as PNG.

Each function builds its own ``Figure`` on an Agg canvas instead of going through ``pyplot``:
no global backend switch, no figure registry to leak, safe in a notebook or a worker thread.
matplotlib is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrflow.stats import expected_calibration_error, reliability_bins

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


def plot_confusion(
    cm: Sequence[Sequence[int]], classes: Sequence[str], title: str, out: str | Path
) -> Path:
    """Save a labelled confusion-matrix heat map (rows true, columns predicted) as PNG.

    Args:
        cm: Counts, ``cm[true][predicted]``.
        classes: Class names, in index order.
        title: Figure title.
        out: PNG path (parents are created).

    Returns:
        ``out`` as a ``Path``.
    """
    arr = np.asarray(cm)
    fig = _figure(4.2, 3.8)
    ax = fig.add_subplot()
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
    return _save(fig, out)


def plot_roc(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    title: str,
    path: str | Path,
) -> Path:
    """Save one-vs-rest ROC curves, one line per class with its AUC in the legend, as PNG.

    A class absent from ``y_true`` (or the only class present) has no ROC curve; it is listed
    in the legend as ``n/a``.

    Args:
        y_true: True class indices, shape ``(n,)``.
        proba: Class probabilities, shape ``(n, k)``.
        classes: Class names, in output order.
        title: Figure title.
        path: PNG path (parents are created).

    Returns:
        ``path`` as a ``Path``.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y_true).ravel()
    p = np.asarray(proba, dtype=float)
    fig = _figure(4.6, 4.2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    for i, c in enumerate(classes):
        positive = y == i
        if positive.any() and not positive.all():
            fpr, tpr, _ = roc_curve(positive, p[:, i])
            auc = roc_auc_score(positive, p[:, i])
            ax.plot(fpr, tpr, label=f"{c} (AUC {auc:.3f})")
        else:
            ax.plot([], [], label=f"{c} (AUC n/a)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _phase_name(phase: Mapping[str, Any] | str) -> str:
    return str(phase["phase"]) if isinstance(phase, Mapping) else str(phase)


def plot_training_curves(
    history: Mapping[str, Sequence[float]],
    phases: Sequence[Mapping[str, Any] | str],
    title: str,
    path: str | Path,
) -> Path:
    """Save loss and accuracy per epoch (train and validation) with phase boundaries, as PNG.

    Args:
        history: Keras history merged over phases (``loss``, ``accuracy``, ``val_loss``,
            ``val_accuracy``; missing keys are skipped) and ``phase``: the index into ``phases``
            of each epoch, as :func:`cxrflow.train.train_model` writes it.
        phases: The phases in order: names (``head``, ``finetune``) or the phase summaries of
            ``train_model`` (dicts with a ``phase`` key).
        title: Figure title.
        path: PNG path (parents are created).

    Returns:
        ``path`` as a ``Path``.
    """
    names = [_phase_name(p) for p in phases]
    n_epochs = len(history.get("loss", history.get("accuracy", [])))
    phase_of = np.asarray(history.get("phase", [0] * n_epochs), dtype=int)[:n_epochs]
    epochs = np.arange(1, n_epochs + 1)
    # first epoch (0-based) of each phase; a boundary lies half-way before it
    first = np.flatnonzero(np.diff(phase_of, prepend=-1) != 0) if n_epochs else np.array([], int)

    fig = _figure(8.0, 3.4)
    for col, metric in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, col + 1)
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if len(history.get(key, [])):
                ax.plot(epochs[: len(history[key])], history[key], marker=".", label=label)
        for i, start in enumerate(first):
            if i > 0:
                ax.axvline(start + 0.5, color="grey", linestyle="--", linewidth=1)
            index = int(phase_of[start])
            name = names[index] if 0 <= index < len(names) else f"phase {index}"
            ax.text(
                start + 0.5,
                0.98,
                f" {name}",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
                color="dimgrey",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend(fontsize=8, loc="center right")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_reliability(
    y_true: np.ndarray, proba: np.ndarray, bins: int, title: str, path: str | Path
) -> Path:
    """Save a reliability diagram (accuracy against confidence per bin, ECE in the title) as PNG.

    Bars show each bin's accuracy of the top-label prediction; the dots its mean confidence;
    the diagonal is perfect calibration. Bins are those of
    :func:`cxrflow.stats.reliability_bins`.

    Args:
        y_true: True class indices, shape ``(n,)``.
        proba: Class probabilities, shape ``(n, k)``.
        bins: Number of equal-width confidence bins.
        title: Figure title (the ECE is appended).
        path: PNG path (parents are created).

    Returns:
        ``path`` as a ``Path``.
    """
    r = reliability_bins(y_true, proba, bins)
    ece = expected_calibration_error(y_true, proba, bins)
    edges = r["edges"]
    width = np.diff(edges)
    full = r["count"] > 0
    fig = _figure(4.4, 4.2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    ax.bar(
        edges[:-1][full],
        r["accuracy"][full],
        width=width[full],
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy",
    )
    centres = edges[:-1] + width / 2
    ax.plot(centres[full], r["confidence"][full], "o", color="crimson", label="mean confidence")
    for x, n, acc in zip(centres[full], r["count"][full], r["accuracy"][full], strict=True):
        ax.text(x, acc, f"{int(n)}", ha="center", va="bottom", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece:.3f} ({bins} bins)", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)
