"""ResNet-50 (Model_3): ImageNet backbone, new 3-class classifier.

ImageNet weights are never downloaded: they come from a configured file (Keras' no-top
``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` or a ``.weights.h5`` saved from a
``ResNet50(include_top=False)``), tracked as a DVC artifact. Grayscale input is replicated to 3
channels and normalised like ``keras.applications.resnet50.preprocess_input`` (caffe mode) inside
the model.
"""

from __future__ import annotations

from typing import Any

BACKBONE = "resnet50"
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
    outputs = layers.Dense(n_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="resnet50_cxr")
