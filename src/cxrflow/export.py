"""Serving in reduced precision: a trained Keras model -> ONNX (fp32) -> static int8 (``cxrflow
export``), and the ONNX Runtime classifier ``cxrflow predict --onnx`` serves.

Why ONNX Runtime: plain TensorFlow fp32 is already close to the machine's fp32 GEMM rate, so
only fewer bits can go faster; on an x86 CPU with AVX512-VNNI, ONNX Runtime's QDQ int8 kernels
(uint8 activations, int8 per-channel weights) run ResNet-50 about 1.3-2x (batch 1) and 2.5-3x
(batch 32) faster than TensorFlow fp32, its own fp32 kernels being slower than TensorFlow's
(``bench/inference.py``).
The conversion is ``tf2onnx.convert.from_keras``: Keras 3's own ``model.export(format="onnx")``
goes through ``tf2onnx.convert.from_function``, which turns the constants ResNet-50's
``Normalization`` layer captures into extra graph inputs.

The exported graph takes exactly what the Keras model takes, ``(n, s, s, 1)`` float32 grey
values in [0, 255] from :func:`cxrflow.datasets.preprocess_image`; channel replication and
scaling stay inside the graph. Activation ranges are calibrated on images of the model's own
training split, preprocessed by that same function. Each ``.onnx`` file carries its classes and
image size (ONNX metadata, key :data:`METADATA_KEY`), so serving needs nothing else and never
imports TensorFlow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrflow.jsonio import write_json_atomic

if TYPE_CHECKING:
    import pandas as pd

    from cxrflow.config import Params

log = logging.getLogger(__name__)

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_INFO_FILE = "export.json"
INPUT_NAME = "image"
OPSET = 17
"""ONNX opset of the exported graphs (tf2onnx tests opsets 14-18; ONNX Runtime runs all)."""
METADATA_KEY = "cxrflow"
"""ONNX ``metadata_props`` key holding ``{"classes", "image_size", "model_key", "precision"}``."""
DEFAULT_CALIBRATION_IMAGES = 200
CALIBRATION_SPLIT = "train"
ARTIFACT_PATH = "onnx"
"""Where ``--log-to-run`` puts the exported files among the model run's artifacts."""
PREDICT_BATCH = 32
"""Images per ONNX Runtime call when predicting many files (bounds activation memory)."""
_CALIBRATION_BATCH = 4
"""Images per calibration run. MinMax calibration keeps only each tensor's min and max per
run, so memory does not grow with the number of images. (Not ONNX Runtime's
``CalibMaxIntermediateOutputs``: it discards the runs it flushes instead of folding them in.)"""
EXCLUDED_OP_TYPES: tuple[str, ...] = ("Softmax", "MatMul", "Gemm")
"""Not quantized: the softmax (uint8 would round the probabilities to 1/256) and the dense
layers. On the trained small CNN (bench/inference.py, 360 test images), quantizing its
25088-wide dense layer too took the accuracy lost from 0.8 to 1.1 points; they are about 1 %
of its multiply-adds and 0.01 % of ResNet-50's."""
STEM_FLOAT_OP_TYPES: tuple[str, ...] = ("Concat", "Sub", "Add", "Mul", "Div")
"""Element-wise ops before the first convolution (the in-model preprocessing: grey to three
channels, ImageNet means, 1/255) stay float: on a one-channel input they cost less than
quantizing and requantizing around each of them (about a tenth of ResNet-50's int8 time)."""
DEFAULT_CHECK_IMAGES = 300
MAX_DROP_POINTS = 1.0
"""The accuracy (percentage points) int8 may lose against fp32 on the check split."""
CHECK_SPLIT = "val"
QUANTIZATION: Mapping[str, str] = {
    "tool": "onnxruntime.quantization.quantize_static (after quant_pre_process)",
    "format": "QDQ",
    "activations": "uint8, asymmetric, per tensor",
    "weights": "int8, symmetric, per output channel",
    "calibration": "MinMax",
    "kept_float": ", ".join(EXCLUDED_OP_TYPES),
}


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


