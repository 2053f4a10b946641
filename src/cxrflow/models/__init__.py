"""Model architectures and the registry ``architecture -> builder``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cxrflow.models.resnet50 import build_resnet50
from cxrflow.models.small_cnn import build_small_cnn

BUILDERS: dict[str, Callable[..., Any]] = {
    "small_cnn": build_small_cnn,
    "resnet50": build_resnet50,
}
CLASSIFIER_LAYER = "classifier"


def build_model(
    architecture: str, image_size: int, n_classes: int, weights_path: str | None = None
) -> Any:
    """Build an uncompiled Keras model for ``architecture``.

    Args:
        architecture: ``small_cnn`` or ``resnet50``.
        image_size: Input side; inputs are ``(image_size, image_size, 1)`` in [0, 255].
        n_classes: Softmax outputs.
        weights_path: ResNet-50 only: ImageNet (no-top) weights file, or ``None``.
    """
    if architecture not in BUILDERS:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(BUILDERS)}")
    if architecture == "resnet50":
        return build_resnet50(image_size, n_classes, weights_path)
    return BUILDERS[architecture](image_size, n_classes)
