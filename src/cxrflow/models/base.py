"""What every architecture provides, and the model surgery they share.

An :class:`Architecture` owns the rules that used to be string switches in the training code:
how to build the network (and initialise it: random or ImageNet weights from a file), which
init kinds it accepts, how to unfreeze it for fine-tuning and how its inputs are preprocessed.
Nothing here imports TensorFlow or Keras at module level: the config loader imports the
registry to validate ``params.yaml``, and that must stay cheap.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Final

CLASSIFIER_LAYER: Final = "classifier"
"""Name of the final softmax layer of every architecture (replaced on transfer). It is always
built with ``dtype="float32"``, so that under a ``mixed_float16`` policy (``bench/gpu.py``) the
softmax and the loss stay in float32, as Keras' mixed-precision guide asks."""

INIT_KINDS: Final = ("scratch", "imagenet", "transfer")
"""How a model's weights can start. ``transfer`` = from another trained model of this project."""

PIPELINE_PREPROCESSING: Final = "cxrflow.datasets.preprocess_image (8-bit grey, bilinear resize)"
"""The preprocessing every architecture shares, applied outside the model (train and predict)."""


def init_kind(init: str) -> str:
    """The kind of a model spec's ``init``.

    Args:
        init: ``scratch``, ``imagenet`` or the key of another trained model (e.g. ``model_0``).

    Returns:
        ``scratch``, ``imagenet`` or ``transfer`` (any other value names a model to start from).
    """
    return init if init in ("scratch", "imagenet") else "transfer"


class Architecture(abc.ABC):
    """One network family and the rules that go with it.

    Subclasses set the class attributes and implement :meth:`build` and :meth:`unfreeze`;
    transfer from a trained model of the same architecture is shared (:meth:`transfer`), and so
    are the ImageNet-weights rule (:meth:`check_weights`) and Grad-CAM's view of a flat
    functional model (:meth:`gradcam_layer`, :meth:`gradcam_model`), which an architecture
    with a nested backbone overrides.

    Attributes:
        name: Registry name, as written in ``models.<key>.architecture``.
        model_name: Name of the Keras model :meth:`build` returns; a transfer checks that the
            trained base model carries it, so a base of another architecture is refused.
        init_kinds: The :data:`INIT_KINDS` this architecture accepts.
        in_model_preprocessing: What the model does to its ``(s, s, 1)`` uint8-valued input
            before the first learned layer.
        imagenet_weights_file: The Keras weights file an ``imagenet`` init loads (named in the
            error that asks for it); ``None`` where ``imagenet`` is not supported.
        imagenet_weights_url: Where Keras publishes that file.
    """

    name: ClassVar[str]
    model_name: ClassVar[str]
    init_kinds: ClassVar[frozenset[str]]
    in_model_preprocessing: ClassVar[str]
    imagenet_weights_file: ClassVar[str | None] = None
    imagenet_weights_url: ClassVar[str | None] = None

    @property
    def preprocessing(self) -> str:
        """The full preprocessing, logged as model metadata: outside, then inside the model."""
        return f"{PIPELINE_PREPROCESSING}; in the model: {self.in_model_preprocessing}"

    def supports_init(self, kind: str) -> bool:
        """Whether models of this architecture may start as ``kind``.

        Args:
            kind: ``scratch``, ``imagenet`` or ``transfer`` (see :func:`init_kind`).
        """
        return kind in self.init_kinds

    def check_init(self, init: str) -> str:
        """Return ``init_kind(init)``, raising ``ValueError`` when this architecture refuses it."""
        kind = init_kind(init)
        if not self.supports_init(kind):
            raise ValueError(
                f"architecture {self.name!r} does not support init={init!r} ({kind}); "
                f"supported: {sorted(self.init_kinds)}"
            )
        return kind

    def check_weights(
        self,
        init: str,
        weights_path: str | None,
        allow_random_init: bool,
        model_key: str | None = None,
    ) -> None:
        """Refuse an ``imagenet`` init without a weights file unless random init is allowed.

        Random weights are not the paper's pretrained model, so a run must ask for them
        explicitly (``allow_random_init``, set by the demo and smoke profiles); the caller
        checks this before any data is loaded, so a paper run fails in seconds, not after hours.

        Args:
            init: The spec's ``init``.
            weights_path: The spec's ``weights_path``.
            allow_random_init: The spec's ``allow_random_init``.
            model_key: The model's key in ``params.yaml`` (for the message); ``None`` = ``<key>``.

        Raises:
            ValueError: ``init`` is ``imagenet``, ``weights_path`` is empty and random init is
                not allowed; the message says how to provide and DVC-track the file.
        """
        if init_kind(init) != "imagenet" or weights_path or allow_random_init:
            return
        key = model_key or "<key>"
        file = self.imagenet_weights_file or "the ImageNet weights file"
        url = f" from {self.imagenet_weights_url}" if self.imagenet_weights_url else ""
        raise ValueError(
            f"models.{key}: init=imagenet ({self.name}) but models.{key}.weights_path is not set, "
            "and Keras' weights are never downloaded during training. Provide the file once: "
            f"download Keras' {file}{url}, track it with `dvc add <path>/{file}` (commit the .dvc "
            f"file), and set models.{key}.weights_path: <path>/{file} (for a cluster: an "
            f"s3://<bucket>/<key> or dvc://<path in data.registry> copy, with "
            f"models.{key}.weights_sha256). For a demo without pretrained weights set "
            f"models.{key}.allow_random_init: true instead (the result is NOT the paper's "
            "pretrained model)."
        )

    def gradcam_layer(self, model: Any) -> str:
        """Name of the layer whose feature maps Grad-CAM weighs (:func:`last_conv_layer`).

        An architecture whose convolutions sit in a nested backbone overrides this and
        :meth:`gradcam_model`.
        """
        return last_conv_layer(model)

    def gradcam_model(self, model: Any, layer_name: str | None = None) -> Any:
        """A model mapping ``model``'s input to ``(feature maps, classifier input)``.

        See :func:`flat_gradcam_model`; ``layer_name`` ``None`` = :meth:`gradcam_layer`.
        """
        return flat_gradcam_model(model, layer_name or self.gradcam_layer(model))

    @abc.abstractmethod
    def build(
        self,
        image_size: int,
        n_classes: int,
        init: str = "scratch",
        weights_path: str | None = None,
    ) -> Any:
        """Build an uncompiled Keras model, initialised as ``init`` says.

        Args:
            image_size: Input side; inputs are ``(image_size, image_size, 1)`` in [0, 255].
            n_classes: Softmax outputs.
            init: ``scratch`` (random) or ``imagenet``; a transfer uses :meth:`transfer`.
            weights_path: ImageNet weights file for ``init="imagenet"`` (never downloaded).

        Raises:
            ValueError: ``init`` is not supported or is a transfer.
        """

    @abc.abstractmethod
    def unfreeze(self, model: Any, unfreeze_last: int | None) -> int:
        """Make ``model`` trainable for fine-tuning.

        Args:
            model: A model of this architecture.
            unfreeze_last: How many trailing layers to unfreeze; ``None`` = all.

        Returns:
            How many layers were unfrozen.
        """

    def transfer(self, base_model: Any, n_classes: int) -> Any:
        """A new model from a trained one of this architecture: same features, new classifier.

        Raises:
            ValueError: ``base_model`` was not built by this architecture.
        """
        if base_model.name != self.model_name:
            raise ValueError(
                f"cannot transfer to {self.name!r} from a {base_model.name!r} model "
                f"(expected a {self.model_name!r} model)"
            )
        return replace_classifier(base_model, n_classes)

    def _refuse_transfer_in_build(self, init: str) -> str:
        kind = self.check_init(init)
        if kind == "transfer":
            raise ValueError(
                f"init={init!r} starts from a trained model: use {type(self).__name__}.transfer"
            )
        return kind


