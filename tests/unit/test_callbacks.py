"""Early stopping and the plateau schedule fire during training, not only in the config.

The data are crafted so that the validation loss gets worse after the first epoch: every
training label is class 0 and the validation set is the same images labelled class 1, so each
step that fits the training set raises the validation loss. Early stopping must then stop
``patience`` epochs after the first one, restore the first epoch's weights, and the learning
rate must drop by ``reduce_lr_factor`` every ``reduce_lr_patience`` epochs without improvement.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxrflow.config import ModelSpec, TrainParams

keras = pytest.importorskip("keras")

from cxrflow.train import TrainResult, train_model  # noqa: E402

CLASSES = ("normal", "bacterial", "covid")
LR = 1e-3


def plateau_data(n: int = 24, size: int = 32) -> tuple[np.ndarray, ...]:
    """Training labels all 0, validation = the same images labelled 1: val_loss only rises."""
    x = np.random.default_rng(0).integers(0, 255, (n, size, size, 1)).astype(np.uint8)
    return x, np.zeros(n, np.int32), x, np.ones(n, np.int32)


def plateau_params(epochs: int = 20) -> TrainParams:
    return TrainParams(
        image_size=32,
        batch_size=8,
        epochs=epochs,
        patience=4,
        learning_rate=LR,
        reduce_lr_factor=0.5,
        reduce_lr_patience=2,
    )


def expected_learning_rates(val_loss: list[float], p: TrainParams) -> list[float]:
    """The rate each epoch ran at, by ReduceLROnPlateau's rule (min_delta 0, no cooldown)."""
    lr, best, wait, out = p.learning_rate, np.inf, 0, []
    for v in val_loss:
        out.append(lr)
        if v < best:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= p.reduce_lr_patience:
                lr, wait = lr * p.reduce_lr_factor, 0
    return out


@pytest.fixture(scope="module")
def plateau_run() -> tuple[TrainParams, TrainResult]:
    p = plateau_params()
    spec = ModelSpec(dataset="dataset_1", architecture="small_cnn")
    return p, train_model(spec, p, CLASSES, plateau_data(), verbose=0)


def test_the_crafted_data_make_val_loss_rise(plateau_run: tuple[TrainParams, TrainResult]) -> None:
    """Precondition of the two tests below: the first epoch is the best and it only worsens."""
    _, result = plateau_run
    val = result.history["val_loss"]
    assert np.all(np.diff(val) > 0), val


def test_early_stopping_stops_and_restores_best_weights(
    plateau_run: tuple[TrainParams, TrainResult],
) -> None:
    p, result = plateau_run
    history = result.history
    val = history["val_loss"]
    # best at epoch 1, then `patience` epochs without improvement: stop after patience + 1
    assert len(val) == p.patience + 1 < p.epochs
    assert result.phases[0]["epochs"] == len(val)
    *_, x_va, y_va = plateau_data()
    probs = np.asarray(result.model.predict(x_va.astype("float32"), verbose=0))
    restored = float(np.mean(-np.log(probs[np.arange(len(y_va)), y_va])))
    assert restored == pytest.approx(val[0], rel=1e-4)
    assert restored < val[-1]


def test_reduce_lr_on_plateau_lowers_the_learning_rate(
    plateau_run: tuple[TrainParams, TrainResult],
) -> None:
    p, result = plateau_run
    history = result.history
    lrs = history["learning_rate"]
    assert lrs == pytest.approx(expected_learning_rates(history["val_loss"], p), rel=1e-6)
    # concretely: epochs 1-3 at LR; two epochs without improvement (2, 3) halve it for 4 and 5
    assert lrs == pytest.approx([LR, LR, LR, LR / 2, LR / 2], rel=1e-6)
