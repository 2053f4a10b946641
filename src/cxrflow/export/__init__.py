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

Modules, one job each: :mod:`~cxrflow.export.contract` (file names, input, metadata key),
:mod:`~cxrflow.export.calibration` (the images calibrated and checked on),
:mod:`~cxrflow.export.convert` (Keras -> fp32 ONNX), :mod:`~cxrflow.export.quantize`
(fp32 -> int8), :mod:`~cxrflow.export.bundle` (one export directory and its record),
:mod:`~cxrflow.export.runtime` (serving) and :mod:`~cxrflow.export.command` (the CLI's step).
Import from here.
"""

from __future__ import annotations

from cxrflow.export.bundle import compare_int8, export_model
from cxrflow.export.calibration import (
    CALIBRATION_SPLIT,
    CHECK_SPLIT,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_CHECK_IMAGES,
    Calibration,
    calibration_digest,
    load_calibration,
    load_check_split,
    sample_calibration_rows,
)
from cxrflow.export.command import MAX_DROP_POINTS, SourceModel, load_source_model, run_export
from cxrflow.export.contract import (
    ARTIFACT_PATH,
    EXPORT_INFO_FILE,
    FP32_FILE,
    INPUT_NAME,
    INT8_FILE,
    METADATA_KEY,
    OPSET,
)
from cxrflow.export.convert import export_onnx
from cxrflow.export.quantize import (
    EXCLUDED_OP_TYPES,
    QUANTIZATION,
    STEM_FLOAT_OP_TYPES,
    quantize_int8,
)
from cxrflow.export.runtime import PREDICT_BATCH, OnnxClassifier, load_onnx_model

__all__ = [
    "ARTIFACT_PATH",
    "CALIBRATION_SPLIT",
    "CHECK_SPLIT",
    "DEFAULT_CALIBRATION_IMAGES",
    "DEFAULT_CHECK_IMAGES",
    "EXCLUDED_OP_TYPES",
    "EXPORT_INFO_FILE",
    "FP32_FILE",
    "INPUT_NAME",
    "INT8_FILE",
    "MAX_DROP_POINTS",
    "METADATA_KEY",
    "OPSET",
    "PREDICT_BATCH",
    "QUANTIZATION",
    "STEM_FLOAT_OP_TYPES",
    "Calibration",
    "OnnxClassifier",
    "SourceModel",
    "calibration_digest",
    "compare_int8",
    "export_model",
    "export_onnx",
    "load_calibration",
    "load_check_split",
    "load_onnx_model",
    "load_source_model",
    "quantize_int8",
    "run_export",
    "sample_calibration_rows",
]