def replace_classifier(model: Any, n_classes: int) -> Any:
    """Copy of ``model`` whose final ``classifier`` layer is new (random, ``n_classes``).

    The other layers are shared with ``model`` (same weights), as in transfer learning.
    """
    import keras
    from keras import layers

    features = model.get_layer(CLASSIFIER_LAYER).input
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name=CLASSIFIER_LAYER)(
        features
    )
    # model.input (not .inputs): a single-input model stays single-input, as build() made it
    return keras.Model(model.input, outputs, name=model.name)


def freeze_all_but_classifier(model: Any) -> None:
    """Only the ``classifier`` layer trains (the ``head`` phase of a transfer)."""
    for layer in model.layers:
        layer.trainable = layer.name == CLASSIFIER_LAYER


def last_conv_layer(model: Any) -> str:
    """Name of the last 2-D convolution among ``model``'s top-level layers.

    Raises:
        ValueError: There is none (e.g. the convolutions sit in a nested model).
    """
    from keras import layers

    convs = [layer.name for layer in model.layers if isinstance(layer, layers.Conv2D)]
    if not convs:
        raise ValueError(f"{model.name!r} has no top-level Conv2D layer for Grad-CAM")
    return convs[-1]


def flat_gradcam_model(model: Any, layer_name: str | None = None) -> Any:
    """``input -> (feature maps of layer_name, input of the classifier)`` for a flat model.

    Grad-CAM needs the class *logit*, which is the ``classifier`` layer's kernel and bias
    applied to its input, returned here; the feature maps are those of ``layer_name``
    (``None`` = :func:`last_conv_layer`). Works for any functional model whose layers are not
    nested and whose last layer is the softmax ``classifier``.
    """
    import keras

    feats = model.get_layer(layer_name or last_conv_layer(model)).output
    return keras.Model(model.inputs, [feats, model.get_layer(CLASSIFIER_LAYER).input])


def reseed_random_layers(model: Any, seed: int) -> int:
    """Give every random layer of ``model`` (Dropout, ...) a seed-generator state derived from
    ``seed``, in layer order; returns how many it set.

    Keras does not save a seed generator's state with a model: loading one (a transfer's base
    model) draws a new state in each process, so the dropout masks, and with them the trained
    model, differed from run to run for the same data, params and seed (model_2's test accuracy
    was 0.635, 0.698 and 0.714 in three runs of one commit).
    """
    import numpy as np

    count = 0
    stack = list(reversed(model.layers))
    while stack:
        layer = stack.pop()
        stack.extend(reversed(getattr(layer, "layers", [])))  # nested models (a backbone)
        generator = getattr(layer, "seed_generator", None)
        if generator is None:
            continue
        state = generator.state
        value = np.zeros(tuple(state.shape), dtype=state.dtype)
        value.flat[0] = (seed + count) % (2**31)
        state.assign(value)
        count += 1
    return count
