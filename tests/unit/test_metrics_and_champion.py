"""Pure functions: metrics, confusion matrix, latency, champion selection, class weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrflow.datasets import class_weights
from cxrflow.evaluate import compute_metrics, confusion_matrix, flat_metrics, measure_latency
from cxrflow.register import select_champion

CLASSES = ("normal", "bacterial", "covid")


def test_confusion_matrix_counts() -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 2, 2])
    p = np.array([0, 1, 1, 2, 0])
    m = compute_metrics(y, p, CLASSES)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # precision: normal 1/2, bacterial 1/2, covid 1/1; recall: 1/2, 1/1, 1/2
    assert m["precision_macro"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert m["recall_macro"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    f1 = [0.5, 2 * 0.5 / 1.5, 2 * 0.5 / 1.5]
    assert m["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert m["per_class"]["covid"]["support"] == 2
    flat = flat_metrics(m)
    assert flat["test_recall_covid"] == pytest.approx(0.5)


def test_metrics_perfect_and_absent_class() -> None:
    y = np.array([0, 1, 1])
    m = compute_metrics(y, y, CLASSES)
    assert m["accuracy"] == 1.0
    assert m["per_class"]["covid"]["precision"] == 0.0  # never predicted, never present
    assert m["f1_macro"] == pytest.approx(2 / 3)


def test_latency_counts_samples() -> None:
    calls = []
    ms = measure_latency(lambda x: calls.append(x.shape), np.zeros((3, 4, 4, 1)), 5, 2)
    assert len(calls) == 7
    assert calls[0] == (1, 4, 4, 1)
    assert ms >= 0
    assert math.isnan(measure_latency(lambda x: None, np.zeros((0, 4, 4, 1)), 5, 2))


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
