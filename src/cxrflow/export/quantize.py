"""fp32 ONNX -> static int8 (QDQ) with ONNX Runtime's quantizer: which ops stay float, and the
MinMax calibration fed from an in-memory array in small batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cxrflow.export.contract import INPUT_NAME
from cxrflow.export.convert import _set_metadata

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


QUANTIZATION: Mapping[str, str] = {
    "tool": "onnxruntime.quantization.quantize_static (after quant_pre_process)",
    "format": "QDQ",
    "activations": "uint8, asymmetric, per tensor",
    "weights": "int8, symmetric, per output channel",
    "calibration": "MinMax",
    "kept_float": ", ".join(EXCLUDED_OP_TYPES),
}


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
