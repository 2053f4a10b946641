"""Grad-CAM: heat map shape and range per architecture, localisation, overlay and the grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxrflow.config import ModelSpec, TrainParams
from cxrflow.models import ARCHITECTURES, CLASSIFIER_LAYER, architecture_of, get_architecture

keras = pytest.importorskip("keras")

from cxrflow.gradcam import grad_cam, gradcam_grid, overlay, sample_per_class  # noqa: E402
from cxrflow.models import build_model  # noqa: E402
from cxrflow.train import train_model  # noqa: E402

SIZE = 32


@pytest.mark.parametrize(
    ("architecture", "size", "layer"),
    [("small_cnn", 32, "conv3"), ("small_cnn", 48, "conv3"), ("resnet50", 64, "conv5_block3_out")],
)
def test_heatmap_shape_range_and_layer(architecture: str, size: int, layer: str) -> None:
    keras.utils.set_random_seed(0)
    model = build_model(architecture, size, 3)
    assert architecture_of(model) is get_architecture(architecture)
    assert get_architecture(architecture).gradcam_layer(model) == layer
    image = np.random.default_rng(0).integers(0, 255, (size, size, 1)).astype(np.uint8)
    for c in range(3):
        cam = grad_cam(model, image, c)
        assert cam.shape == (size, size) and cam.dtype == np.float32
        assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert grad_cam(model, image[..., 0], 0).shape == (size, size)  # (s, s) input too


def test_resnet_gradcam_reaches_into_the_nested_backbone() -> None:
    """The feature maps come from the backbone (a nested model), at input side / 32."""
    model = build_model("resnet50", 64, 3)
    grad_model = get_architecture("resnet50").gradcam_model(model)
    x = np.zeros((1, 64, 64, 1), np.float32)
    feats, pooled = grad_model(x, training=False)
    assert tuple(feats.shape) == (1, 2, 2, 2048)
    clf = model.get_layer(CLASSIFIER_LAYER)
    features = keras.Model(model.input, clf.input)(x, training=False)
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(features), rtol=1e-5, atol=1e-5)
    # the grad model shares the model's weights: its path gives the model's own prediction
    probs = keras.ops.softmax(keras.ops.matmul(pooled, clf.kernel) + clf.bias)
    np.testing.assert_allclose(np.asarray(probs), np.asarray(model(x, training=False)), rtol=1e-5)


def test_unknown_model_and_bad_inputs() -> None:
    odd = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()], name="odd")
    with pytest.raises(ValueError, match="odd"):
        architecture_of(odd)
    model = build_model("small_cnn", SIZE, 3)
    with pytest.raises(ValueError, match="range"):
        grad_cam(model, np.zeros((SIZE, SIZE, 1)), 3)
    with pytest.raises(ValueError, match="one image"):
        grad_cam(model, np.zeros((2, SIZE, SIZE, 1)), 0)


def _square_data(
    n: int, seed: int, size: int = SIZE, square: int = 8, right_for_0: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 = a bright square somewhere in the left half; class 0 = noise only, or with
    ``right_for_0`` a square in the right half (so both classes have one and only where it is
    tells them apart)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, size, size, 1)).astype(np.uint8)
    y = (np.arange(n) % 2).astype(np.int32)
    for i in range(n):
        r, c = rng.integers(0, size - square), rng.integers(0, size // 2 - square)
        if y[i] == 0 and not right_for_0:
            continue
        c += 0 if y[i] == 1 else size // 2
        x[i, r : r + square, c : c + square] = 250
    return x, y


def _tiny_gap_cnn() -> Any:
    """Two small convolutions (8 px receptive field) and global pooling: a local decision."""
    inputs = keras.Input((SIZE, SIZE, 1))
    h = keras.layers.Rescaling(1 / 255)(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="last_conv")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(2, activation="softmax", name=CLASSIFIER_LAYER)(h)
    return keras.Model(inputs, outputs, name="tiny")


def _left_right(model: Any, x: np.ndarray, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean heat in the left and in the right half, per image, explaining ``cls``."""
    cams = np.stack([grad_cam(model, img, cls) for img in x])
    half = x.shape[2] // 2
    return cams[:, :, :half].mean(axis=(1, 2)), cams[:, :, half:].mean(axis=(1, 2))


