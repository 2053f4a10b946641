"""Model behaviour: shapes per architecture, transfer surgery, freezing, weights file, training.

Specs are a local stand-in with ``ModelSpec``'s fields (attribute access is all training
needs), so that a new model key or init value needs nothing from the config loader here.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxrflow.config import TrainParams, load_params
from cxrflow.models import ARCHITECTURES, get_architecture, init_kind
from cxrflow.models.base import PIPELINE_PREPROCESSING

keras = pytest.importorskip("keras")

from cxrflow.models import CLASSIFIER_LAYER, build_model  # noqa: E402
from cxrflow.models.resnet50 import BACKBONE  # noqa: E402
from cxrflow.train import (  # noqa: E402
    freeze_all_but_classifier,
    replace_classifier,
    train_model,
    unfreeze,
)

CLASSES = ("normal", "bacterial", "covid")


@dataclass(frozen=True)
class Spec:
    """Stand-in for ``cxrflow.config.ModelSpec`` (same fields)."""

    dataset: str
    architecture: str
    init: str = "scratch"
    unfreeze_last: int | None = None
    weights_path: str | None = None
    allow_random_init: bool = False


# ------------------------------------------------------------------------------- registry


def test_registry_names_and_unknown_architecture() -> None:
    assert set(ARCHITECTURES) == {"small_cnn", "resnet50"}
    for name, arch in ARCHITECTURES.items():
        assert arch.name == name
        assert get_architecture(name) is arch
    with pytest.raises(ValueError, match=r"vgg.*resnet50.*small_cnn"):
        get_architecture("vgg")


def test_importing_the_registry_does_not_import_tensorflow() -> None:
    """The config loader imports the registry to validate params: it must stay cheap."""
    code = (
        "import sys, cxrflow.models; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("init", "kind"),
    [("scratch", "scratch"), ("imagenet", "imagenet"), ("model_0", "transfer"), ("m7", "transfer")],
)
def test_init_kind(init: str, kind: str) -> None:
    assert init_kind(init) == kind


@pytest.mark.parametrize(
    ("architecture", "supported"),
    [("small_cnn", {"scratch", "transfer"}), ("resnet50", {"scratch", "imagenet", "transfer"})],
)
def test_supported_init_kinds(architecture: str, supported: set[str]) -> None:
    arch = get_architecture(architecture)
    assert {k for k in ("scratch", "imagenet", "transfer") if arch.supports_init(k)} == supported


def test_small_cnn_refuses_imagenet() -> None:
    with pytest.raises(ValueError, match=r"small_cnn.*imagenet"):
        get_architecture("small_cnn").build(32, 3, "imagenet")


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_preprocessing_is_described_outside_and_inside_the_model(architecture: str) -> None:
    text = get_architecture(architecture).preprocessing
    assert text.startswith(PIPELINE_PREPROCESSING)
    assert "cxrflow.datasets.preprocess_image" in text and "in the model:" in text


# ---------------------------------------------------------------------------- building


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
    unfreeze(m2, Spec("dataset_1", "small_cnn", "model_0", None))
    assert all(layer.trainable for layer in m2.layers)


def test_transfer_refuses_a_base_of_another_architecture() -> None:
    with pytest.raises(ValueError, match=r"resnet50.*small_cnn"):
        get_architecture("resnet50").transfer(build_model("small_cnn", 32, 3), 3)


def test_resnet_unfreezes_last_11_layers_but_not_batchnorm() -> None:
    model = build_model("resnet50", 32, 3)
    freeze_all_but_classifier(model)
    assert not model.get_layer(BACKBONE).trainable
    n = unfreeze(model, Spec("dataset_1", "resnet50", "imagenet", 11))
    assert n == 11
    base = model.get_layer(BACKBONE)
    last = base.layers[-11:]
    assert all(not layer.trainable for layer in base.layers[:-11])
    bn = [layer for layer in last if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)
    assert any(layer.trainable for layer in last if layer.weights and layer not in bn)


def _plain_resnet50(size: int = 32) -> Any:
    """The stock Keras backbone, built independently of :mod:`cxrflow.models`."""
    return keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg"
    )


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A no-top ResNet-50 weights file made here (weights are never downloaded)."""
    donor = _plain_resnet50()
    path = tmp_path_factory.mktemp("weights") / "resnet50_notop.weights.h5"
    donor.save_weights(path)
    return path, donor.get_weights()


