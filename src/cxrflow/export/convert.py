"""Keras -> fp32 ONNX: the ``tf2onnx`` conversion, the clean-up of identity scaling it leaves in
ResNet-50's graph, and the cxrflow metadata written into each file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrflow.export.contract import INPUT_NAME, METADATA_KEY, OPSET


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
