"""The audit's three shortcut tests on one model: same-source controls (:func:`control_test`),
the source probe on penultimate features (:func:`source_probe`) and the lung-field ablation
(:func:`ablation_test`), each with its status, point estimates and intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrflow.audit.estimates import (
    Groups,
    _estimate,
    _macro_auc,
    _resamples,
    accuracy_with_ci,
    rate_with_ci,
)
from cxrflow.audit.images import mask_images, predict_proba

COVID = "covid"
"""The class a control must not be called."""
PROBE_FOLDS = 5


INCONCLUSIVE, NOT_APPLICABLE = "inconclusive", "not_applicable"  # values of a test's status


# ---------------------------------------------------------------------------------- tests


def control_test(
    proba: np.ndarray,
    *,
    findings: Sequence[str],
    groups: Sequence[str],
    labels: Sequence[str] | None,
    classes: Sequence[str],
    n_boot: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Share of control images the model calls COVID-19 (its top class), with CIs.

    Args:
        proba: The model's outputs on the controls.
        findings: Each control's raw finding (``Streptococcus``, ``No Finding``, ...).
        groups: Each control's patient id (the bootstrap's resampling unit).
        labels: Each control's label; the verdict's basis is the controls whose label is one
            of ``classes``. None: every control is in the basis.
        classes: The model's classes, in output order.

    Returns:
        ``status`` (``ok`` or ``not_applicable`` when ``covid`` is not a class), ``n`` (basis
        images), ``patients``, ``covid_rate`` (basis), ``n_all`` and ``covid_rate_all`` (every
        control), ``basis_labels``, and ``by_finding`` / ``by_label``:
        ``{key: {"n", "covid", "label", "covid_rate"}}``.
    """
    findings = list(findings)
    groups_a = np.asarray(groups, dtype=str)
    labels_a = np.asarray(labels if labels is not None else [""] * len(findings), dtype=str)
    in_basis = (
        np.isin(labels_a, list(classes)) if labels is not None else np.ones(len(findings), bool)
    )
    out: dict[str, Any] = {
        "status": "ok",
        "n": int(in_basis.sum()),
        "patients": len(set(groups_a[in_basis])),
        "n_all": len(findings),
        "basis_labels": sorted(set(labels_a[in_basis])) if labels is not None else None,
    }
    if COVID not in classes:
        return {**out, "status": NOT_APPLICABLE, "covid_rate": _estimate(None, None)}
    called = (
        proba.argmax(axis=1) == list(classes).index(COVID)
        if len(proba)
        else np.zeros(0, dtype=bool)
    )
    out["covid_rate"] = rate_with_ci(called[in_basis], groups_a[in_basis], n_boot, rng)
    out["covid_rate_all"] = rate_with_ci(called, groups_a, n_boot, rng)

    def breakdown(keys: np.ndarray) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for key in sorted(set(keys)):
            sel = keys == key
            table[str(key)] = {
                "n": int(sel.sum()),
                "covid": int(called[sel].sum()),
                "label": sorted(set(labels_a[sel]))[0] if labels is not None else None,
                "covid_rate": rate_with_ci(called[sel], groups_a[sel], n_boot, rng),
            }
        return table

    out["by_finding"] = breakdown(np.asarray(findings, dtype=str))
    out["by_label"] = breakdown(labels_a) if labels is not None else {}
    return out


