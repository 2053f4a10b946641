"""evaluate_model on a tiny Keras model: the result's shape, MLflow flattening, latency, hardware."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrflow.config import EvaluateParams
from cxrflow.evaluate import SCALAR_METRICS, evaluate_model, flat_metrics, hardware_info
from cxrflow.steps import format_summary

keras = pytest.importorskip("keras")

CLASSES = ("normal", "bacterial", "covid")


@pytest.fixture(scope="module")
def evaluated() -> tuple[dict, np.ndarray]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(2, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 32, 32, 1), dtype=np.uint8)
    y = np.arange(12) % 3
    groups = np.repeat([f"p{i}" for i in range(6)], 2)
    params = EvaluateParams(
        bootstrap_samples=100, latency_samples=3, latency_warmup=1, latency_batch_size=4
    )
    return evaluate_model(model, x, y, CLASSES, groups, params)


def test_evaluate_model_result(evaluated: tuple[dict, np.ndarray]) -> None:
    m, probs = evaluated
    json.dumps(m, allow_nan=False)
    assert probs.shape == (12, 3)
    assert m["predictions"] == probs.argmax(axis=1).tolist()
    assert m["classes"] == list(CLASSES)
    assert (m["n_test"], m["n_patients"]) == (12, 6)
    for name in SCALAR_METRICS:
        assert isinstance(m[name], float)
        assert m[f"{name}_ci"]["value"] == m[name]
    assert m["accuracy"] == pytest.approx(np.mean(probs.argmax(axis=1) == np.arange(12) % 3))
    assert m["bootstrap"]["samples"] == 100
    assert m["bootstrap"]["unit"] == "patient"
    assert set(m["per_class"]) == set(CLASSES)
    lat = m["latency"]
    assert lat["batch_size"] == 4
    assert lat["batch1_mean_ms"] > 0
    assert lat["batch1_p95_ms"] >= lat["batch1_mean_ms"] * 0.5
    assert m["latency_ms_per_image"] == lat["batch1_mean_ms"]
    assert m["hardware"]["tensorflow"]
    # the step's summary table still reads the result
    assert "| model_0 | d |" in format_summary({"model_0": {**m, "dataset": "d"}})


def test_flat_metrics_for_mlflow(evaluated: tuple[dict, np.ndarray]) -> None:
    m, _ = evaluated
    flat = flat_metrics(m)
    assert all(isinstance(v, float) for v in flat.values())
    assert flat["test_accuracy"] == m["accuracy"]
    assert flat["test_accuracy_ci_low"] == m["accuracy_ci"]["ci_low"]
    assert flat["test_f1_macro_ci_high"] == m["f1_macro_ci"]["ci_high"]
    assert flat["test_recall_covid"] == m["per_class"]["covid"]["recall"]["value"]
    assert "test_roc_auc_covid_ci_low" in flat
    assert "test_ece" in flat
    assert flat["test_latency_ms_per_image"] == m["latency_ms_per_image"]
    assert {"test_latency_batch1_p95_ms", "test_latency_batched_mean_ms"} <= set(flat)
    assert flat["test_bootstrap_usable"] == m["bootstrap"]["usable"]


def test_hardware_info() -> None:
    hw = hardware_info()
    assert hw["cpu_model"]
    assert hw["cpu_count"] >= 1
    assert isinstance(hw["gpus"], list)
    assert hw["tensorflow"] and hw["keras"]
    json.dumps(hw)


def test_evaluate_model_rejects_empty_split() -> None:
    with pytest.raises(ValueError, match="empty"):
        evaluate_model(None, np.zeros((0, 32, 32, 1)), np.zeros(0), CLASSES, [], EvaluateParams())