def test_resnet_loads_weights_from_configured_file(
    resnet_weights: tuple[Path, list[np.ndarray]],
) -> None:
    """ImageNet weights come from a file (never downloaded); the test makes its own file."""
    path, want = resnet_weights
    model = build_model("resnet50", 32, 3, str(path))
    got = model.get_layer(BACKBONE).get_weights()
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = build_model("resnet50", 32, 3)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(fresh.get_layer(BACKBONE).get_weights(), want, strict=True)
    )


# ---------------------------------------------------------------------------- training


def _tiny_data(n: int = 24, size: int = 32) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.integers(0, 60, (n, size, size, 1)).astype(np.uint8)
    x[y == 1, : size // 2] = 220  # learnable signal
    x[y == 2, size // 2 :] = 220
    return x, y.astype(np.int32), x[:9], y[:9].astype(np.int32)


def _params(size: int = 32, epochs: int = 1) -> TrainParams:
    return TrainParams(
        image_size=size, batch_size=8, epochs=epochs, patience=epochs, reduce_lr_patience=1
    )


def test_train_model_scratch_and_transfer_phases() -> None:
    params = _params(epochs=2)
    data = _tiny_data()
    r0 = train_model(Spec("dataset_0", "small_cnn"), params, CLASSES, data, verbose=0)
    assert [p["phase"] for p in r0.phases] == ["full"]
    assert len(r0.history["loss"]) == 2
    seen: list[tuple[str, int]] = []

    def cb(phase: str, offset: int) -> list:
        seen.append((phase, offset))
        return []

    r2 = train_model(
        Spec("dataset_1", "small_cnn", "model_0"),
        params,
        CLASSES,
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


def test_a_transfer_from_a_saved_model_is_the_same_every_run(tmp_path: Path) -> None:
    """model_2 starts from model_0's saved file. Keras draws a loaded model's dropout seed state
    anew in each load (it is not saved), so the same data, params and seed gave another model
    each run; two loads here stand for two runs."""
    params = _params(epochs=2)
    data = _tiny_data()
    r0 = train_model(Spec("dataset_0", "small_cnn"), params, CLASSES, data, verbose=0)
    path = tmp_path / "model_0.keras"
    r0.model.save(path)
    runs = []
    for _ in range(2):
        base = keras.models.load_model(path)
        runs.append(
            train_model(
                Spec("dataset_1", "small_cnn", "model_0"),
                params,
                CLASSES,
                data,
                base_model=base,
                verbose=0,
            )
        )
    assert runs[0].history == runs[1].history
    for a, b in zip(runs[0].model.get_weights(), runs[1].model.get_weights(), strict=True):
        assert np.array_equal(a, b)


def test_resnet50_pretrained_on_dataset_0_is_fine_tuned_like_model_3() -> None:
    """The ImageNet-free transfer (the sample profile's model_4 -> model_5): a ResNet-50 trained
    from scratch on Dataset_0 starts model_5, which trains a new head first and then only the
    last 11 backbone layers, so every earlier layer keeps model_4's weights."""
    params = _params(epochs=1)
    data = _tiny_data()
    r4 = train_model(Spec("dataset_0", "resnet50"), params, CLASSES, data, verbose=0)
    assert [p["phase"] for p in r4.phases] == ["full"]
    base4 = r4.model.get_layer(BACKBONE)
    before = [[w.copy() for w in layer.get_weights()] for layer in base4.layers]
    r5 = train_model(
        Spec("dataset_1", "resnet50", "model_4", 11),
        params,
        CLASSES,
        data,
        base_model=r4.model,
        verbose=0,
        model_key="model_5",
    )
    assert [p["phase"] for p in r5.phases] == ["head", "finetune"]
    assert r5.pretrained == "model_4"
    head, fine = r5.phases
    assert head["trainable_params"] < fine["trainable_params"]
    base5 = r5.model.get_layer(BACKBONE)
    kept = [
        all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), old, strict=True))
        for layer, old in zip(base5.layers, before, strict=True)
    ]
    assert all(kept[:-11])  # frozen: model_4's features
    assert not all(kept[-11:])  # the last 11 layers were fine-tuned


