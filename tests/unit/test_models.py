"""Model behaviour: shapes per architecture, transfer surgery, freezing, weights file, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrflow.config import ModelSpec, TrainParams

keras = pytest.importorskip("keras")

from cxrflow.models import CLASSIFIER_LAYER, build_model  # noqa: E402
from cxrflow.models.resnet50 import BACKBONE  # noqa: E402
from cxrflow.train import (  # noqa: E402
    freeze_all_but_classifier,
    replace_classifier,
    train_model,
    unfreeze,
)


@pytest.mark.parametrize(
    ("architecture", "size", "n_classes"),
    [("small_cnn", 32, 3), ("small_cnn", 64, 3), ("small_cnn", 48, 5), ("resnet50", 32, 3)],
)
def test_output_shape_and_softmax(architecture: str, size: int, n_classes: int) -> None:
    model = build_model(architecture, size, n_classes)
    x = np.random.default_rng(0).integers(0, 255, (2, size, size, 1)).astype("float32")
    y = np.asarray(model(x, training=False))
    assert y.shape == (2, n_classes)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer(CLASSIFIER_LAYER).units == n_classes


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="vgg"):
        build_model("vgg", 32, 3)


def test_replace_classifier_keeps_features() -> None:
    m0 = build_model("small_cnn", 32, 3)
    m2 = replace_classifier(m0, 3)
    for name in ("conv0", "conv3", "dense"):
        for a, b in zip(
            m0.get_layer(name).get_weights(), m2.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    w_old = m0.get_layer(CLASSIFIER_LAYER).get_weights()[0]
    w_new = m2.get_layer(CLASSIFIER_LAYER).get_weights()[0]
    assert not np.array_equal(w_old, w_new)
    freeze_all_but_classifier(m2)
    assert [layer.name for layer in m2.layers if layer.trainable and layer.weights] == [
        CLASSIFIER_LAYER
    ]
    unfreeze(m2, ModelSpec("dataset_1", "small_cnn", "model_0", None))
    assert all(layer.trainable for layer in m2.layers)


def test_resnet_unfreezes_last_11_layers_but_not_batchnorm() -> None:
    model = build_model("resnet50", 32, 3)
    freeze_all_but_classifier(model)
    assert not model.get_layer(BACKBONE).trainable
    n = unfreeze(model, ModelSpec("dataset_1", "resnet50", "imagenet", 11))
    assert n == 11
    base = model.get_layer(BACKBONE)
    last = base.layers[-11:]
    assert all(not layer.trainable for layer in base.layers[:-11])
    bn = [layer for layer in last if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)
    assert any(layer.trainable for layer in last if layer.weights and layer not in bn)


def test_resnet_loads_weights_from_configured_file(tmp_path: Path) -> None:
    """ImageNet weights come from a file (never downloaded); the test makes its own file."""
    donor = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path = tmp_path / "resnet50_notop.weights.h5"
    donor.save_weights(path)
    model = build_model("resnet50", 32, 3, str(path))
    got = model.get_layer(BACKBONE).get_weights()
    want = donor.get_weights()
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = build_model("resnet50", 32, 3)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(fresh.get_layer(BACKBONE).get_weights(), want, strict=True)
    )


def _tiny_data(n: int = 24, size: int = 32) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.integers(0, 60, (n, size, size, 1)).astype(np.uint8)
    x[y == 1, : size // 2] = 220  # learnable signal
    x[y == 2, size // 2 :] = 220
    return x, y.astype(np.int32), x[:9], y[:9].astype(np.int32)


def test_train_model_scratch_and_transfer_phases() -> None:
    params = TrainParams(image_size=32, batch_size=8, epochs=2, patience=2, reduce_lr_patience=1)
    data = _tiny_data()
    classes = ("normal", "bacterial", "covid")
    r0 = train_model(ModelSpec("dataset_0", "small_cnn"), params, classes, data, verbose=0)
    assert [p["phase"] for p in r0.phases] == ["full"]
    assert len(r0.history["loss"]) == 2
    seen: list[tuple[str, int]] = []

    def cb(phase: str, offset: int) -> list:
        seen.append((phase, offset))
        return []

    r2 = train_model(
        ModelSpec("dataset_1", "small_cnn", "model_0"),
        params,
        classes,
        data,
        base_model=r0.model,
        callbacks=cb,
        verbose=0,
    )
    assert [p["phase"] for p in r2.phases] == ["head", "finetune"]
    assert seen == [("head", 0), ("finetune", 2)]
    head, fine = r2.phases
    assert head["trainable_params"] < fine["trainable_params"]
    assert fine["learning_rate"] == pytest.approx(1e-4)
    assert r2.pretrained == "model_0"


def test_model_3_without_weights_says_so(caplog: pytest.LogCaptureFixture) -> None:
    params = TrainParams(image_size=32, batch_size=8, epochs=1, patience=1, reduce_lr_patience=1)
    r = train_model(
        ModelSpec("dataset_1", "resnet50", "imagenet", 11),
        params,
        ("normal", "bacterial", "covid"),
        _tiny_data(12),
        verbose=0,
    )
    assert r.pretrained == "none"
    assert "NO PRETRAINED WEIGHTS" in caplog.text