def test_gradcam_mass_is_where_the_evidence_is() -> None:
    """A CNN that decides on a square in the left half gets its Grad-CAM mass there.

    A tiny CNN (any flat model: the generic rule) whose features are local, so that the
    check is about this module (sign, layer, alignment, resize), not about what a deep
    layer whose receptive field spans the image chooses to encode.
    """
    keras.utils.set_random_seed(0)
    model = _tiny_gap_cnn()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    x, y = _square_data(160, 0)
    model.fit(x.astype("float32"), y, epochs=8, batch_size=16, verbose=0)
    xt, yt = _square_data(20, 2)
    probs = np.asarray(model.predict(xt.astype("float32"), verbose=0))
    assert (probs.argmax(axis=1) == yt).mean() >= 0.9  # precondition: it learned the rule
    left, right = _left_right(model, xt[yt == 1], 1)
    assert np.mean(left) > 2 * np.mean(right)
    assert np.mean(left > right) >= 0.9


@pytest.mark.slow
def test_small_cnn_gradcam_finds_the_deciding_half() -> None:
    """The paper's small CNN at 96 px: each class's map leans to the half its square is in.

    At 32 px its last convolution sees the whole image (38 px receptive field), so where its
    Grad-CAM points says little; at 96 px the 12x12 map localises.
    """
    size = 96
    x, y = _square_data(100, 0, size, 16, right_for_0=True)
    xv, yv = _square_data(24, 1, size, 16, right_for_0=True)
    params = TrainParams(image_size=size, batch_size=16, epochs=3, patience=3)
    spec = ModelSpec(dataset="dataset_1", architecture="small_cnn")
    model = train_model(spec, params, ("right", "left"), (x, y, xv, yv), verbose=0).model
    xt, yt = _square_data(20, 2, size, 16, right_for_0=True)
    probs = np.asarray(model.predict(xt.astype("float32"), verbose=0))
    assert (probs.argmax(axis=1) == yt).mean() >= 0.9
    left1, right1 = _left_right(model, xt[yt == 1], 1)
    left0, right0 = _left_right(model, xt[yt == 0], 0)
    assert np.mean(left1) > np.mean(right1)
    assert np.mean(right0) > np.mean(left0)


def test_overlay_colours_and_blends() -> None:
    grey = np.full((4, 4, 1), 100, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    rgb = overlay(grey, heat)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    # jet: 0 is dark blue, 1 dark red; 0.6 of the grey + 0.4 of the colour
    assert rgb[0, 0, 0] > rgb[0, 0, 2] and rgb[1, 1, 2] > rgb[1, 1, 0]
    np.testing.assert_array_equal(overlay(grey, heat, alpha=0.0), np.repeat(grey, 3, axis=-1))
    with pytest.raises(ValueError, match="shape"):
        overlay(grey, np.zeros((5, 5)))


def test_sample_per_class_is_fixed_and_bounded() -> None:
    y = np.array([0, 1, 0, 2, 0, 1, 0])
    a = sample_per_class(y, 4, 2, seed=3)
    assert [len(p) for p in a] == [2, 2, 1, 0]
    assert all(np.all(y[p] == c) for c, p in enumerate(a))
    assert all(np.array_equal(p, q) for p, q in zip(a, sample_per_class(y, 4, 2, 3), strict=True))


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_grid_is_a_png(architecture: str, tmp_path: Path) -> None:
    size = 64 if architecture == "resnet50" else SIZE
    model = build_model(architecture, size, 3)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (7, size, size, 1)).astype(np.uint8)
    y = np.array([0, 0, 0, 1, 1, 1, 1])  # no image of class 2: its cells say so
    path = gradcam_grid(
        model, x, y, ("normal", "bacterial", "covid"), 2, 0, "t", tmp_path / "g" / "c.png"
    )
    assert path == tmp_path / "g" / "c.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > img.shape[1]  # 3 rows of 2 columns
    with pytest.raises(ValueError, match="per_class"):
        gradcam_grid(model, x, y, ("a", "b", "c"), 0, 0, "t", tmp_path / "x.png")
