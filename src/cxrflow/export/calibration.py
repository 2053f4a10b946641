"""The images an export is calibrated and checked on: a label-balanced, seeded sample of the
model's own training split (calibration) or validation split (the int8-vs-fp32 check),
preprocessed exactly as for training, with a digest of exactly what was used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


DEFAULT_CALIBRATION_IMAGES = 200
CALIBRATION_SPLIT = "train"


DEFAULT_CHECK_IMAGES = 300


CHECK_SPLIT = "val"


@dataclass(frozen=True)
class Calibration:
    """The images activation ranges are calibrated on.

    Attributes:
        x: ``(n, s, s, 1)`` uint8, as :func:`cxrflow.datasets.preprocess_image` returns them.
        names: One name per image (its path relative to the dataset), same order.
        split: The split they come from.
        seed: The seed that chose them.
    """

    x: np.ndarray
    names: tuple[str, ...]
    split: str = CALIBRATION_SPLIT
    seed: int = 0

    @property
    def digest(self) -> str:
        """sha256 of the names and pixels, in order: what was calibrated on, exactly."""
        return calibration_digest(self.x, self.names)

    def describe(self) -> dict[str, Any]:
        """The JSON record of this calibration set (names included)."""
        return {
            "split": self.split,
            "n_images": len(self.names),
            "seed": self.seed,
            "digest": self.digest,
            "images": list(self.names),
        }


def calibration_digest(x: np.ndarray, names: Sequence[str]) -> str:
    """sha256 over each image's name and uint8 pixels, in order."""
    if len(x) != len(names):
        raise ValueError(f"{len(x)} calibration images but {len(names)} names")
    h = hashlib.sha256()
    for name, img in zip(names, x, strict=True):
        h.update(name.encode() + b"\0")
        h.update(np.ascontiguousarray(img, dtype=np.uint8).tobytes())
    return h.hexdigest()


def sample_calibration_rows(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Choose ``n`` rows of a split's table, as evenly over labels as the labels allow.

    Each label's rows are shuffled by ``seed`` (from path order, so the choice does not depend
    on the table's row order) and taken in turn, one label after another, until ``n`` rows (or
    all of them) are chosen; the result is sorted by path.

    Raises:
        ValueError: ``n`` < 1 or the table is empty.
    """
    if n < 1:
        raise ValueError(f"calibration needs at least 1 image, got {n}")
    if table.empty:
        raise ValueError("no images to calibrate on (the split is empty)")
    rng = np.random.default_rng(seed)
    queues: list[list[int]] = []
    for _, rows in sorted(table.groupby("label"), key=lambda kv: str(kv[0])):
        ordered = rows.sort_values("path").index.to_list()
        queues.append([ordered[i] for i in rng.permutation(len(ordered))])
    chosen: list[int] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return table.loc[chosen].sort_values("path")


def _sample_split(
    dataset_dir: str | Path,
    splits_dir: str | Path,
    dataset: str,
    split: str,
    classes: Sequence[str],
    image_size: int,
    n: int,
    seed: int,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray] | None:
    """Up to ``n`` images of ``split`` (:func:`sample_calibration_rows`), preprocessed exactly
    as for training: (rows, images, labels), or None when the split is empty."""
    from cxrflow.data.split import read_split_table
    from cxrflow.datasets import load_arrays

    table = read_split_table(splits_dir, dataset)
    part = table[table["split"] == split]
    if part.empty:
        return None
    rows = sample_calibration_rows(part, n, seed)
    x, y = load_arrays(dataset_dir, rows, split, classes, image_size)
    return rows, x, y


def load_calibration(
    dataset_dir: str | Path,
    splits_dir: str | Path,
    dataset: str,
    classes: Sequence[str],
    image_size: int,
    n: int,
    seed: int,
) -> Calibration:
    """``n`` training-split images of ``dataset``, preprocessed exactly as for training.

    Args:
        dataset_dir: An ingest output directory.
        splits_dir: A split output directory.
        dataset: The dataset the model was trained on (``dataset_0``...).
        classes: The model's classes (the split's labels must be among them).
        image_size: The model's input side.
        n: How many images (:func:`sample_calibration_rows`).
        seed: Chooses them.
    """
    got = _sample_split(
        dataset_dir, splits_dir, dataset, CALIBRATION_SPLIT, classes, image_size, n, seed
    )
    if got is None:
        raise ValueError(
            f"{splits_dir}: {dataset} has no {CALIBRATION_SPLIT} images to calibrate on"
        )
    rows, x, _ = got
    return Calibration(x, tuple(rows["path"]), CALIBRATION_SPLIT, seed)


def load_check_split(
    dataset_dir: str | Path,
    splits_dir: str | Path,
    dataset: str,
    classes: Sequence[str],
    image_size: int,
    n: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Up to ``n`` validation images and labels (balanced, as :func:`load_calibration`
    chooses), or ``None`` when the split has no validation images."""
    got = _sample_split(dataset_dir, splits_dir, dataset, CHECK_SPLIT, classes, image_size, n, seed)
    return None if got is None else (got[1], got[2])
