"""cxrflow.stats against values computed by hand, and the patient-level bootstrap's invariants."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from cxrflow.stats import (
    expected_calibration_error,
    mcnemar_pairs,
    metric_summary,
    patient_bootstrap_indices,
    reliability_bins,
)

CLASSES = ("normal", "bacterial", "covid")

# Six images, three patients, three classes. Predictions (argmax): 0, 1, 1, 1, 2, 0.
Y = np.array([0, 0, 1, 1, 2, 2])
PROBA = np.array(
    [
        [0.70, 0.20, 0.10],  # normal    -> normal     right, confidence 0.70
        [0.30, 0.50, 0.20],  # normal    -> bacterial  wrong, 0.50
        [0.05, 0.90, 0.05],  # bacterial -> bacterial  right, 0.90
        [0.25, 0.65, 0.10],  # bacterial -> bacterial  right, 0.65
        [0.10, 0.05, 0.85],  # covid     -> covid      right, 0.85
        [0.50, 0.30, 0.20],  # covid     -> normal     wrong, 0.50
    ]
)
MIXED = np.array(["a", "b", "a", "c", "b", "c"])  # patients holding images of two classes
PURE = np.array(["a", "a", "b", "b", "c", "c"])  # each patient holds one class


def summary(groups: np.ndarray = MIXED, n_boot: int = 100, **kw: object) -> dict:
    args = {"confidence": 0.95, "seed": 7, "bins": 5, **kw}
    return metric_summary(Y, PROBA, CLASSES, groups, n_boot=n_boot, **args)  # type: ignore[arg-type]


def test_point_metrics_by_hand() -> None:
    s = summary()
    assert s["n_test"] == 6
    assert s["n_patients"] == 3
    assert s["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert s["accuracy"]["value"] == pytest.approx(4 / 6)
    # precision = diagonal / column sum: 1/2, 2/3, 1/1; recall = diagonal / row sum: 1/2, 1, 1/2
    pc = s["per_class"]
    assert [pc[c]["precision"]["value"] for c in CLASSES] == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert [pc[c]["recall"]["value"] for c in CLASSES] == pytest.approx([1 / 2, 1.0, 1 / 2])
    # F1 = 2PR / (P + R): 1/2, (4/3)/(5/3) = 4/5, 1/(3/2) = 2/3
    assert [pc[c]["f1"]["value"] for c in CLASSES] == pytest.approx([1 / 2, 4 / 5, 2 / 3])
    assert [pc[c]["support"] for c in CLASSES] == [2, 2, 2]
    assert s["precision_macro"]["value"] == pytest.approx(13 / 18)
    assert s["recall_macro"]["value"] == pytest.approx(2 / 3)
    assert s["f1_macro"]["value"] == pytest.approx(59 / 90)
    # AUC = share of (positive, negative) pairs ranked right, ties 1/2, from each column:
    # normal   pos .70 .30 vs neg .05 .25 .10 .50 -> (4 + 3) / 8
    # bacterial pos .90 .65 vs neg .20 .50 .05 .30 -> 8 / 8
    # covid    pos .85 .20 vs neg .10 .20 .05 .10 -> (4 + 3.5) / 8
    assert [pc[c]["roc_auc"]["value"] for c in CLASSES] == pytest.approx([7 / 8, 1.0, 7.5 / 8])
    assert s["roc_auc_macro"]["value"] == pytest.approx((7 / 8 + 1 + 7.5 / 8) / 3)
    # ECE, 5 bins: [.4,.6) two wrong at .5 -> gap .5; [.6,.8) two right at mean .675 -> .325;
    # [.8,1] two right at mean .875 -> .125; weighted 2/6 each
    assert s["ece"]["value"] == pytest.approx((0.5 + 0.325 + 0.125) * 2 / 6)


def test_ece_and_bins_by_hand() -> None:
    assert expected_calibration_error(Y, PROBA, 5) == pytest.approx(1.9 / 6)
    r = reliability_bins(Y, PROBA, 5)
    assert r["count"].tolist() == [0, 0, 2, 2, 2]
    assert r["accuracy"][2:].tolist() == [0.0, 1.0, 1.0]
    assert r["confidence"][2:] == pytest.approx([0.5, 0.675, 0.875])
    # one-hot, always right: perfectly calibrated; confidence 1.0 falls in the last bin
    assert expected_calibration_error(Y, np.eye(3)[Y], 10) == 0.0
    # always 0.9 confident, right 1 time in 2: gap 0.4
    half = np.tile([0.9, 0.1], (4, 1))
    assert expected_calibration_error(np.array([0, 1, 0, 1]), half, 10) == pytest.approx(0.4)


def test_summary_is_strict_json_and_intervals_bracket_the_value() -> None:
    s = summary(n_boot=150)
    json.dumps(s, allow_nan=False)
    assert s["bootstrap"]["samples"] == 150
    assert s["bootstrap"]["unit"] == "patient"
    assert 0 < s["bootstrap"]["usable"] <= 150
    for name in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "ece"):
        iv = s[name]
        assert iv["ci_low"] <= iv["ci_high"]
    rate = s["confusion_matrix_rate"]
    assert rate["value"][0] == pytest.approx([0.5, 0.5, 0.0])
    assert np.array(rate["ci_low"]).shape == (3, 3)


def test_patient_resamples_take_all_images_of_each_patient() -> None:
    groups = np.array(["p", "p", "p", "q", "r", "r"])
    resamples = list(patient_bootstrap_indices(groups, 50, seed=3))
    assert len(resamples) == 50
    for idx in resamples:
        times = Counter(idx.tolist())
        per_patient = {g: {times[i] for i in np.flatnonzero(groups == g)} for g in "pqr"}
        # every image of a patient appears equally often: the patient was drawn that many times
        assert all(len(v) == 1 for v in per_patient.values())
        assert sum(v.pop() for v in per_patient.values()) == 3  # three patients drawn
    again = list(patient_bootstrap_indices(groups, 50, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(resamples, again, strict=True))
    other = list(patient_bootstrap_indices(groups, 50, seed=4))
    assert not all(np.array_equal(a, b) for a, b in zip(resamples, other, strict=True))


def test_bootstrap_skips_resamples_missing_a_class() -> None:
    # Each patient holds one class, so a resample has every class only if it draws each of the
    # three patients once (probability 3!/3^3 = 2/9): it is then the test set itself, so every
    # interval collapses onto the point value, and usable counts exactly those resamples.
    n = 450
    s = summary(PURE, n_boot=n)
    whole = sum(
        np.array_equal(idx, np.arange(6)) for idx in patient_bootstrap_indices(PURE, n, seed=7)
    )
    assert s["bootstrap"]["usable"] == whole
    assert 60 < whole < 140  # 450 * 2/9 = 100, sd 8.8
    for iv in (s["accuracy"], s["f1_macro"], s["roc_auc_macro"], s["per_class"]["covid"]["f1"]):
        assert iv["ci_low"] == pytest.approx(iv["value"])
        assert iv["ci_high"] == pytest.approx(iv["value"])


def test_class_absent_from_test_split_is_none_not_nan() -> None:
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1]])
    s = metric_summary(
        y, proba, CLASSES, ["a", "b", "c", "d"], n_boot=100, confidence=0.9, seed=1, bins=4
    )
    json.dumps(s, allow_nan=False)
    covid = s["per_class"]["covid"]
    assert covid["support"] == 0
    assert covid["recall"] == {"value": None, "ci_low": None, "ci_high": None}
    assert covid["roc_auc"]["value"] is None
    assert covid["precision"]["value"] == 0.0  # never predicted
    # macro AUC over the classes present: normal pos .8 .4 vs neg .3 .2 -> 1; bacterial 1
    assert s["roc_auc_macro"]["value"] == pytest.approx(1.0)
    # resamples need both normal and bacterial patients; covid's absence does not disqualify
    assert 0 < s["bootstrap"]["usable"] < 100


def test_patient_interval_is_wider_than_image_interval_for_correlated_images() -> None:
    # ten patients of ten images each: a patient's images are all right or all wrong
    rng = np.random.default_rng(0)
    patient_right = rng.random(10) < 0.6
    groups = np.repeat(np.arange(10), 10)
    y = np.zeros(100, dtype=int)
    pred = np.where(patient_right[groups], 0, 1)
    proba = np.eye(2)[pred] * 0.8 + 0.1
    kw = {"n_boot": 200, "confidence": 0.95, "seed": 0, "bins": 10}
    by_patient = metric_summary(y, proba, ("a", "b"), groups, **kw)["accuracy"]  # type: ignore[arg-type]
    by_image = metric_summary(y, proba, ("a", "b"), np.arange(100), **kw)["accuracy"]  # type: ignore[arg-type]
    width = lambda iv: iv["ci_high"] - iv["ci_low"]  # noqa: E731
    assert width(by_patient) > 2 * width(by_image)


def test_metric_summary_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes"):
        metric_summary(Y, PROBA[:, :2], CLASSES, MIXED, n_boot=100, confidence=0.95, seed=0, bins=5)
    with pytest.raises(ValueError, match="no test images"):
        metric_summary(
            Y[:0], PROBA[:0], CLASSES, MIXED[:0], n_boot=100, confidence=0.95, seed=0, bins=5
        )


def _preds(table: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth all 0; model a / b right (0) or wrong (1) as the 2x2 McNemar table says."""
    (rr, rw), (wr, ww) = table
    a = np.array([0] * rr + [0] * rw + [1] * wr + [1] * ww)
    b = np.array([0] * rr + [1] * rw + [0] * wr + [1] * ww)
    return np.zeros(len(a), dtype=int), a, b