def test_model_3_without_weights_fails_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """No weights file and no allow_random_init: a paper run stops before touching the data."""
    import cxrflow.train

    def no_datasets(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("datasets were built before the weights check")

    monkeypatch.setattr(cxrflow.train, "make_tf_dataset", no_datasets)
    with pytest.raises(ValueError, match="weights_path") as err:
        train_model(
            Spec("dataset_1", "resnet50", "imagenet", 11),
            _params(),
            CLASSES,
            _tiny_data(12),
            verbose=0,
            model_key="model_3",
        )
    text = str(err.value)
    for needed in (
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",  # what to download
        "dvc add",  # how to track it
        "models.model_3.weights_path",  # where to say where it is
        "models.model_3.allow_random_init: true",  # or the demo's way out
    ):
        assert needed in text


@pytest.mark.parametrize(
    ("init", "weights", "allowed"),
    [("scratch", None, False), ("imagenet", "w.h5", False), ("imagenet", None, True)],
)
def test_weights_check_passes_when_not_needed_or_allowed(
    init: str, weights: str | None, allowed: bool
) -> None:
    get_architecture("resnet50").check_weights(init, weights, allowed, "model_3")


def test_model_3_without_weights_trains_when_allowed_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = train_model(
        Spec("dataset_1", "resnet50", "imagenet", 11, allow_random_init=True),
        _params(),
        CLASSES,
        _tiny_data(12),
        verbose=0,
    )
    assert r.pretrained == "none"
    assert "NO PRETRAINED WEIGHTS" in caplog.text


def test_a_new_model_key_trains_with_no_code_change() -> None:
    """``model_4``: the small CNN transferred from ``model_1`` (any key can be a base)."""
    data = _tiny_data(12)
    r1 = train_model(Spec("dataset_1", "small_cnn"), _params(), CLASSES, data, verbose=0)
    spec4 = Spec("dataset_1", "small_cnn", "model_1", unfreeze_last=6)
    with pytest.raises(ValueError, match="model_1"):
        train_model(spec4, _params(), CLASSES, data, verbose=0)
    r4 = train_model(spec4, _params(), CLASSES, data, base_model=r1.model, verbose=0)
    assert r4.pretrained == "model_1"
    assert [p["phase"] for p in r4.phases] == ["head", "finetune"]
    assert np.asarray(r4.model(data[0][:2].astype("float32"))).shape == (2, 3)


def _layers_with_trainable_weights(model: Any) -> set[str]:
    """Names of the layers (nested ones included) whose weights the optimizer updates."""
    return {v.path.rsplit("/", 1)[0].rsplit("/", 1)[-1] for v in model.trainable_weights}


class _RecordTrainable(keras.callbacks.Callback):
    """Records, as each phase starts fitting, which layers train."""

    def __init__(self, phase: str, seen: dict[str, set[str]]) -> None:
        super().__init__()
        self.phase, self.seen = phase, seen

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.seen[self.phase] = _layers_with_trainable_weights(self.model)


SMALL_CNN_WEIGHTED = ("conv0", "conv1", "conv2", "conv3", "dense", CLASSIFIER_LAYER)


def _expected_finetune(architecture: str, unfreeze_last: int | None, size: int) -> set[str]:
    """What should train in ``finetune``, derived from the stock layer lists, not our code."""
    if architecture == "small_cnn":
        # image, rescale, (conv, pool) x 4, flatten, dropout, dense, classifier
        order = ["image", "rescale"]
        for i in range(4):
            order += [f"conv{i}", f"pool{i}"]
        order += ["flatten", "dropout", "dense", CLASSIFIER_LAYER]
        tail = order if unfreeze_last is None else order[len(order) - unfreeze_last :]
        return {n for n in tail if n in SMALL_CNN_WEIGHTED} | {CLASSIFIER_LAYER}
    backbone = _plain_resnet50(size).layers
    tail = backbone if unfreeze_last is None else backbone[len(backbone) - unfreeze_last :]
    bn = keras.layers.BatchNormalization
    return {layer.name for layer in tail if layer.weights and not isinstance(layer, bn)} | {
        CLASSIFIER_LAYER
    }


# Trainable parameters per phase (head, finetune), counted by hand from the layer shapes:
# small_cnn at 32 px: classifier 128*3+3 = 387; whole net 320 + 18,496 + 73,856 + 147,584
# (convs) + 65,664 (dense on 2*2*128) + 387 = 306,307. ResNet-50 (any size: global pooling):
# classifier 2048*3+3 = 6,147; the last 11 backbone layers hold conv5_block3's 3 convs,
# 1,049,088 + 2,359,808 + 1,050,624 (their BatchNorms stay frozen), + 6,147 = 4,465,667.
MODEL_2_PARAMS = (387, 306_307)
MODEL_3_PARAMS = (6_147, 4_465_667)


@pytest.mark.parametrize(
    ("architecture", "init", "unfreeze_last", "size", "n_finetune", "n_params"),
    [
        pytest.param("small_cnn", "model_0", None, 32, 6, MODEL_2_PARAMS, id="model_2"),
        ("small_cnn", "model_1", 6, 32, 3, None),  # conv3, dense, classifier
        ("small_cnn", "model_1", 2, 32, 2, None),  # dense, classifier
        pytest.param(
            "resnet50", "imagenet", 11, 32, 4, MODEL_3_PARAMS, marks=pytest.mark.slow, id="model_3"
        ),  # 3 convs + head
        pytest.param("resnet50", "imagenet", 0, 32, 1, None, marks=pytest.mark.slow),  # head only
        pytest.param("resnet50", "model_3", None, 32, 54, None, marks=pytest.mark.slow),  # 53 convs
    ],
)
def test_trainable_layers_per_phase(
    architecture: str,
    init: str,
    unfreeze_last: int | None,
    size: int,
    n_finetune: int,
    n_params: tuple[int, int] | None,
    resnet_weights: tuple[Path, list[np.ndarray]],
) -> None:
    """Transfer and ImageNet init: shape, and exactly which layers train in each phase.

    The ``model_2`` and ``model_3`` cases are the paper's specs (checked against params.yaml by
    :func:`test_paper_specs_are_the_ones_tested`): head = the classifier only (1 layer), then
    6 layers (Model_2, the whole small CNN) and 4 layers (Model_3, 3 backbone convs + head).
    """
    arch = get_architecture(architecture)
    weights = str(resnet_weights[0]) if init == "imagenet" else None
    spec = Spec("dataset_1", architecture, init, unfreeze_last, weights)
    base = arch.build(size, 3) if init_kind(init) == "transfer" else None
    seen: dict[str, set[str]] = {}
    data = _tiny_data(6, size)
    result = train_model(
        spec,
        _params(size),
        CLASSES,
        data,
        base_model=base,
        callbacks=lambda phase, _: [_RecordTrainable(phase, seen)],
        verbose=0,
    )
    assert np.asarray(result.model(data[0][:2].astype("float32"))).shape == (2, len(CLASSES))
    assert result.pretrained == (weights if init == "imagenet" else init)
    assert seen["head"] == {CLASSIFIER_LAYER}
    expected = _expected_finetune(architecture, unfreeze_last, size)
    assert len(expected) == n_finetune
    assert seen["finetune"] == expected
    assert len(seen["head"]) == 1 and len(seen["finetune"]) == n_finetune
    head, fine = result.phases
    assert head["trainable_params"] <= fine["trainable_params"]
    if n_params is not None:
        assert (head["trainable_params"], fine["trainable_params"]) == n_params


def test_paper_specs_are_the_ones_tested() -> None:
    """The trainable-layer cases ``model_2`` and ``model_3`` above are params.yaml's specs."""
    models = load_params(Path(__file__).parents[2] / "params.yaml", "paper").models
    got = {k: (models[k].architecture, models[k].init, models[k].unfreeze_last) for k in models}
    assert got["model_2"] == ("small_cnn", "model_0", None)
    assert got["model_3"] == ("resnet50", "imagenet", 11)
