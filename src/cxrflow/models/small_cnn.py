"""The paper's small CNN (Model_0 / Model_1 / Model_2).

The paper shows the architecture only as a figure (Figure 3), which the text does not
describe; this is a conventional reading of it: four conv/max-pool blocks, a dense layer with
dropout and a softmax classifier. Imports TensorFlow lazily.
"""

from __future__ import annotations

from typing import Any


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
    outputs = layers.Dense(n_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="small_cnn")