def test_mcnemar_exact_by_hand() -> None:
    y, a, b = _preds([[3, 1], [5, 2]])
    (r,) = mcnemar_pairs(y, {"model_1": a, "model_2": b})
    assert (r["a"], r["b"], r["n"]) == ("model_1", "model_2", 11)
    assert (r["n_a_right_b_wrong"], r["n_a_wrong_b_right"]) == (1, 5)
    assert r["method"] == "exact"
    # two-sided binomial: 2 * P(X <= 1 | n=6, p=1/2) = 2 * (1 + 6) / 64
    assert r["p_value"] == pytest.approx(14 / 64)
    assert r["statistic"] == 1.0


def test_mcnemar_chi_square_by_hand() -> None:
    y, a, b = _preds([[3, 5], [25, 2]])
    (r,) = mcnemar_pairs(y, {"a": a, "b": b})
    assert r["method"] == "chi2_corrected"  # 30 discordant pairs
    # (|b - c| - 1)^2 / (b + c) = 19^2 / 30; chi-square (1 df) tail = erfc(sqrt(x / 2))
    assert r["statistic"] == pytest.approx(361 / 30)
    assert r["p_value"] == pytest.approx(math.erfc(math.sqrt(361 / 60)))


def test_mcnemar_threshold_pairs_and_validation() -> None:
    y, a, b = _preds([[0, 12], [12, 0]])
    assert mcnemar_pairs(y, {"a": a, "b": b})[0]["method"] == "exact"  # 24 discordant
    y, a, b = _preds([[0, 12], [13, 0]])
    assert mcnemar_pairs(y, {"a": a, "b": b})[0]["method"] == "chi2_corrected"  # 25
    # identical models: no discordant pairs, no evidence of a difference
    same = mcnemar_pairs(y, {"a": a, "b": a.copy(), "c": b})
    assert [(r["a"], r["b"]) for r in same] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert same[0]["p_value"] == 1.0
    with pytest.raises(ValueError, match="c: 3 predictions"):
        mcnemar_pairs(y, {"a": a, "c": b[:3]})
