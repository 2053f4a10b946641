"""Grad-CAM explanations (Selvaraju et al., 2017) of the trained models.

A class's heat map is the ReLU of the last convolutional feature maps weighted by the spatially
averaged gradients of that class's logit, normalised to [0, 1] and resized to the input. Which
layer that is, and how to reach it through a nested backbone, is the architecture's rule
(:meth:`cxrflow.models.base.Architecture.gradcam_model`); any other flat model gets the
generic rule (:func:`cxrflow.models.base.flat_gradcam_model`). Imports TensorFlow and matplotlib
lazily; nothing here writes files except :func:`gradcam_grid`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrflow.models import CLASSIFIER_LAYER, architecture_of
from cxrflow.models.base import flat_gradcam_model

__all__ = ["ALPHA", "COLORMAP", "grad_cam", "gradcam_grid", "overlay", "sample_per_class"]

ALPHA = 0.4
"""Weight of the heat map in :func:`overlay` (the X-ray stays readable underneath)."""
COLORMAP = "jet"


def _as_batch(images: np.ndarray) -> np.ndarray:
    """``(s, s)``, ``(s, s, 1)`` or ``(n, s, s, 1)`` images as a float32 ``(n, s, s, 1)`` batch."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(f"expected grey images (s, s[, 1]) or (n, s, s, 1), got {x.shape}")
    return x


def _gradcam_model(model: Any, layer_name: str | None) -> Any:
    """The architecture's Grad-CAM view of ``model``; any other flat model's generic one."""
    try:
        arch = architecture_of(model)
    except ValueError:
        return flat_gradcam_model(model, layer_name)
    return arch.gradcam_model(model, layer_name)