@dataclass(frozen=True)
class SourceModel:
    """A trained model to export and what it was trained on.

    Attributes:
        model: The Keras model.
        ref: Where it came from (MLflow model URI or model directory).
        classes: Class names in output order.
        image_size: Input side.
        model_key: The key in ``params.models``.
        dataset: The dataset it was trained on (its training split calibrates).
        run_id: Its MLflow run, where known.
    """

    model: Any
    ref: str
    classes: tuple[str, ...]
    image_size: int
    model_key: str
    dataset: str
    run_id: str | None


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


def _metadata(
    classes: Sequence[str], image_size: int, model_key: str, precision: str
) -> dict[str, str]:
    value = {
        "classes": list(classes),
        "image_size": int(image_size),
        "model_key": model_key,
        "precision": precision,
    }
    return {METADATA_KEY: json.dumps(value, sort_keys=True)}


def _set_metadata(proto: Any, props: Mapping[str, str]) -> None:
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def export_onnx(
    model: Any,
    path: str | Path,
    image_size: int,
    metadata: Mapping[str, str] | None = None,
    opset: int = OPSET,
) -> Path:
    """Convert a Keras model taking ``(n, s, s, 1)`` float32 to an fp32 ONNX file.

    Args:
        model: The Keras model.
        path: The ``.onnx`` file to write.
        image_size: ``s``; the batch dimension stays dynamic.
        metadata: ONNX ``metadata_props`` to set.
        opset: ONNX opset.

    Raises:
        ValueError: The model's input is not ``(s, s, 1)``.
    """
    import tensorflow as tf
    import tf2onnx

    want = (image_size, image_size, 1)
    got = tuple(model.input_shape[1:])
    if got != want:
        raise ValueError(f"model {model.name!r} takes inputs of shape {got}, expected {want}")
    spec = (tf.TensorSpec((None, *want), tf.float32, name=INPUT_NAME),)
    # tf2onnx logs every conversion pass at INFO through its own handler
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    _drop_identity_scaling(proto)
    _set_metadata(proto, metadata or {})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(proto.SerializeToString())
    return out


def _drop_identity_scaling(proto: Any) -> int:
    """Remove ``Mul`` by a constant of ones and ``Div`` by one where that cannot change the
    shape (ResNet-50's unit-variance ``Normalization`` becomes such a ``Mul``, which neither
    tf2onnx nor ONNX Runtime removes); returns how many went."""
    import onnx
    from onnx import numpy_helper

    graph = proto.graph
    ones = {
        t.name: list(t.dims)
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and np.all(numpy_helper.to_array(t) == 1.0)
    }
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    shapes = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for v in (*inferred.value_info, *inferred.input)
    }
    outputs = {o.name for o in graph.output}

    def keeps_shape(x: list[int | None] | None, one: list[int]) -> bool:
        # x * ones has x's shape iff every dim of ones is 1 or equals x's (known) dim
        return (
            x is not None
            and len(one) <= len(x)
            and all(b == 1 or a == b for a, b in zip(reversed(x), reversed(one), strict=False))
        )

    dropped = 0
    for node in list(graph.node):
        if node.op_type == "Mul" and len(node.input) == 2:
            const = [i for i in node.input if i in ones]
            kept = [i for i in node.input if i not in ones]
        elif node.op_type == "Div" and len(node.input) == 2 and node.input[1] in ones:
            const, kept = [node.input[1]], [node.input[0]]
        else:
            continue
        if len(kept) != 1 or len(const) != 1 or node.output[0] in outputs:
            continue
        if not keeps_shape(shapes.get(kept[0]), ones[const[0]]):
            continue
        for other in graph.node:
            for k, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[k] = kept[0]
        graph.node.remove(node)
        dropped += 1
    used = {name for n in graph.node for name in n.input}
    for t in [t for t in graph.initializer if t.name in ones and t.name not in used]:
        graph.initializer.remove(t)
    return dropped


