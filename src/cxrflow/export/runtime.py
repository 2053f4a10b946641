"""Serving an exported model with ONNX Runtime on the CPU: :class:`OnnxClassifier` (the Keras
``predict`` call shape, classes and image size read from the file) and
:func:`load_onnx_model`. Never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cxrflow.export.contract import INT8_FILE, METADATA_KEY

PREDICT_BATCH = 32
"""Images per ONNX Runtime call when predicting many files (bounds activation memory)."""


# ----------------------------------------------------------------------------------- serving


class OnnxClassifier:
    """An exported model served by ONNX Runtime, with the Keras ``predict`` call shape.

    Attributes:
        path: The ``.onnx`` file.
        classes: Class names in output order (from the file's metadata).
        image_size: Input side (from the file's metadata).
        model_key: The model's key (from the file's metadata).
        precision: ``fp32`` or ``int8`` (from the file's metadata).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        """Open ``path`` (see :func:`load_onnx_model`, which also accepts a directory)."""
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"{self.path}: no such ONNX model (write one with `cxrflow export`)"
            )
        opts = ort.SessionOptions()
        # explicit threads: ONNX Runtime's default (physical cores) is not what a container's
        # CPU quota allows
        opts.intra_op_num_threads = int(threads or _usable_cpus())
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"{self.path}: not a loadable ONNX model: {first}") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        try:
            meta = json.loads(raw) if raw else {}
            self.classes: tuple[str, ...] = tuple(meta["classes"])
            self.image_size = int(meta["image_size"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{self.path}: ONNX model has no cxrflow metadata (classes, image_size); "
                "export it with `cxrflow export`"
            ) from None
        self.model_key = str(meta.get("model_key", ""))
        self.precision = str(meta.get("precision", ""))
        self._input = self.session.get_inputs()[0].name

    def predict(
        self, x: np.ndarray, verbose: int = 0, batch_size: int = PREDICT_BATCH
    ) -> np.ndarray:
        """Class probabilities ``(n, k)`` for images ``(n, s, s, 1)`` in [0, 255].

        Raises:
            ValueError: The images are not ``(n, image_size, image_size, 1)`` (names the file).
        """
        x = np.asarray(x)
        want = (self.image_size, self.image_size, 1)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"{self.path}: expects images of shape (n, {want[0]}, {want[1]}, 1), "
                f"got {tuple(x.shape)}"
            )
        x = x.astype(np.float32, copy=False)
        parts = [
            self.session.run(None, {self._input: x[i : i + batch_size]})[0]
            for i in range(0, len(x), batch_size)
        ]
        if not parts:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        """One ONNX Runtime call on the whole batch (what :func:`measure_latency` times)."""
        return np.asarray(self.session.run(None, {self._input: np.asarray(x, np.float32)})[0])


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_onnx_model(path: str | Path, threads: int | None = None) -> OnnxClassifier:
    """An exported model: a ``.onnx`` file, or an export directory (its ``model.int8.onnx``).

    Raises:
        FileNotFoundError: Nothing there (the message names the path).
        ValueError: Not an ONNX model, or one without cxrflow metadata.
    """
    p = Path(path)
    if p.is_dir():
        p = p / INT8_FILE
    return OnnxClassifier(p, threads)
