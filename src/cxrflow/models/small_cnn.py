"""The paper's small CNN (Model_0 / Model_1 / Model_2).

The paper shows the architecture only as a figure (Figure 3), which the text does not
describe; this is a conventional reading of it: four conv/max-pool blocks, a dense layer with
dropout and a softmax classifier. Imports TensorFlow lazily.
"""

from __future__ import annotations

from typing import Any, ClassVar

from cxrflow.models.base import CLASSIFIER_LAYER, Architecture

MODEL_NAME = "small_cnn"


def build_small_cnn(image_size: int, n_classes: int) -> Any:
    """Build the small CNN. Input ``(s, s, 1)`` in [0, 255]; output softmax over classes."""
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for i, filters in enumerate((32, 64, 128, 128)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name=CLASSIFIER_LAYER)(
        x
    )
    return keras.Model(inputs, outputs, name=MODEL_NAME)


class SmallCNN(Architecture):
    """The small CNN: trained from scratch (Model_0, Model_1) or transferred (Model_2).

    There are no ImageNet weights for it, so ``imagenet`` is refused.
    """

    name: ClassVar[str] = "small_cnn"
    model_name: ClassVar[str] = MODEL_NAME
    init_kinds: ClassVar[frozenset[str]] = frozenset({"scratch", "transfer"})
    in_model_preprocessing: ClassVar[str] = "x / 255"

    def build(
        self,
        image_size: int,
        n_classes: int,
        init: str = "scratch",
        weights_path: str | None = None,
    ) -> Any:
        """Build the small CNN with random weights (see :meth:`Architecture.build`)."""
        self._refuse_transfer_in_build(init)
        return build_small_cnn(image_size, n_classes)

    def unfreeze(self, model: Any, unfreeze_last: int | None) -> int:
        """Unfreeze the whole network, or its last ``unfreeze_last`` layers.

        The classifier always trains: it is the layer the ``head`` phase just fitted.
        """
        n = len(model.layers) if unfreeze_last is None else unfreeze_last
        cut = len(model.layers) - n
        for i, layer in enumerate(model.layers):
            layer.trainable = i >= cut or layer.name == CLASSIFIER_LAYER
        return min(n, len(model.layers))
