"""What the audit shows a model and reads back: test and control images preprocessed as for
training, the central lung-field mask (and its figure), and the model's class probabilities
and penultimate features, in batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrflow.models.base import CLASSIFIER_LAYER

if TYPE_CHECKING:
    import pandas as pd


PREDICT_BATCH = 64


# ------------------------------------------------------------------------------ image inputs


def load_images(dataset_dir: str | Path, table: pd.DataFrame, image_size: int) -> np.ndarray:
    """Every image of ``table`` (its ``path`` column, relative to ``dataset_dir``), in order.

    Returns:
        ``(n, image_size, image_size, 1)`` uint8, preprocessed as for training.
    """
    from cxrflow.datasets import preprocess_image

    root = Path(dataset_dir)
    x = np.zeros((len(table), image_size, image_size, 1), dtype=np.uint8)
    for i, rel in enumerate(table["path"]):
        x[i] = preprocess_image(root / rel, image_size)
    return x


def control_arrays(
    dataset_dir: str | Path,
    manifest: pd.DataFrame,
    image_size: int,
    split_table: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The control keyword arguments of :func:`audit_model`, from a dataset's manifest.

    Args:
        dataset_dir: The dataset directory (images are relative to it).
        manifest: Its manifest.
        image_size: The model's input side.
        split_table: The model's split table: controls of patients in its ``train`` or ``val``
            rows are left out (:func:`cxrflow.data.split.select_controls`).

    Returns:
        ``x_controls``, ``findings_controls``, ``groups_controls``, ``labels_controls`` and
        ``sources_controls`` of the selected control rows.
    """
    from cxrflow.data.split import select_controls

    seen: list[str] = []
    if split_table is not None:
        seen = split_table.loc[split_table["split"] != "test", "patient_id"].tolist()
    rows = select_controls(manifest, seen)
    return {
        "x_controls": load_images(dataset_dir, rows, image_size),
        "findings_controls": rows["finding"].tolist(),
        "groups_controls": rows["patient_id"].tolist(),
        "labels_controls": rows["label"].tolist(),
        "sources_controls": rows["source"].tolist(),
    }


def lung_mask(image_size: int, fraction: float) -> np.ndarray:
    """The lung-field mask: True inside the centred square of side ``fraction`` x image side.

    The box has ``round(fraction * image_size)`` pixels a side (at least 1), centred (an odd
    leftover pixel goes to the bottom/right border). At the default 0.7 a 224-px image keeps
    a 34-px border all round: corners, shoulders, neck, side markers and journal labels stay
    visible; the lung fields, heart and mediastinum do not.

    Returns:
        ``(image_size, image_size)`` bool array, True where the ablation masks.

    Raises:
        ValueError: ``fraction`` outside (0, 1) or ``image_size`` < 1.
    """
    if not 0.0 < fraction < 1.0 or image_size < 1:
        raise ValueError(f"lung_mask: need 0 < fraction < 1 and image_size >= 1, got {fraction}")
    side = min(image_size, max(1, round(fraction * image_size)))
    start = (image_size - side) // 2
    mask = np.zeros((image_size, image_size), dtype=bool)
    mask[start : start + side, start : start + side] = True
    return mask


def mask_images(x: np.ndarray, fraction: float) -> np.ndarray:
    """A copy of ``x`` (``(n, s, s)`` or ``(n, s, s, 1)``) with each image's :func:`lung_mask`
    box set to that image's mean grey (of the whole, unmasked image, rounded)."""
    if x.ndim not in (3, 4) or x.shape[1] != x.shape[2]:
        raise ValueError(f"mask_images: expected (n, s, s[, 1]) images, got shape {x.shape}")
    mask = lung_mask(x.shape[1], fraction)
    out = x.copy()
    means = x.reshape(len(x), -1).mean(axis=1)
    for i, m in enumerate(means):
        out[i][mask] = np.asarray(np.rint(m), dtype=x.dtype)
    return out


def plot_mask(image: np.ndarray, fraction: float, path: str | Path) -> Path:
    """Save a PNG for the report: ``image`` with the masked box outlined, and as masked.

    Args:
        image: One grey image, ``(s, s)`` or ``(s, s, 1)``.
        fraction: ``AuditParams.mask_fraction``.
        path: Where to write the PNG (parents are created).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    img = np.asarray(image)
    img = img[..., 0] if img.ndim == 3 else img
    s = img.shape[0]
    mask = lung_mask(s, fraction)
    rows = np.flatnonzero(mask.any(axis=1))
    masked = mask_images(img[None], fraction)[0]
    fig = Figure(figsize=(6.4, 3.4), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, shown, title in (
        (axes[0], img, "input: masked box outlined"),
        (axes[1], masked, f"lung field masked ({fraction:.0%} of the side)"),
    ):
        ax.imshow(shown, cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    lo, side = rows[0] - 0.5, len(rows)
    axes[0].add_patch(Rectangle((lo, lo), side, side, fill=False, edgecolor="red", linewidth=1.5))
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


# -------------------------------------------------------------------------- model outputs


def predict_proba(model: Any, x: np.ndarray) -> np.ndarray:
    """Softmax outputs of ``model`` for uint8 images ``x`` (``(n, k)`` float)."""
    if len(x) == 0:
        return np.zeros((0, int(model.output_shape[-1])), dtype=np.float32)
    return np.asarray(model.predict(x.astype(np.float32), batch_size=PREDICT_BATCH, verbose=0))


def penultimate_features(model: Any, x: np.ndarray) -> np.ndarray:
    """The input of the model's ``classifier`` layer for images ``x`` (``(n, d)`` float)."""
    import keras

    head = model.get_layer(CLASSIFIER_LAYER)
    extractor = keras.Model(model.inputs, head.input)
    if len(x) == 0:
        return np.zeros((0, int(head.input.shape[-1])), dtype=np.float32)
    feats = extractor.predict(x.astype(np.float32), batch_size=PREDICT_BATCH, verbose=0)
    return np.asarray(feats).reshape(len(x), -1)
