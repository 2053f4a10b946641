"""What an export directory holds and what each ``.onnx`` file promises: the file names, the
graph's input name and opset, the metadata key under which each file carries its classes and
image size, and where ``--log-to-run`` puts the files among the run's artifacts.
"""

from __future__ import annotations

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_INFO_FILE = "export.json"
INPUT_NAME = "image"
OPSET = 17
"""ONNX opset of the exported graphs (tf2onnx tests opsets 14-18; ONNX Runtime runs all)."""
METADATA_KEY = "cxrflow"
"""ONNX ``metadata_props`` key holding ``{"classes", "image_size", "model_key", "precision"}``."""


ARTIFACT_PATH = "onnx"
"""Where ``--log-to-run`` puts the exported files among the model run's artifacts."""
