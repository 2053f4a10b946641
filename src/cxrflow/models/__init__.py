"""Model architectures and their registry: ``name -> Architecture``.

Each :class:`~cxrflow.models.base.Architecture` owns its rules (build and initialise, unfreeze,
allowed init kinds, preprocessing), so that adding a model in ``params.yaml`` with an existing
architecture needs no code change, and adding an architecture means one module plus one entry
in :data:`ARCHITECTURES`. Importing this package does not import TensorFlow or Keras.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from cxrflow.models.base import (
    CLASSIFIER_LAYER,
    INIT_KINDS,
    Architecture,
    freeze_all_but_classifier,
    init_kind,
    replace_classifier,
    reseed_random_layers,
)
from cxrflow.models.resnet50 import ResNet50
from cxrflow.models.small_cnn import SmallCNN

ARCHITECTURES: Mapping[str, Architecture] = MappingProxyType(
    {arch.name: arch for arch in (SmallCNN(), ResNet50())}
)
"""Every architecture, by the name used in ``models.<key>.architecture``."""

__all__ = [
    "ARCHITECTURES",
    "CLASSIFIER_LAYER",
    "INIT_KINDS",
    "Architecture",
    "architecture_of",
    "build_model",
    "freeze_all_but_classifier",
    "get_architecture",
    "init_kind",
    "replace_classifier",
    "reseed_random_layers",
]


def get_architecture(name: str) -> Architecture:
    """The registered architecture called ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the known names.
    """
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None


def build_model(
    architecture: str,
    image_size: int,
    n_classes: int,
    weights_path: str | None = None,
    init: str | None = None,
) -> Any:
    """Build an uncompiled Keras model for ``architecture``.

    Args:
        architecture: A name in :data:`ARCHITECTURES`.
        image_size: Input side; inputs are ``(image_size, image_size, 1)`` in [0, 255].
        n_classes: Softmax outputs.
        weights_path: ImageNet weights file (architectures that support ``imagenet`` only).
        init: ``scratch`` or ``imagenet``; ``None`` = ``imagenet`` when ``weights_path`` is
            given, else ``scratch``.

    Raises:
        ValueError: Unknown architecture, or an init kind it does not support.
    """
    arch = get_architecture(architecture)
    if init is None:
        init = "imagenet" if weights_path else "scratch"
    return arch.build(image_size, n_classes, init, weights_path)


def architecture_of(model: Any) -> Architecture:
    """The registered architecture that built ``model`` (matched on the Keras model's name).

    Raises:
        ValueError: No architecture builds models of that name.
    """
    for arch in ARCHITECTURES.values():
        if arch.model_name == model.name:
            return arch
    known = sorted(a.model_name for a in ARCHITECTURES.values())
    raise ValueError(f"no architecture builds a {model.name!r} model; known: {known}")