class _CalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over an in-memory array, in batches."""

    def __init__(self, x: np.ndarray, batch: int) -> None:
        self._x = x
        self._batch = batch
        self._at = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._at >= len(self._x):
            return None
        chunk = self._x[self._at : self._at + self._batch].astype(np.float32)
        self._at += self._batch
        return {INPUT_NAME: chunk}


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration: np.ndarray,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Static int8 quantization of an fp32 ONNX file (see :data:`QUANTIZATION`).

    Args:
        fp32_path: The model from :func:`export_onnx`.
        int8_path: The file to write.
        calibration: ``(n, s, s, 1)`` images in [0, 255] (uint8 or float).
        metadata: ONNX ``metadata_props`` to set on the result.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if len(calibration) == 0:
        raise ValueError("no calibration images")
    out = Path(int8_path)
    out.parent.mkdir(parents=True, exist_ok=True)

    class Reader(_CalibrationReader, CalibrationDataReader):  # type: ignore[misc]
        pass

    with tempfile.TemporaryDirectory(prefix="cxrflow-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # shape inference + graph optimisation first (folds the stem's Pad into its Conv, ...),
        # as ONNX Runtime recommends before static quantization
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        nodes = list(onnx.load(str(prepared), load_external_data=False).graph.node)
        first_conv = next((i for i, n in enumerate(nodes) if n.op_type == "Conv"), 0)
        excluded = [n.name for n in nodes if n.op_type in EXCLUDED_OP_TYPES] + [
            n.name for n in nodes[:first_conv] if n.op_type in STEM_FLOAT_OP_TYPES
        ]
        quantize_static(
            str(prepared),
            str(out),
            Reader(np.asarray(calibration), _CALIBRATION_BATCH),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # VNNI CPUs accumulate u8*s8 without saturation: no 7-bit weights needed
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
        )
    proto = onnx.load(str(out))
    _set_metadata(proto, metadata or {})
    onnx.save(proto, str(out))
    return out


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


# --------------------------------------------------------------------------- the CLI's step


def _run_id_of(ref: str) -> str | None:
    """The MLflow run behind a ``runs:/<id>/...`` or ``models:/<name>@<alias>`` URI."""
    if ref.startswith("runs:/"):
        return ref[len("runs:/") :].split("/", 1)[0] or None
    if ref.startswith("models:/") and "@" in ref:
        from cxrflow import tracking

        name, _, alias = ref[len("models:/") :].partition("@")
        found = tracking.alias_version(name, alias)
        return str(found["run_id"]) if found and found.get("run_id") else None
    return None


def load_source_model(params: Params, ref: str) -> SourceModel:
    """The model to export: a model directory (``train``'s output) or an MLflow model URI.

    Raises:
        FileNotFoundError: A directory without ``model.keras`` / ``model_info.json``.
        ValueError: Metadata missing, or a model key not in ``params.models``.
    """
    from cxrflow.steps import MODEL_FILE, MODEL_INFO_FILE

    path = Path(ref)
    if path.is_dir():
        import keras

        for name in (MODEL_FILE, MODEL_INFO_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name}: not found (a `cxrflow train` output?)")
        info = json.loads((path / MODEL_INFO_FILE).read_text())
        model = keras.models.load_model(path / MODEL_FILE)
        meta: dict[str, Any] = dict(info)
        run_id = info.get("run_id")
    elif ":/" not in ref:  # not a URI (models:/, runs:/, s3://...): a directory that is not there
        raise FileNotFoundError(
            f"{ref}: no such model directory (give a `cxrflow train` output or an MLflow "
            "model URI such as models:/<name>@<alias>)"
        )
    else:
        from cxrflow import tracking

        model, meta = tracking.load_model(ref)
        run_id = None
    missing = [k for k in ("classes", "image_size", "model_key") if not meta.get(k)]
    if missing:
        raise ValueError(f"{ref}: model has no cxrflow metadata ({', '.join(missing)})")
    key = str(meta["model_key"])
    dataset = meta.get("dataset") or (params.models[key].dataset if key in params.models else "")
    if not dataset:
        raise ValueError(
            f"{ref}: model key {key!r} is not in params models {list(params.models)}: "
            "cannot tell which training split to calibrate on"
        )
    return SourceModel(
        model=model,
        ref=ref,
        classes=tuple(meta["classes"]),
        image_size=int(meta["image_size"]),
        model_key=key,
        dataset=str(dataset),
        run_id=str(run_id) if run_id else None,
    )


def run_export(
    params: Params,
    model_ref: str,
    dataset_dir: str | Path,
    splits_dir: str | Path,
    out_dir: str | Path,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    log_to_run: bool = False,
    check_images: int = DEFAULT_CHECK_IMAGES,
    max_drop_points: float = MAX_DROP_POINTS,
) -> dict[str, Any]:
    """Step ``export``: ONNX fp32 + static int8 of a trained model, calibrated on its training
    split (seed ``train.seed``) and compared with fp32 on its validation split; optionally
    logged to the model's MLflow run under ``onnx/``.

    Args:
        params: The resolved configuration (``models``, ``train.seed``, ``tracking``).
        model_ref: A ``cxrflow train`` output directory or an MLflow model URI.
        dataset_dir: An ingest output directory.
        splits_dir: A split output directory.
        out_dir: Where the files go.
        calibration_images: Training images to calibrate on.
        log_to_run: Log the files to the model's run.
        check_images: Validation images (balanced, seed ``train.seed``) to compare fp32 and
            int8 on; 0 = no comparison.
        max_drop_points: Fail when int8 loses more accuracy than this on them.

    Returns:
        ``export.json``'s content, plus ``logged_to_run`` (the run id, or None).

    Raises:
        ValueError: ``log_to_run`` but the model's run cannot be told from ``model_ref``, or
            int8 lost more than ``max_drop_points`` of accuracy (the files are written and
            not logged; the fp32 ``model.onnx`` can still be served).
    """
    src = load_source_model(params, model_ref)
    run_id = src.run_id or (_run_id_of(model_ref) if log_to_run else None)
    if log_to_run and not run_id:
        raise ValueError(
            f"{model_ref}: cannot tell the model's MLflow run; --log-to-run needs a model "
            "directory, a runs:/<id>/... URI or a models:/<name>@<alias> URI"
        )
    calib = load_calibration(
        dataset_dir,
        splits_dir,
        src.dataset,
        src.classes,
        src.image_size,
        calibration_images,
        params.train.seed,
    )
    check = None
    if check_images > 0:
        check = load_check_split(
            dataset_dir,
            splits_dir,
            src.dataset,
            src.classes,
            src.image_size,
            check_images,
            params.train.seed,
        )
    info = export_model(
        src.model,
        out_dir,
        src.classes,
        src.image_size,
        src.model_key,
        calib,
        source=model_ref,
        dataset=src.dataset,
        check=check,
    )
    drop = info["check"]["drop_points"]["accuracy"] if "check" in info else None
    if drop is not None and drop > max_drop_points:
        raise ValueError(
            f"{Path(out_dir) / INT8_FILE}: int8 loses {drop:.1f} points of accuracy against "
            f"fp32 on {info['check']['n']} {CHECK_SPLIT} images (limit {max_drop_points}); "
            f"serve {FP32_FILE} instead, or calibrate on more images"
        )
    logged = None
    if log_to_run and run_id:
        from cxrflow import tracking

        tracking.configure(params.tracking.experiment_name)
        for name in (FP32_FILE, INT8_FILE, EXPORT_INFO_FILE):
            tracking.log_artifact(run_id, Path(out_dir) / name, ARTIFACT_PATH)
        logged = run_id
    return {**info, "logged_to_run": logged}
