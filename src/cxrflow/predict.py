"""Classifying images with a registered model (``cxrflow predict``).

Applies exactly the training preprocessing (:func:`cxrflow.datasets.preprocess_image`); the
rest (channel replication, scaling) lives inside the model. An unreadable file gets its own
error and the other files are still predicted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrflow.datasets import preprocess_image


@dataclass(frozen=True)
class Prediction:
    """The result for one file: probabilities and class, or an error."""

    path: str
    predicted: str | None
    probabilities: dict[str, float] | None
    error: str | None = None


def predict_arrays(model: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities for a batch of preprocessed images."""
    return np.asarray(model.predict(x.astype(np.float32), verbose=0))


def predict_paths(
    model: Any, paths: Sequence[str | Path], classes: Sequence[str], image_size: int
) -> list[Prediction]:
    """Predict each file; decoding errors become per-file errors."""
    results: dict[int, Prediction] = {}
    good: list[int] = []
    arrays: list[np.ndarray] = []
    for i, p in enumerate(paths):
        try:
            if not Path(p).is_file():
                raise FileNotFoundError(f"{p}: no such file")
            arrays.append(preprocess_image(p, image_size))
            good.append(i)
        except Exception as exc:
            results[i] = Prediction(str(p), None, None, str(exc))
    if arrays:
        probs = predict_arrays(model, np.stack(arrays))
        for i, row in zip(good, probs, strict=True):
            results[i] = Prediction(
                str(paths[i]),
                classes[int(row.argmax())],
                {c: float(v) for c, v in zip(classes, row, strict=True)},
            )
    return [results[i] for i in range(len(paths))]


def format_table(preds: Sequence[Prediction], classes: Sequence[str]) -> str:
    """Fixed-width table: path, predicted class and one column per class probability."""
    header = ["path", "predicted", *classes]
    rows = []
    for p in preds:
        if p.error:
            rows.append([p.path, "ERROR", p.error])
        else:
            assert p.probabilities is not None
            rows.append(
                [p.path, p.predicted or "", *(f"{p.probabilities[c]:.4f}" for c in classes)]
            )
    width = max([len(header[0])] + [len(r[0]) for r in rows])
    lines = [f"{header[0]:<{width}}  {header[1]:<10}  " + "  ".join(f"{c:>9}" for c in classes)]
    for r in rows:
        if r[1] == "ERROR":
            lines.append(f"{r[0]:<{width}}  {'ERROR':<10}  {r[2]}")
        else:
            lines.append(f"{r[0]:<{width}}  {r[1]:<10}  " + "  ".join(f"{v:>9}" for v in r[2:]))
    return "\n".join(lines)


def format_json(preds: Sequence[Prediction]) -> str:
    """JSON list of predictions."""
    return json.dumps([asdict(p) for p in preds], indent=2)
