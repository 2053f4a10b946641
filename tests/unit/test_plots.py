"""Each plot writes a valid, non-trivial PNG; the training curves mark the phase boundary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cxrflow import plots
from cxrflow.evaluate import plot_confusion

CLASSES = ("normal", "bacterial", "covid")
Y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
PROBA = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.3, 0.5, 0.2],
        [0.05, 0.9, 0.05],
        [0.25, 0.65, 0.1],
        [0.1, 0.05, 0.85],
        [0.5, 0.3, 0.2],
        [0.6, 0.3, 0.1],
        [0.2, 0.7, 0.1],
    ]
)
HISTORY = {
    "loss": [1.2, 0.9, 0.8, 0.6, 0.5],
    "val_loss": [1.3, 1.0, 0.95, 0.7, 0.65],
    "accuracy": [0.4, 0.6, 0.65, 0.8, 0.85],
    "val_accuracy": [0.35, 0.55, 0.6, 0.75, 0.8],
    "phase": [0.0, 0.0, 0.0, 1.0, 1.0],
}
PHASES = [{"phase": "head", "epochs": 3}, {"phase": "finetune", "epochs": 2}]


def assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.stat().st_size > 5_000  # more than an empty canvas
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
    assert 300 <= width <= 1500
    assert 300 <= height <= 1500


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plots save, for looking inside them."""
    saved: list[Any] = []
    save = plots._save

    def keep(fig: Any, path: Path) -> Path:
        saved.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def test_confusion_png(tmp_path: Path) -> None:
    out = plot_confusion([[3, 1, 0], [0, 4, 0], [1, 0, 2]], CLASSES, "m", tmp_path / "a" / "c.png")
    assert out == tmp_path / "a" / "c.png"
    assert_png(out)


def test_roc_png_with_auc_in_legend(tmp_path: Path, figures: list[Any]) -> None:
    out = plots.plot_roc(Y, PROBA, CLASSES, "model_1 ROC", tmp_path / "roc.png")
    assert_png(out)
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    # normal pos .7 .3 .6 vs neg .05 .25 .1 .5 .2 -> (5 + 4 + 5) / 15
    assert f"normal (AUC {14 / 15:.3f})" in legend
    assert len(legend) == 4  # chance + one per class


def test_roc_with_absent_class(tmp_path: Path, figures: list[Any]) -> None:
    keep = Y != 2
    plots.plot_roc(Y[keep], PROBA[keep], CLASSES, "t", tmp_path / "roc.png")
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert "covid (AUC n/a)" in legend


def test_training_curves_mark_the_phase_boundary(tmp_path: Path, figures: list[Any]) -> None:
    out = plots.plot_training_curves(HISTORY, PHASES, "model_1 training", tmp_path / "t.png")
    assert_png(out)
    loss_ax, acc_ax = figures[0].axes
    for ax in (loss_ax, acc_ax):
        assert {t.get_text().strip() for t in ax.texts} == {"head", "finetune"}
        vertical = [ln.get_xdata() for ln in ax.lines if len(set(ln.get_xdata())) == 1]
        assert [float(x[0]) for x in vertical] == [3.5]  # between epoch 3 (head) and 4
        assert len(ax.get_legend().get_texts()) == 2  # train, validation


def test_training_curves_single_phase_names(tmp_path: Path, figures: list[Any]) -> None:
    history = {k: v for k, v in HISTORY.items() if k != "phase"}
    plots.plot_training_curves(history, ["full"], "scratch", tmp_path / "t.png")
    ax = figures[0].axes[0]
    assert [t.get_text().strip() for t in ax.texts] == ["full"]
    assert not [ln for ln in ax.lines if len(set(ln.get_xdata())) == 1]


def test_reliability_png_with_ece_in_title(tmp_path: Path, figures: list[Any]) -> None:
    out = plots.plot_reliability(Y, PROBA, 5, "model_1", tmp_path / "rel.png")
    assert_png(out)
    from cxrflow.stats import expected_calibration_error

    ece = expected_calibration_error(Y, PROBA, 5)
    assert f"ECE {ece:.3f}" in figures[0].axes[0].get_title()
