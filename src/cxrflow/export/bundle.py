"""Writing one export directory: the fp32 and int8 files with ``export.json`` (sizes, digests,
input contract, quantization settings, calibration set, library versions), and the
int8-vs-fp32 comparison recorded in it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrflow.export.calibration import Calibration
from cxrflow.export.contract import EXPORT_INFO_FILE, FP32_FILE, INPUT_NAME, INT8_FILE, OPSET
from cxrflow.export.convert import _metadata, export_onnx
from cxrflow.export.quantize import QUANTIZATION, quantize_int8
from cxrflow.export.runtime import load_onnx_model
from cxrflow.jsonio import write_json_atomic


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def export_model(
    model: Any,
    out_dir: str | Path,
    classes: Sequence[str],
    image_size: int,
    model_key: str,
    calibration: Calibration,
    source: str = "",
    dataset: str = "",
    check: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write ``model.onnx`` (fp32), ``model.int8.onnx`` and ``export.json`` to ``out_dir``.

    Args:
        model: The trained Keras model.
        out_dir: Output directory (created).
        classes: Class names in output order.
        image_size: Input side.
        model_key: The model's key (recorded in the files' metadata).
        calibration: Training-split images (:func:`load_calibration`).
        source: Where the model came from (URI or directory), for the record.
        dataset: The dataset the calibration images come from, for the record.
        check: Held-out images and labels (``x`` uint8, ``y`` class indices) on which int8 is
            compared with fp32 (:func:`compare_int8`); ``None`` = no comparison.

    Returns:
        The content of ``export.json``: files with sizes and sha256, opset, input contract,
        classes, quantization settings, the calibration set (names and digest), versions and,
        with ``check``, ``check`` (:func:`compare_int8`).
    """
    from cxrflow.models.base import PIPELINE_PREPROCESSING

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(
        model,
        out / FP32_FILE,
        image_size,
        _metadata(classes, image_size, model_key, "fp32"),
    )
    int8 = quantize_int8(
        fp32, out / INT8_FILE, calibration.x, _metadata(classes, image_size, model_key, "int8")
    )
    info: dict[str, Any] = {
        "model_key": model_key,
        "source": source,
        "classes": list(classes),
        "image_size": int(image_size),
        "opset": OPSET,
        "input": {
            "name": INPUT_NAME,
            "shape": [None, image_size, image_size, 1],
            "dtype": "float32",
            "values": "grey levels in [0, 255]",
            "preprocessing": PIPELINE_PREPROCESSING,
        },
        "files": {
            precision: {"file": p.name, "bytes": p.stat().st_size, "sha256": _sha256(p)}
            for precision, p in (("fp32", fp32), ("int8", int8))
        },
        "quantization": dict(QUANTIZATION),
        "calibration": {"dataset": dataset, **calibration.describe()},
        "versions": _versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if check is not None:
        info["check"] = compare_int8(model, load_onnx_model(int8), check[0], check[1])
    write_json_atomic(out / EXPORT_INFO_FILE, info)
    return info


def compare_int8(keras_model: Any, int8: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Accuracy and macro-F1 of the Keras (fp32) model and its int8 export on ``x``.

    Returns:
        ``n``, ``fp32`` and ``int8`` (each ``{"accuracy", "f1_macro"}``), ``drop_points``
        (fp32 minus int8, percentage points, for both) and ``agreement`` (share of images
        whose predicted class is the same).
    """
    from sklearn.metrics import f1_score

    if len(x) == 0:
        raise ValueError("no images to compare fp32 and int8 on")
    labels = list(range(len(int8.classes)))
    p32 = np.asarray(keras_model.predict(x.astype(np.float32), verbose=0)).argmax(1)
    p8 = int8.predict(x).argmax(1)

    def scores(pred: np.ndarray) -> dict[str, float]:
        return {
            "accuracy": float((pred == y).mean()),
            "f1_macro": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        }

    fp32, q = scores(p32), scores(p8)
    return {
        "n": len(y),
        "fp32": fp32,
        "int8": q,
        "drop_points": {k: 100.0 * (fp32[k] - q[k]) for k in fp32},
        "agreement": float((p32 == p8).mean()),
    }
