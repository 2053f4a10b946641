"""Pure functions: metrics, latency timing, champion selection, class weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cxrflow.datasets import class_weights
from cxrflow.evaluate import flat_metrics, measure_latency
from cxrflow.register import select_champion
from cxrflow.stats import metric_summary

CLASSES = ("normal", "bacterial", "covid")


def one_hot_summary(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """metric_summary of hard predictions ``p``, one patient per image."""
    proba = np.eye(len(CLASSES))[p]
    return metric_summary(
        y, proba, CLASSES, np.arange(len(y)), n_boot=100, confidence=0.95, seed=0, bins=10
    )


def test_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 2, 2])
    p = np.array([0, 1, 1, 2, 0])
    m = one_hot_summary(y, p)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert m["accuracy"]["value"] == pytest.approx(3 / 5)
    # precision: normal 1/2, bacterial 1/2, covid 1/1; recall: 1/2, 1/1, 1/2
    assert m["precision_macro"]["value"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert m["recall_macro"]["value"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    f1 = [0.5, 2 * 0.5 / 1.5, 2 * 0.5 / 1.5]
    assert m["f1_macro"]["value"] == pytest.approx(sum(f1) / 3)
    assert m["per_class"]["covid"]["support"] == 2
    # one-hot probabilities: confidence 1 everywhere, accuracy 3/5
    assert m["ece"]["value"] == pytest.approx(2 / 5)


def test_metrics_perfect_and_absent_class() -> None:
    y = np.array([0, 1, 1])
    m = one_hot_summary(y, y)
    assert m["accuracy"]["value"] == 1.0
    assert m["per_class"]["covid"]["precision"]["value"] == 0.0  # never predicted
    assert m["per_class"]["covid"]["recall"]["value"] is None  # never present: undefined
    # macro over every class, the absent one counting 0 (scikit-learn with labels=all)
    assert m["f1_macro"]["value"] == pytest.approx(2 / 3)


def test_flat_metrics_names() -> None:
    m = {
        "accuracy": 0.6,
        "accuracy_ci": {"value": 0.6, "ci_low": 0.2, "ci_high": 0.9},
        "roc_auc_macro": None,
        "roc_auc_macro_ci": {"value": None, "ci_low": None, "ci_high": None},
        "per_class": {"covid": {"recall": {"value": 0.5, "ci_low": 0.0, "ci_high": 1.0}}},
        "latency_ms_per_image": 3.0,
        "latency": {"batch_size": 4, "batch1_mean_ms": 3.0, "batched_p95_ms": 1.5},
    }
    assert flat_metrics(m) == {
        "test_accuracy": 0.6,
        "test_accuracy_ci_low": 0.2,
        "test_accuracy_ci_high": 0.9,
        "test_recall_covid": 0.5,
        "test_recall_covid_ci_low": 0.0,
        "test_recall_covid_ci_high": 1.0,
        "test_latency_ms_per_image": 3.0,
        "test_latency_batch1_mean_ms": 3.0,
        "test_latency_batched_p95_ms": 1.5,
    }


class _CountingModel:
    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.float32
        self.shapes.append(x.shape)
        return np.zeros((len(x), 3))


def test_latency_counts_samples_at_batch_1_and_batched() -> None:
    model = _CountingModel()
    lat = measure_latency(model, np.zeros((3, 4, 4, 1), dtype=np.uint8), 5, 2, batch_size=4)
    # warm-up + timed calls, first one image at a time, then full batches wrapping round x
    assert model.shapes == [(1, 4, 4, 1)] * 7 + [(4, 4, 4, 1)] * 7
    assert lat["samples"] == 5
    assert lat["batch_size"] == 4
    assert 0 <= lat["batch1_mean_ms"] <= lat["batch1_p95_ms"] * 5
    assert lat["batched_mean_ms"] >= 0
    with pytest.raises(ValueError, match="no images"):
        measure_latency(model, np.zeros((0, 4, 4, 1)), 5, 2, 4)


def test_select_champion_highest_wins_and_ties_go_first() -> None:
    res = {
        "model_0": {"f1_macro": 0.99},
        "model_1": {"f1_macro": 0.80},
        "model_2": {"f1_macro": 0.90},
        "model_3": {"f1_macro": 0.90},
    }
    cands = ("model_1", "model_2", "model_3")
    assert select_champion(res, "f1_macro", cands) == "model_2"  # model_0 is not a candidate
    assert select_champion(res, "f1_macro", ("model_3", "model_2")) == "model_3"


def test_select_champion_skips_nan_and_fails_loudly() -> None:
    res = {"model_1": {"f1_macro": float("nan")}, "model_2": {"f1_macro": 0.1}}
    assert select_champion(res, "f1_macro", ("model_1", "model_2")) == "model_2"
    with pytest.raises(ValueError, match="f1_macro"):
        select_champion({"model_1": {}}, "f1_macro", ("model_1",))


def test_class_weights_balanced() -> None:
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w[0] == pytest.approx(4 / 9)
    assert w[1] == pytest.approx(4 / 3)
    assert w[2] == 0.0
