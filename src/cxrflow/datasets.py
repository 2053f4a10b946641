"""Image preprocessing shared by training, evaluation and prediction.

There is exactly one preprocessing function, :func:`preprocess_image`: decode, convert to 8-bit
grayscale, resize to ``image_size`` x ``image_size`` (aspect ratio not kept, as in the paper).
Channel replication and intensity scaling live *inside* each Keras model, so a saved model
applies the rest of its preprocessing itself and ``cxrflow predict`` cannot drift from training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def preprocess_image(
    path: str | Path, image_size: int, max_pixels: int | None = None
) -> np.ndarray:
    """Load one image as a ``(image_size, image_size, 1)`` uint8 array.

    Args:
        path: Image file (any format Pillow reads).
        image_size: Output side in pixels.
        max_pixels: Refuse images of more than this many pixels before decoding them (the
            ingest limit, ``ingest.max_pixels``), for files that did not come through ingest;
            ``None`` leaves Pillow's own decompression-bomb limit in place.

    Raises:
        ValueError: The file cannot be decoded or is over ``max_pixels`` (the message names
            the file).
    """
    from PIL import Image, ImageOps

    from cxrflow.data.images import pixel_limit, to_storable

    limit = pixel_limit(max_pixels) if max_pixels is not None else contextlib.nullcontext()
    try:
        # Image.open reads only the header and, under pixel_limit, refuses an image over
        # max_pixels there, before any pixel is decoded
        with limit, Image.open(path) as raw:
            # the same mode rule as ingest (alpha on black, 16-bit min-max, CMYK -> L)
            stored, _ = to_storable(ImageOps.exif_transpose(raw))
            im = stored.convert("L").resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)[..., None]
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{path}: image too large for max_pixels {max_pixels}: {exc}") from exc
    except Exception as exc:
        raise ValueError(f"{path}: cannot decode image: {exc}") from exc


def load_arrays(
    dataset_dir: str | Path,
    table: pd.DataFrame,
    split: str,
    classes: Sequence[str],
    image_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of a split table into memory.

    Returns:
        ``x`` of shape ``(n, s, s, 1)`` uint8 and ``y`` of shape ``(n,)`` int32 class indices.
    """
    rows = table[table["split"] == split]
    index = {c: i for i, c in enumerate(classes)}
    x = np.zeros((len(rows), image_size, image_size, 1), dtype=np.uint8)
    y = np.zeros((len(rows),), dtype=np.int32)
    root = Path(dataset_dir)
    for i, (rel, label) in enumerate(zip(rows["path"], rows["label"], strict=True)):
        x[i] = preprocess_image(root / rel, image_size)
        y[i] = index[label]
    return x, y


def make_tf_dataset(
    x: np.ndarray, y: np.ndarray, n_classes: int, batch_size: int, shuffle: bool, seed: int
) -> Any:
    """A batched ``tf.data.Dataset`` of (float32 images, one-hot labels)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)

    def _map(img: Any, lab: Any) -> Any:
        return tf.cast(img, tf.float32), tf.one_hot(lab, n_classes)

    return ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced class weights ``n / (k * count_c)``; classes absent from ``y`` get 0."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    total = counts.sum()
    return {
        c: (float(total / (n_classes * counts[c])) if counts[c] else 0.0) for c in range(n_classes)
    }