def _heatmaps(
    model: Any, x: np.ndarray, class_indices: Sequence[int], layer_name: str | None
) -> np.ndarray:
    """Grad-CAM maps ``(n, s, s)`` in [0, 1] of ``x[i]`` for ``class_indices[i]``."""
    import tensorflow as tf

    grad_model = _gradcam_model(model, layer_name)
    classifier = model.get_layer(CLASSIFIER_LAYER)
    onehot = tf.one_hot(list(class_indices), classifier.units)
    inputs = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        feats, features = grad_model(inputs, training=False)
        logits = tf.matmul(features, classifier.kernel) + classifier.bias
        # The class's logit minus the mean logit: not the softmax output, whose gradient
        # vanishes for a confident prediction, and not the raw logit, whose share common to
        # all classes (softmax ignores it) can dominate the map with evidence for no class.
        centred = logits - tf.reduce_mean(logits, axis=1, keepdims=True)
        score = tf.reduce_sum(centred * onehot)
    # images are independent (inference mode), so one gradient of the sum serves all of them
    grads = tape.gradient(score, feats)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(feats * weights, axis=-1))
    peak = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
    # a map with no positive evidence stays 0 rather than dividing by 0
    cams = tf.math.divide_no_nan(cams, peak)
    size = x.shape[1:3]
    resized = tf.image.resize(cams[..., None], size, method="bilinear")[..., 0]
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def grad_cam(
    model: Any, image: np.ndarray, class_index: int, layer_name: str | None = None
) -> np.ndarray:
    """Grad-CAM heat map of ``model``'s evidence for ``class_index`` in ``image``.

    Args:
        model: A model built by a registered architecture (``small_cnn``, ``resnet50``), or
            any flat functional model ending in a softmax layer named ``classifier``.
        image: One grey image, ``(s, s)`` or ``(s, s, 1)``, values in [0, 255] as the model
            takes them.
        class_index: The output to explain (usually the predicted class).
        layer_name: Convolutional layer to use; ``None`` = the architecture's choice (the last
            convolutional layer; for ``resnet50`` the backbone's last block output).

    Returns:
        A float32 ``(s, s)`` map in [0, 1] (1 = strongest evidence; all 0 when none).

    Raises:
        ValueError: No convolutional layer to explain, or ``image`` is not one grey image.
    """
    x = _as_batch(image)
    if len(x) != 1:
        raise ValueError(f"grad_cam explains one image, got {len(x)}")
    if not 0 <= class_index < model.get_layer(CLASSIFIER_LAYER).units:
        raise ValueError(f"class_index {class_index} out of range")
    return _heatmaps(model, x, [class_index], layer_name)[0]


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """A heat map blended over a grey X-ray: ``(s, s, 3)`` RGB uint8.

    Args:
        image: Grey uint8 image ``(s, s)`` or ``(s, s, 1)``.
        heatmap: ``(s, s)`` values in [0, 1] (from :func:`grad_cam`).
        alpha: Weight of the colour-mapped heat map (``jet``).

    Raises:
        ValueError: The shapes differ.
    """
    from matplotlib import colormaps

    grey = np.asarray(image)
    if grey.ndim == 3 and grey.shape[-1] == 1:
        grey = grey[..., 0]
    heat = np.asarray(heatmap, dtype=np.float32)
    if grey.shape != heat.shape:
        raise ValueError(f"image {grey.shape} and heat map {heat.shape} differ in shape")
    coloured = colormaps[COLORMAP](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=-1)
    blended = (1.0 - alpha) * rgb + alpha * coloured
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def sample_per_class(y: np.ndarray, n_classes: int, per_class: int, seed: int) -> list[np.ndarray]:
    """A fixed, seeded sample of at most ``per_class`` indices of each class (sorted)."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(n_classes):
        idx = np.flatnonzero(np.asarray(y) == c)
        k = min(per_class, len(idx))
        picks.append(np.sort(rng.choice(idx, size=k, replace=False)) if k else idx[:0])
    return picks


def gradcam_grid(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    classes: Sequence[str],
    per_class: int,
    seed: int,
    title: str,
    path: str | Path,
) -> Path:
    """Write one PNG of Grad-CAM overlays: a row per class, ``per_class`` test images each.

    The images are a fixed, seeded sample of each true class (:func:`sample_per_class`), so
    that models are compared on the same images; each is explained for its predicted class
    and captioned with the true class, the predicted class and its probability.

    Args:
        model: A model of a registered architecture.
        x: uint8 images ``(n, s, s, 1)``.
        y: True class indices ``(n,)``.
        classes: Class names, in output order.
        per_class: Images per class (columns), >= 1.
        seed: Sampling seed.
        title: Figure title (e.g. the model key and split).
        path: Output PNG; parent directories are created.

    Returns:
        ``path``.

    Raises:
        ValueError: ``per_class`` < 1 or ``x`` and ``y`` differ in length.
    """
    from matplotlib.figure import Figure

    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    picks = sample_per_class(y, len(classes), per_class, seed)
    chosen = np.concatenate(picks).astype(int)
    probs = np.zeros((0, len(classes)), np.float32)
    cams = np.zeros((0, *x.shape[1:3]), np.float32)
    if len(chosen):
        batch = _as_batch(x[chosen])
        probs = np.asarray(model.predict(batch, verbose=0))
        cams = _heatmaps(model, batch, [int(i) for i in probs.argmax(axis=1)], None)

    fig = Figure(figsize=(2.3 * per_class, 2.5 * len(classes) + 0.4), dpi=100)
    axes = fig.subplots(len(classes), per_class, squeeze=False)
    row_start = np.cumsum([0] + [len(p) for p in picks])
    for c, name in enumerate(classes):
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_axis_off()
            k = row_start[c] + j
            if j >= len(picks[c]):
                ax.text(0.5, 0.5, f"no {name} image", ha="center", va="center", fontsize=8)
                continue
            pred = int(probs[k].argmax())
            ax.imshow(overlay(x[chosen[k]], cams[k]))
            ax.set_title(
                f"true {name}\npred {classes[pred]} ({probs[k, pred]:.2f})",
                fontsize=8,
                color="black" if pred == c else "firebrick",
            )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
