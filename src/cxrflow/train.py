"""Training the paper's four models (section 4.1).

- Adam (lr, beta_1, beta_2), categorical cross-entropy, early stopping on the validation loss
  (``patience``, best weights restored) and learning rate x``reduce_lr_factor`` after
  ``reduce_lr_patience`` epochs without improvement.
- ``init`` is ``scratch`` (one ``full`` phase), ``imagenet`` or the key of another trained
  model (a transfer, e.g. Model_2 from ``model_0``). Pretrained models train in two phases:
  ``head`` (only the new classifier trainable, at ``learning_rate``) then ``finetune`` at
  ``fine_tune_learning_rate``, unfrozen as the architecture says (Model_2: whole network;
  Model_3: the last ``unfreeze_last`` layers of the ResNet-50 backbone).
- What depends on the architecture lives in :mod:`cxrflow.models`, not here.
Tracking is attached through ``callbacks``; this module never imports mlflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxrflow.config import ModelSpec, TrainParams
from cxrflow.datasets import class_weights, make_tf_dataset
from cxrflow.models import (
    freeze_all_but_classifier,
    get_architecture,
    replace_classifier,
)

__all__ = [
    "CallbackFactory",
    "TrainResult",
    "freeze_all_but_classifier",
    "replace_classifier",
    "set_seed",
    "train_model",
    "unfreeze",
]

log = logging.getLogger(__name__)

CallbackFactory = Callable[[str, int], Sequence[Any]]
"""``(phase, epoch_offset) -> extra Keras callbacks`` (e.g. the MLflow epoch logger)."""


@dataclass
class TrainResult:
    """A trained model and what happened while training it."""

    model: Any
    history: dict[str, list[float]] = field(default_factory=dict)
    phases: list[dict[str, Any]] = field(default_factory=list)
    pretrained: str = "n/a"


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow."""
    import keras

    keras.utils.set_random_seed(seed)


def _compile(model: Any, lr: float, p: TrainParams) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr, beta_1=p.beta_1, beta_2=p.beta_2),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )


def _fit(
    model: Any,
    phase: str,
    lr: float,
    p: TrainParams,
    train_ds: Any,
    val_ds: Any,
    weights: dict[int, float] | None,
    epoch_offset: int,
    extra_callbacks: CallbackFactory | None,
    verbose: int,
) -> dict[str, list[float]]:
    import keras

    _compile(model, lr, p)
    callbacks: list[Any] = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=p.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=p.reduce_lr_factor, patience=p.reduce_lr_patience
        ),
    ]
    if extra_callbacks is not None:
        callbacks.extend(extra_callbacks(phase, epoch_offset))
    log.info("phase %s: lr=%g, up to %d epochs", phase, lr, p.epochs)
    hist = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=p.epochs,
        callbacks=callbacks,
        class_weight=weights,
        shuffle=False,  # the tf.data pipeline already reshuffles every epoch
        verbose=verbose,
    )
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def unfreeze(model: Any, spec: ModelSpec) -> int:
    """Unfreeze ``model`` for fine-tuning as its architecture says; returns the layers unfrozen.

    See :meth:`cxrflow.models.base.Architecture.unfreeze` (e.g. ``resnet50`` keeps BatchNorm
    frozen; ``small_cnn`` unfreezes the whole net or its last ``unfreeze_last`` layers).
    """
    return get_architecture(spec.architecture).unfreeze(model, spec.unfreeze_last)


def train_model(
    spec: ModelSpec,
    params: TrainParams,
    classes: Sequence[str],
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    base_model: Any | None = None,
    callbacks: CallbackFactory | None = None,
    verbose: int = 2,
) -> TrainResult:
    """Train one model as the paper describes.

    Args:
        spec: The model's spec (architecture, init, unfreeze_last, weights_path).
        params: Training hyper-parameters.
        classes: Class names, in output order.
        data: ``(x_train, y_train, x_val, y_val)``; x uint8 ``(n, s, s, 1)``, y int indices.
        base_model: The trained model named by ``spec.init`` (a Keras model of the same
            architecture) when ``spec.init`` is neither ``scratch`` nor ``imagenet``.
        callbacks: Factory of extra callbacks per phase.
        verbose: Keras verbosity (2 = one line per epoch, 1 = progress bar).

    Returns:
        The trained model, merged history (phases concatenated) and phase summaries.

    Raises:
        ValueError: Empty split, unknown architecture, an init it does not support, a transfer
            without ``base_model`` or from a model of another architecture.
    """
    x_tr, y_tr, x_va, y_va = data
    k = len(classes)
    if len(x_tr) == 0 or len(x_va) == 0:
        raise ValueError(f"empty split: {len(x_tr)} train / {len(x_va)} validation images")
    arch = get_architecture(spec.architecture)
    kind = arch.check_init(spec.init)
    if kind == "transfer" and base_model is None:
        raise ValueError(
            f"init={spec.init!r} transfers from the trained {spec.init!r} model: "
            "pass it as base_model"
        )
    set_seed(params.seed)
    train_ds = make_tf_dataset(x_tr, y_tr, k, params.batch_size, True, params.seed)
    val_ds = make_tf_dataset(x_va, y_va, k, params.batch_size, False, params.seed)
    weights = class_weights(y_tr, k) if params.class_weights else None

    pretrained = "n/a"
    if kind == "transfer":
        model = arch.transfer(base_model, k)
        pretrained = spec.init
    else:
        model = arch.build(params.image_size, k, spec.init, spec.weights_path)
        if kind == "imagenet":
            pretrained = spec.weights_path or "none"
    # Pretrained features (transfer, imagenet) first get a head fitted on frozen features, so
    # that the random classifier's large gradients do not wreck them, then a fine-tune.
    phases: list[tuple[str, float]] = (
        [("full", params.learning_rate)]
        if kind == "scratch"
        else [("head", params.learning_rate), ("finetune", params.fine_tune_learning_rate)]
    )

    history: dict[str, list[float]] = {}
    summaries: list[dict[str, Any]] = []
    offset = 0
    for phase, lr in phases:
        if phase == "head":
            freeze_all_but_classifier(model)
        elif phase == "finetune":
            unfreeze(model, spec)
        trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
        h = _fit(model, phase, lr, params, train_ds, val_ds, weights, offset, callbacks, verbose)
        n_epochs = len(h.get("loss", []))
        summaries.append(
            {"phase": phase, "learning_rate": lr, "epochs": n_epochs, "trainable_params": trainable}
        )
        for key, vals in h.items():
            history.setdefault(key, []).extend(vals)
        history.setdefault("phase", []).extend([float(len(summaries) - 1)] * n_epochs)
        offset += n_epochs
    return TrainResult(model=model, history=history, phases=summaries, pretrained=pretrained)
