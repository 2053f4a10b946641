"""The audit's numbers with 95 % intervals from a seeded, patient-level bootstrap: rates, plain
and balanced accuracy, and AUCs compared within strata (images of one label only).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeAlias

import numpy as np

CONFIDENCE = 0.95


Groups: TypeAlias = Sequence[str] | np.ndarray
"""Patient ids, one per image: the resampling unit of every bootstrap."""


# ------------------------------------------------------------------------------ bootstrap


def _interval(values: np.ndarray) -> tuple[float | None, float | None]:
    from cxrflow.stats import percentile_bounds

    values = values[np.isfinite(values)]
    if not len(values):
        return None, None
    lo, hi = percentile_bounds(values, CONFIDENCE)
    return float(lo), float(hi)


def _estimate(value: float | None, boot: np.ndarray | None) -> dict[str, float | None]:
    """``{"value", "ci_low", "ci_high"}`` rounded to 4 decimals."""
    lo, hi = _interval(boot) if boot is not None and value is not None else (None, None)

    def r(v: float | None) -> float | None:
        return None if v is None else round(float(v), 4)

    return {"value": r(value), "ci_low": r(lo), "ci_high": r(hi)}


def _resamples(groups: Groups, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Index arrays of a patient-level bootstrap (:func:`cxrflow.stats.
    patient_bootstrap_indices`, seeded from ``rng`` so that each interval draws anew)."""
    from cxrflow.stats import patient_bootstrap_indices

    return patient_bootstrap_indices(
        np.asarray(groups, dtype=str), n_boot, int(rng.integers(2**32))
    )


def _recalls(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[float, float]:
    """Accuracy and balanced accuracy (mean recall over the classes present)."""
    counts = np.bincount(y_true, minlength=n_classes)
    hits = np.bincount(y_true[y_true == y_pred], minlength=n_classes)
    present = counts > 0
    return float(hits.sum() / counts.sum()), float(np.mean(hits[present] / counts[present]))


def rate_with_ci(
    hits: np.ndarray, groups: Groups, n_boot: int, rng: np.random.Generator
) -> dict[str, float | None]:
    """Share of True in ``hits`` with a patient-level bootstrap CI (``value`` None if empty)."""
    hits = np.asarray(hits, dtype=float)
    if not len(hits):
        return _estimate(None, None)
    boot = np.array([hits[idx].mean() for idx in _resamples(groups, n_boot, rng)])
    return _estimate(float(hits.mean()), boot)


def accuracy_with_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: Groups,
    n_classes: int,
    n_boot: int,
    rng: np.random.Generator,
) -> dict[str, dict[str, float | None]]:
    """Accuracy and balanced accuracy (mean recall over the classes present), with CIs."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if not len(y_true):
        return {"accuracy": _estimate(None, None), "balanced_accuracy": _estimate(None, None)}
    boot = np.array(
        [_recalls(y_true[i], y_pred[i], n_classes) for i in _resamples(groups, n_boot, rng)]
    ).reshape(-1, 2)
    acc, bacc = _recalls(y_true, y_pred, n_classes)
    return {
        "accuracy": _estimate(acc, boot[:, 0]),
        "balanced_accuracy": _estimate(bacc, boot[:, 1]),
    }


def _auc_sum(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Mann-Whitney U of ``scores`` (positives above negatives, ties half) and the pair count."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.0, 0.0
    ranks = rankdata(scores)
    return float(ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0), float(n_pos * n_neg)


def stratified_auc(
    scores: np.ndarray, positive: np.ndarray, strata: np.ndarray | None = None
) -> float | None:
    """ROC AUC comparing positives with negatives of the same stratum only.

    The probability that a random positive scores above a random negative *of the same
    stratum* (ties count half): the per-stratum Mann-Whitney U summed over strata, divided by
    the summed pair counts. ``strata`` None: the ordinary AUC. None when no stratum holds both.
    """
    positive = np.asarray(positive, dtype=bool)
    keys = np.zeros(len(scores), dtype=int) if strata is None else np.asarray(strata)
    u_total = pairs_total = 0.0
    for key in np.unique(keys):
        sel = keys == key
        u, pairs = _auc_sum(np.asarray(scores)[sel], positive[sel])
        u_total, pairs_total = u_total + u, pairs_total + pairs
    return u_total / pairs_total if pairs_total else None


def _macro_auc(
    proba: np.ndarray, target: np.ndarray, n_sources: int, strata: np.ndarray | None
) -> float | None:
    """Mean over sources of the one-vs-rest (stratified) AUC; for two sources, the AUC."""
    aucs = [stratified_auc(proba[:, s], target == s, strata) for s in range(n_sources)]
    known = [a for a in aucs if a is not None]
    return float(np.mean(known)) if known else None
