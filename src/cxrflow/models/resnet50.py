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
    x = layers.Concatenate(name="to_rgb")([inputs, inputs, inputs])
    x = layers.Normalization(
        mean=list(IMAGENET_BGR_MEAN), variance=[1.0, 1.0, 1.0], name="imagenet_norm"
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
    outputs = layers.Dense(n_classes, activation="softmax", name=CLASSIFIER_LAYER)(x)
    return keras.Model(inputs, outputs, name=MODEL_NAME)


class ResNet50(Architecture):
    """ResNet-50 backbone with a new classifier: ImageNet init (the paper's Model_3)."""

    name: ClassVar[str] = "resnet50"
    model_name: ClassVar[str] = MODEL_NAME
    init_kinds: ClassVar[frozenset[str]] = frozenset({"scratch", "imagenet", "transfer"})
    in_model_preprocessing: ClassVar[str] = (
        "grey -> 3 channels, minus ImageNet BGR means (keras resnet50 preprocess_input, caffe)"
    )

    def build(
        self,
        image_size: int,
        n_classes: int,
        init: str = "scratch",
        weights_path: str | None = None,
    ) -> Any:
        """Build ResNet-50; ``imagenet`` loads the backbone from ``weights_path``.

        ``imagenet`` without a weights file still builds (random weights) so that the pipeline
        runs where the file is not available, but logs a loud warning: it is not Model_3.
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
