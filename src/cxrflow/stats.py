"""Test-split statistics a reviewer can check: point metrics, patient-level bootstrap intervals,
calibration and paired model comparison.

Point metrics come from scikit-learn, the paired test from statsmodels; this module only adds the
domain rules:

- Images of one patient are not independent, so the bootstrap resamples *patients* (ids drawn
  with replacement, each drawn patient contributing all its images), never images.
- A resample that lacks a class present in the test split leaves that class's recall, F1 and
  one-vs-rest AUC undefined. Such resamples are skipped for every interval (so all intervals are
  computed over the same resamples) and the number kept is reported as ``usable``.
- Undefined values (a class absent from the whole test split) are ``None``, so that the result
  is strict JSON.
- A class never predicted has precision 0 (scikit-learn's ``zero_division=0``), and macro
  averages run over every class, as the paper's table does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

MCNEMAR_EXACT_BELOW = 25
"""Fewer discordant pairs than this: exact binomial McNemar test, else chi-square with
continuity correction (the usual rule of thumb; the chi-square approximation needs b + c >= 25)."""

_MACRO = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc_macro", "ece")
_PER_CLASS = ("precision", "recall", "f1", "roc_auc")


def reliability_bins(y_true: np.ndarray, proba: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """Group images by top-label confidence into ``bins`` equal-width bins on [0, 1].

    Bin ``i`` holds confidences in ``[i / bins, (i + 1) / bins)``; a confidence of exactly 1
    goes to the last bin.

    Args:
        y_true: True class indices, shape ``(n,)``.
        proba: Class probabilities, shape ``(n, k)``.
        bins: Number of bins.

    Returns:
        ``edges`` (``bins + 1``), and per bin ``count``, ``accuracy`` and ``confidence`` (the
        mean top-label probability); the last two are NaN for an empty bin.
    """
    p = np.asarray(proba, dtype=float)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == np.asarray(y_true)).astype(float)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1),
        "count": count,
        "accuracy": acc,
        "confidence": mean_conf,
    }


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int) -> float:
    """Top-label expected calibration error (Guo et al. 2017).

    ``ECE = sum_b (n_b / n) * |accuracy_b - confidence_b|`` over the bins of
    :func:`reliability_bins`.

    Args:
        y_true: True class indices, shape ``(n,)``.
        proba: Class probabilities, shape ``(n, k)``.
        bins: Number of equal-width confidence bins.

    Returns:
        The ECE in [0, 1]; NaN for an empty set.
    """
    r = reliability_bins(y_true, proba, bins)
    n = r["count"].sum()
    if n == 0:
        return float("nan")
    full = r["count"] > 0
    gap = np.abs(r["accuracy"][full] - r["confidence"][full])
    return float((r["count"][full] * gap).sum() / n)


def patient_bootstrap_indices(
    groups: Sequence[Any] | np.ndarray, n: int, seed: int
) -> Iterator[np.ndarray]:
    """Bootstrap resamples of image indices that resample patients, not images.

    Each resample draws as many patient ids as there are patients, with replacement; a patient
    drawn ``m`` times contributes each of its images ``m`` times.

    Args:
        groups: Patient (or linked-patient group) id of each image.
        n: Number of resamples.
        seed: Seed of the NumPy generator; the same seed gives the same resamples.

    Yields:
        Integer index arrays into the images (sorted; order does not matter to the metrics).
    """
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    inverse = inverse.ravel()
    n_patients = int(inverse.max()) + 1 if inverse.size else 0
    images = np.arange(inverse.size)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        times = np.bincount(rng.integers(0, n_patients, n_patients), minlength=n_patients)
        yield np.repeat(images, times[inverse])


def _point_metrics(y: np.ndarray, proba: np.ndarray, k: int, bins: int) -> dict[str, Any]:
    """Every metric of :func:`metric_summary` on one (re)sample, as floats (NaN if undefined)."""
    labels = list(range(k))
    pred = proba.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=labels)
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    auc = np.full(k, np.nan)
    for c in labels:
        positive = y == c
        if positive.any() and not positive.all():
            auc[c] = roc_auc_score(positive, proba[:, c])
    present = support > 0
    # recall and F1 of a class with no images are undefined, not 0
    rec = np.where(present, rec, np.nan)
    f1 = np.where(present, f1, np.nan)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        cm_rate = cm / rows
    return {
        "accuracy": float(np.trace(cm) / cm.sum()),
        # macro over every class: a class never predicted counts as precision 0
        "precision_macro": float(np.mean(prec)),
        "recall_macro": float(np.nan_to_num(rec).mean()),
        "f1_macro": float(np.nan_to_num(f1).mean()),
        "roc_auc_macro": float(np.mean(auc[present]))
        if np.isfinite(auc[present]).all()
        else np.nan,
        "ece": expected_calibration_error(y, proba, bins),
        "precision": prec.astype(float),
        "recall": rec.astype(float),
        "f1": f1.astype(float),
        "roc_auc": auc,
        "support": support,
        "cm": cm,
        "cm_rate": cm_rate,
    }


def _json_float(v: Any) -> float | None:
    return float(v) if np.isfinite(v) else None


def percentile_bounds(boots: np.ndarray, confidence: float) -> tuple[Any, Any]:
    """The percentile interval of bootstrap values (axis 0): the one rule every CI here uses."""
    alpha = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(boots, [alpha, 100.0 - alpha], axis=0)
    return low, high


def _interval(value: Any, boots: np.ndarray, confidence: float) -> dict[str, Any]:
    """``{"value", "ci_low", "ci_high"}``: percentile interval of ``boots`` (axis 0)."""
    value = np.asarray(value, dtype=float)
    if len(boots) == 0:
        low = high = np.full(value.shape, np.nan)
    else:
        low, high = percentile_bounds(boots, confidence)
        # an undefined point value has no interval either
        low = np.where(np.isfinite(value), low, np.nan)
        high = np.where(np.isfinite(value), high, np.nan)
    # nested lists for arrays, a float (or None) for a scalar
    to_list = np.vectorize(_json_float, otypes=[object])
    return {
        "value": to_list(value).tolist(),
        "ci_low": to_list(low).tolist(),
        "ci_high": to_list(high).tolist(),
    }


def metric_summary(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    groups: Sequence[Any] | np.ndarray,
    *,
    n_boot: int,
    confidence: float,
    seed: int,
    bins: int,
) -> dict[str, Any]:
    """Test-split metrics, each with a patient-level percentile bootstrap interval.

    Args:
        y_true: True class indices, shape ``(n,)``.
        proba: Class probabilities, shape ``(n, k)`` with ``k = len(classes)``; the prediction
            is the argmax.
        classes: Class names, in output order.
        groups: Patient (or linked-patient group) id of each image: the bootstrap unit.
        n_boot: Number of bootstrap resamples.
        confidence: Interval coverage, e.g. 0.95.
        seed: Bootstrap seed.
        bins: Confidence bins of the expected calibration error.

    Returns:
        A JSON-able dict: ``n_test``, ``n_patients``; ``accuracy``, ``precision_macro``,
        ``recall_macro``, ``f1_macro``, ``roc_auc_macro`` (mean one-vs-rest AUC over the
        classes present) and ``ece``, each ``{"value", "ci_low", "ci_high"}``; ``per_class``
        (``{cls: {"precision", "recall", "f1", "roc_auc": {...}, "support": n}}``);
        ``confusion_matrix`` (counts, ``[true][predicted]``); ``confusion_matrix_rate``
        (row-normalised, with intervals, as ``{"value", "ci_low", "ci_high"}`` of nested lists);
        ``bootstrap`` (``samples``, ``usable``, ``confidence``, ``unit: "patient"``). Undefined
        values are ``None``.

    Raises:
        ValueError: Empty input or mismatched shapes.
    """
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(proba, dtype=float)
    g = np.asarray(groups)
    k = len(classes)
    if len(y) == 0:
        raise ValueError("no test images")
    if p.shape != (len(y), k) or len(g) != len(y):
        raise ValueError(
            f"shapes disagree: y {y.shape}, proba {p.shape} for {k} classes, groups {g.shape}"
        )
    point = _point_metrics(y, p, k, bins)
    present = point["support"] > 0

    boots: dict[str, list[Any]] = {name: [] for name in (*_MACRO, *_PER_CLASS, "cm_rate")}
    for idx in patient_bootstrap_indices(g, n_boot, seed):
        if (np.bincount(y[idx], minlength=k)[present] == 0).any():
            continue
        m = _point_metrics(y[idx], p[idx], k, bins)
        for name in boots:
            boots[name].append(m[name])
    usable = len(boots["accuracy"])
    arrays = {
        name: np.asarray(v, dtype=float).reshape((usable, *np.shape(point[name])))
        for name, v in boots.items()
    }

    out: dict[str, Any] = {
        "n_test": len(y),
        "n_patients": len(np.unique(g)),
    }
    for name in _MACRO:
        out[name] = _interval(point[name], arrays[name], confidence)
    out["per_class"] = {}
    for i, c in enumerate(classes):
        entry: dict[str, Any] = {
            name: _interval(point[name][i], arrays[name][:, i], confidence) for name in _PER_CLASS
        }
        entry["support"] = int(point["support"][i])
        out["per_class"][c] = entry
    out["confusion_matrix"] = point["cm"].tolist()
    out["confusion_matrix_rate"] = _interval(point["cm_rate"], arrays["cm_rate"], confidence)
    out["bootstrap"] = {
        "samples": int(n_boot),
        "usable": usable,
        "confidence": float(confidence),
        "unit": "patient",
        "seed": int(seed),
    }
    return out


def mcnemar_pairs(
    y_true: np.ndarray, predictions: Mapping[str, np.ndarray]
) -> list[dict[str, Any]]:
    """McNemar's test between every pair of models predicting the same test images.

    Exact binomial test when the pair has fewer than :data:`MCNEMAR_EXACT_BELOW` discordant
    images, otherwise chi-square with continuity correction (statsmodels).

    Args:
        y_true: True class indices, shape ``(n,)``.
        predictions: Model key -> predicted class indices for the same ``n`` images, in the
            same order.

    Returns:
        One dict per pair ``(a, b)`` (in the mapping's order): ``a``, ``b``, ``n``,
        ``n_a_right_b_wrong``, ``n_a_wrong_b_right``, ``statistic``, ``p_value`` and ``method``
        (``exact`` or ``chi2_corrected``).

    Raises:
        ValueError: A model's predictions do not cover the same images.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    y = np.asarray(y_true).ravel()
    right = {}
    for key, pred in predictions.items():
        pred = np.asarray(pred).ravel()
        if pred.shape != y.shape:
            raise ValueError(f"{key}: {pred.shape[0]} predictions for {y.shape[0]} images")
        right[key] = pred == y
    out = []
    for a, b in itertools.combinations(right, 2):
        ra, rb = right[a], right[b]
        table = [
            [int(np.sum(ra & rb)), int(np.sum(ra & ~rb))],
            [int(np.sum(~ra & rb)), int(np.sum(~ra & ~rb))],
        ]
        discordant = table[0][1] + table[1][0]
        exact = discordant < MCNEMAR_EXACT_BELOW
        result = mcnemar(table, exact=exact, correction=True)
        out.append(
            {
                "a": a,
                "b": b,
                "n": int(y.size),
                "n_a_right_b_wrong": table[0][1],
                "n_a_wrong_b_right": table[1][0],
                "statistic": float(result.statistic),
                "p_value": float(result.pvalue),
                "method": "exact" if exact else "chi2_corrected",
            }
        )
    return out
