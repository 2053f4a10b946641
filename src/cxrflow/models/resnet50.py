"""ResNet-50 (Model_3): ImageNet backbone, new 3-class classifier.

ImageNet weights are never downloaded: they come from a configured file (Keras' no-top
``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` or a ``.weights.h5`` saved from a
``ResNet50(include_top=False)``), tracked as a DVC artifact. Grayscale input is replicated to 3
channels and normalised like ``keras.applications.resnet50.preprocess_input`` (caffe mode) inside
the model.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from cxrflow.models.base import CLASSIFIER_LAYER, Architecture

log = logging.getLogger(__name__)

BACKBONE = "resnet50"
"""Name of the nested ``keras.applications.ResNet50`` model inside the built model."""
MODEL_NAME = "resnet50_cxr"
TO_RGB, NORMALISE = "to_rgb", "imagenet_norm"
"""Names of the layers before the backbone (Grad-CAM rebuilds the path through them)."""
GRADCAM_LAYER = "conv5_block3_out"
"""The backbone's last convolutional block output (input side / 32 on each axis)."""
WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{WEIGHTS_FILE}"
# caffe-mode ImageNet means (BGR). Grey input makes channel order irrelevant but keep it exact.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


def build_resnet50(image_size: int, n_classes: int, weights_path: str | None = None) -> Any:
    """Build ResNet-50 with a new classifier.

    Args:
        image_size: Input side (>= 32).
        n_classes: Softmax outputs.
        weights_path: No-top ImageNet weights file; ``None`` = random init (the caller must say
            so loudly).
    """
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Concatenate(name=TO_RGB)([inputs, inputs, inputs])
    x = layers.Normalization(
        mean=list(IMAGENET_BGR_MEAN), variance=[1.0, 1.0, 1.0], name=NORMALISE
    )(x)
    base = keras.applications.ResNet50(
        include_top=False,
        weights=None,
        input_shape=(image_size, image_size, 3),
        pooling="avg",
        name=BACKBONE,
    )
    if weights_path:
        base.load_weights(weights_path)
    # training=False keeps BatchNorm in inference mode during fine-tuning (keras-io guide).
    x = base(x, training=False)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name=CLASSIFIER_LAYER)(
        x
    )
    return keras.Model(inputs, outputs, name=MODEL_NAME)


class ResNet50(Architecture):
    """ResNet-50 backbone with a new classifier: ImageNet init (the paper's Model_3)."""

    name: ClassVar[str] = "resnet50"
    model_name: ClassVar[str] = MODEL_NAME
    init_kinds: ClassVar[frozenset[str]] = frozenset({"scratch", "imagenet", "transfer"})
    in_model_preprocessing: ClassVar[str] = (
        "grey -> 3 channels, minus ImageNet BGR means (keras resnet50 preprocess_input, caffe)"
    )
    imagenet_weights_file: ClassVar[str | None] = WEIGHTS_FILE
    imagenet_weights_url: ClassVar[str | None] = WEIGHTS_URL

    def build(
        self,
        image_size: int,
        n_classes: int,
        init: str = "scratch",
        weights_path: str | None = None,
    ) -> Any:
        """Build ResNet-50; ``imagenet`` loads the backbone from ``weights_path``.

        ``imagenet`` without a weights file still builds (random weights) so that a demo runs
        where the file is not available, but logs a loud warning: it is not Model_3. Training
        refuses that unless the spec allows it (:meth:`Architecture.check_weights`).
        ``scratch`` ignores ``weights_path``.
        """
        kind = self._refuse_transfer_in_build(init)
        if kind == "scratch":
            return build_resnet50(image_size, n_classes)
        if not weights_path:
            log.warning(
                "!!! %s: NO PRETRAINED WEIGHTS configured (models.*.weights_path is null): "
                "ResNet-50 starts from RANDOM weights; this is not the paper's Model_3 !!!",
                self.name,
            )
        return build_resnet50(image_size, n_classes, weights_path)

    def unfreeze(self, model: Any, unfreeze_last: int | None) -> int:
        """Unfreeze the last ``unfreeze_last`` backbone layers (``None`` = all) and the head.

        BatchNorm layers stay frozen, as in the keras-io transfer-learning guide: their
        statistics are ImageNet's, and a small batch would wreck them.
        """
        from keras import layers

        base = model.get_layer(BACKBONE)
        base.trainable = True
        n = len(base.layers) if unfreeze_last is None else unfreeze_last
        cut = len(base.layers) - n
        for i, layer in enumerate(base.layers):
            layer.trainable = i >= cut and not isinstance(layer, layers.BatchNormalization)
        for layer in model.layers:
            if layer.name != BACKBONE:
                layer.trainable = True
        return min(n, len(base.layers))

    def gradcam_layer(self, model: Any) -> str:
        """The backbone's last block output (a layer of the nested ``resnet50`` model)."""
        return GRADCAM_LAYER

    def gradcam_model(self, model: Any, layer_name: str | None = None) -> Any:
        """``input -> (backbone feature maps, pooled features)`` through ``model``'s layers.

        The backbone is a nested model, so its inner layers' outputs are not tensors of the
        outer graph: the path is rebuilt from the outer layers (shared weights) around a
        two-output view of the backbone. ``layer_name`` names a backbone layer.
        """
        import keras

        base = model.get_layer(BACKBONE)
        inner = keras.Model(
            base.inputs, [base.get_layer(layer_name or GRADCAM_LAYER).output, base.output]
        )
        inputs = keras.Input(model.input.shape[1:], name="image")
        x = model.get_layer(TO_RGB)([inputs, inputs, inputs])
        x = model.get_layer(NORMALISE)(x)
        feats, pooled = inner(x, training=False)
        return keras.Model(inputs, [feats, pooled], name=f"{model.name}_gradcam")