def _probe_scores(
    features: np.ndarray, target: np.ndarray, groups: np.ndarray, seed: int
) -> np.ndarray | None:
    """Out-of-fold probabilities of a logistic-regression source probe, folds by patient."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_sources = int(target.max()) + 1
    folds = min(PROBE_FOLDS, *(len(np.unique(groups[target == s])) for s in range(n_sources)))
    if n_sources < 2 or folds < 2:
        return None
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    proba = np.full((len(target), n_sources), np.nan)
    for train, test in cv.split(features, target, groups):
        if len(np.unique(target[train])) < n_sources:
            continue  # a fold without every source cannot be scored; its rows stay unscored
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        probe.fit(features[train], target[train])
        proba[np.ix_(test, probe.classes_)] = probe.predict_proba(features[test])
    return proba


def source_probe(
    features: np.ndarray,
    *,
    sources: Sequence[str],
    labels: Sequence[str],
    groups: Sequence[str],
    seed: int,
    n_boot: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """How well a linear probe on the model's features tells the data sources apart.

    The probe (standardised features, logistic regression) is cross-validated with
    :class:`~sklearn.model_selection.StratifiedGroupKFold` (up to 5 folds, patients never
    split across folds, seeded). Its verdict AUC uses only images whose label occurs in more
    than one source and compares images of the same label only (:func:`stratified_auc`); with
    more than two sources, the mean one-vs-rest AUC. The CI resamples patients over the
    out-of-fold scores (the probe is not refitted per replicate). ``auc_pooled`` (a probe on
    every image, all labels mixed) is reported for reference: where a label comes from one
    source only it mostly measures the model's own class separation.

    Returns:
        ``status`` (``ok`` or ``inconclusive``), ``auc``, ``n``, ``n_by_source``,
        ``n_smallest_source``, ``labels`` (the label-matched ones), ``n_scored`` (images
        with an out-of-fold score), ``auc_pooled``.
    """
    feats = np.asarray(features, dtype=np.float64)
    src, lab, grp = (np.asarray(v, dtype=str) for v in (sources, labels, groups))
    names = sorted(set(src))
    target = np.searchsorted(names, src)
    matched_labels = sorted(str(x) for x in set(lab) if len(set(src[lab == x])) > 1)
    sel = np.isin(lab, matched_labels)
    by_source = {str(s): int((src[sel] == s).sum()) for s in names}
    out: dict[str, Any] = {
        "status": INCONCLUSIVE,
        "labels": matched_labels,
        "n": int(sel.sum()),
        "n_by_source": by_source,
        "n_smallest_source": min(by_source.values()) if sel.any() else 0,
        "auc": _estimate(None, None),
        "auc_pooled": None,
    }
    pooled = _probe_scores(feats, target, grp, seed) if len(names) > 1 else None
    if pooled is not None:
        ok = ~np.isnan(pooled).any(axis=1)
        auc = _macro_auc(pooled[ok], target[ok], len(names), None)
        out["auc_pooled"] = None if auc is None else round(auc, 4)
    if not sel.any() or len(set(src[sel])) < 2:
        return out
    sub_names = sorted(set(src[sel]))
    sub_target = np.searchsorted(sub_names, src[sel])
    proba = _probe_scores(feats[sel], sub_target, grp[sel], seed)
    if proba is None:
        return out
    ok = ~np.isnan(proba).any(axis=1)
    p, t, s_lab, g = proba[ok], sub_target[ok], lab[sel][ok], grp[sel][ok]
    value = _macro_auc(p, t, len(sub_names), s_lab)
    boot = np.array(
        [
            np.nan if (a := _macro_auc(p[i], t[i], len(sub_names), s_lab[i])) is None else a
            for i in _resamples(g, n_boot, rng)
        ]
    )
    out.update(status="ok", auc=_estimate(value, boot), n_scored=int(ok.sum()))
    return out


def ablation_test(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    groups: Groups,
    *,
    n_classes: int,
    fraction: float,
    n_boot: int,
    rng: np.random.Generator,
    proba_unmasked: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy with the lung field masked (:func:`mask_images`) against chance and unmasked.

    Returns:
        ``mask_fraction``, ``chance`` (1 / n_classes), ``masked`` and ``unmasked``
        (``accuracy`` and ``balanced_accuracy``, each with CI), ``gain`` (masked balanced
        accuracy minus chance), ``n``.
    """
    proba = proba_unmasked if proba_unmasked is not None else predict_proba(model, x)
    masked = predict_proba(model, mask_images(x, fraction))
    chance = 1.0 / n_classes
    m = accuracy_with_ci(y, masked.argmax(axis=1), groups, n_classes, n_boot, rng)
    u = accuracy_with_ci(y, proba.argmax(axis=1), groups, n_classes, n_boot, rng)
    bacc = m["balanced_accuracy"]["value"]
    return {
        "status": "ok" if len(y) else INCONCLUSIVE,
        "n": len(y),
        "mask_fraction": fraction,
        "chance": round(chance, 4),
        "masked": m,
        "unmasked": u,
        "gain": None if bacc is None else round(bacc - chance, 4),
    }
