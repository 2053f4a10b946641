"""The shortcut audit: does a candidate look at the lungs, or at where the film came from?

In the paper's Dataset_1 every normal and bacterial image is a child's (Kermany) and every
COVID-19 image an adult's (Cohen), so a model can reach the paper's accuracy by telling
children from adults. Measured on the real sample, a small CNN does exactly that: it calls 30
of 32 adult bacterial pneumonias and 10 of 14 adult "No Finding" X-rays of Cohen's collection
COVID-19. Test accuracy cannot show this; three tests can, each reported with a 95 % interval
from a patient-level bootstrap (:func:`cxrflow.stats.patient_bootstrap_indices`, seeded):

1. **Same-source controls** (:func:`control_test`). Cohen's collection also holds adult
   non-COVID frontal X-rays; ingest keeps them as the ``control`` cohort, never in a dataset
   (:func:`cxrflow.data.split.select_controls`). The share the model calls COVID-19 is
   reported overall and per finding; the verdict uses the controls whose label is one of the
   model's classes (``normal``, ``bacterial`` for Dataset_1): a viral pneumonia has no class
   of its own there and resembles COVID-19, so calling it COVID-19 proves nothing.
2. **Source probe** (:func:`source_probe`). A logistic regression, cross-validated by patient
   groups, predicts the data source from the model's penultimate features (the input of the
   layer named ``classifier``). It is trained and scored on images whose label occurs in more
   than one source (the test split's Kermany normal / bacterial images and Cohen's controls of
   those labels), and its AUC compares images of the same label only: on the test split alone
   the source *is* the label (every COVID-19 image is Cohen's), so any good model would look
   guilty. High AUC: the features encode where an image came from beyond what it shows.
3. **Lung-field ablation** (:func:`ablation_test`). The centred box of side
   ``mask_fraction`` x image side (:func:`lung_mask`) is set to each image's mean grey, so
   only the borders remain (shoulders, corners, burned-in markers and labels); a model that
   still beats chance there reads something other than the lungs. Scored by balanced accuracy
   (mean per-class recall), whose chance level is exactly ``1 / n_classes`` whatever the class
   mix; plain accuracy is reported too. :func:`plot_mask` draws the mask for the report.

:func:`audit_verdict` turns the numbers into a decision with the thresholds of
:class:`~cxrflow.config.AuditParams` (point estimates against thresholds; the CIs are
reported in each reason). Too few controls make a test *inconclusive*, not failed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from cxrflow.config import AuditParams
from cxrflow.models.base import CLASSIFIER_LAYER

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
COVID = "covid"
"""The class a control must not be called."""
PROBE_FOLDS = 5
PREDICT_BATCH = 64

INCONCLUSIVE, NOT_APPLICABLE = "inconclusive", "not_applicable"  # values of a test's status

Groups: TypeAlias = Sequence[str] | np.ndarray
"""Patient ids, one per image: the resampling unit of every bootstrap."""


# ------------------------------------------------------------------------------ image inputs


def load_images(dataset_dir: str | Path, table: pd.DataFrame, image_size: int) -> np.ndarray:
    """Every image of ``table`` (its ``path`` column, relative to ``dataset_dir``), in order.

    Returns:
        ``(n, image_size, image_size, 1)`` uint8, preprocessed as for training.
    """
    from cxrflow.datasets import preprocess_image

    root = Path(dataset_dir)
    x = np.zeros((len(table), image_size, image_size, 1), dtype=np.uint8)
    for i, rel in enumerate(table["path"]):
        x[i] = preprocess_image(root / rel, image_size)
    return x


def control_arrays(
    dataset_dir: str | Path,
    manifest: pd.DataFrame,
    image_size: int,
    split_table: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The control keyword arguments of :func:`audit_model`, from a dataset's manifest.

    Args:
        dataset_dir: The dataset directory (images are relative to it).
        manifest: Its manifest.
        image_size: The model's input side.
        split_table: The model's split table: controls of patients in its ``train`` or ``val``
            rows are left out (:func:`cxrflow.data.split.select_controls`).

    Returns:
        ``x_controls``, ``findings_controls``, ``groups_controls``, ``labels_controls`` and
        ``sources_controls`` of the selected control rows.
    """
    from cxrflow.data.split import select_controls

    seen: list[str] = []
    if split_table is not None:
        seen = split_table.loc[split_table["split"] != "test", "patient_id"].tolist()
    rows = select_controls(manifest, seen)
    return {
        "x_controls": load_images(dataset_dir, rows, image_size),
        "findings_controls": rows["finding"].tolist(),
        "groups_controls": rows["patient_id"].tolist(),
        "labels_controls": rows["label"].tolist(),
        "sources_controls": rows["source"].tolist(),
    }


def lung_mask(image_size: int, fraction: float) -> np.ndarray:
    """The lung-field mask: True inside the centred square of side ``fraction`` x image side.

    The box has ``round(fraction * image_size)`` pixels a side (at least 1), centred (an odd
    leftover pixel goes to the bottom/right border). At the default 0.7 a 224-px image keeps
    a 34-px border all round: corners, shoulders, neck, side markers and journal labels stay
    visible; the lung fields, heart and mediastinum do not.

    Returns:
        ``(image_size, image_size)`` bool array, True where the ablation masks.

    Raises:
        ValueError: ``fraction`` outside (0, 1) or ``image_size`` < 1.
    """
    if not 0.0 < fraction < 1.0 or image_size < 1:
        raise ValueError(f"lung_mask: need 0 < fraction < 1 and image_size >= 1, got {fraction}")
    side = min(image_size, max(1, round(fraction * image_size)))
    start = (image_size - side) // 2
    mask = np.zeros((image_size, image_size), dtype=bool)
    mask[start : start + side, start : start + side] = True
    return mask


def mask_images(x: np.ndarray, fraction: float) -> np.ndarray:
    """A copy of ``x`` (``(n, s, s)`` or ``(n, s, s, 1)``) with each image's :func:`lung_mask`
    box set to that image's mean grey (of the whole, unmasked image, rounded)."""
    if x.ndim not in (3, 4) or x.shape[1] != x.shape[2]:
        raise ValueError(f"mask_images: expected (n, s, s[, 1]) images, got shape {x.shape}")
    mask = lung_mask(x.shape[1], fraction)
    out = x.copy()
    means = x.reshape(len(x), -1).mean(axis=1)
    for i, m in enumerate(means):
        out[i][mask] = np.asarray(np.rint(m), dtype=x.dtype)
    return out


def plot_mask(image: np.ndarray, fraction: float, path: str | Path) -> Path:
    """Save a PNG for the report: ``image`` with the masked box outlined, and as masked.

    Args:
        image: One grey image, ``(s, s)`` or ``(s, s, 1)``.
        fraction: ``AuditParams.mask_fraction``.
        path: Where to write the PNG (parents are created).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    img = np.asarray(image)
    img = img[..., 0] if img.ndim == 3 else img
    s = img.shape[0]
    mask = lung_mask(s, fraction)
    rows = np.flatnonzero(mask.any(axis=1))
    masked = mask_images(img[None], fraction)[0]
    fig = Figure(figsize=(6.4, 3.4), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, shown, title in (
        (axes[0], img, "input: masked box outlined"),
        (axes[1], masked, f"lung field masked ({fraction:.0%} of the side)"),
    ):
        ax.imshow(shown, cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    lo, side = rows[0] - 0.5, len(rows)
    axes[0].add_patch(Rectangle((lo, lo), side, side, fill=False, edgecolor="red", linewidth=1.5))
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


# -------------------------------------------------------------------------- model outputs


def predict_proba(model: Any, x: np.ndarray) -> np.ndarray:
    """Softmax outputs of ``model`` for uint8 images ``x`` (``(n, k)`` float)."""
    if len(x) == 0:
        return np.zeros((0, int(model.output_shape[-1])), dtype=np.float32)
    return np.asarray(model.predict(x.astype(np.float32), batch_size=PREDICT_BATCH, verbose=0))


def penultimate_features(model: Any, x: np.ndarray) -> np.ndarray:
    """The input of the model's ``classifier`` layer for images ``x`` (``(n, d)`` float)."""
    import keras

    head = model.get_layer(CLASSIFIER_LAYER)
    extractor = keras.Model(model.inputs, head.input)
    if len(x) == 0:
        return np.zeros((0, int(head.input.shape[-1])), dtype=np.float32)
    feats = extractor.predict(x.astype(np.float32), batch_size=PREDICT_BATCH, verbose=0)
    return np.asarray(feats).reshape(len(x), -1)


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


# ------------------------------------------------------------------------------- the audit


def audit_model(
    model: Any,
    *,
    x_test: np.ndarray,
    y_test: np.ndarray,
    groups_test: Sequence[str],
    sources_test: Sequence[str],
    x_controls: np.ndarray,
    findings_controls: Sequence[str],
    groups_controls: Sequence[str],
    classes: Sequence[str],
    params: AuditParams,
    seed: int,
    n_boot: int = 1000,
    labels_controls: Sequence[str] | None = None,
    sources_controls: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run the three shortcut tests on one trained model (see the module docstring).

    Args:
        model: A trained Keras model with a layer named ``classifier``.
        x_test: The model's test split, uint8 ``(n, s, s, 1)``.
        y_test: Class indices of ``x_test``.
        groups_test: Patient ids of ``x_test`` (bootstrap and probe-fold groups).
        sources_test: Source names of ``x_test``.
        x_controls: The control images (:func:`control_arrays`), same shape rules.
        findings_controls: Their raw findings.
        groups_controls: Their patient ids.
        classes: The model's classes, in output order.
        params: Thresholds and the mask size.
        seed: Seeds the bootstrap and the probe's folds.
        n_boot: Bootstrap replicates per interval.
        labels_controls: The controls' labels (the manifest's ``label``); the control test's
            verdict counts only controls with a label among ``classes``, and the probe pairs
            images by label. None: every control counts, and the probe uses ``unknown``.
        sources_controls: The controls' sources; None: each control is taken to come from a
            source of its own, ``control`` (the controls are Cohen's, so pass ``cohen``).

    Returns:
        JSON-able ``{"controls", "source_probe", "ablation", "passed", "reasons", "n_boot",
        "seed", "confidence"}``.
    """
    rng = np.random.default_rng(seed)
    classes = list(classes)
    n_ctrl = len(x_controls)
    lab_ctrl = list(labels_controls) if labels_controls is not None else ["unknown"] * n_ctrl
    src_ctrl = list(sources_controls) if sources_controls is not None else ["control"] * n_ctrl
    proba_test = predict_proba(model, x_test)
    proba_ctrl = predict_proba(model, x_controls)
    controls = control_test(
        proba_ctrl,
        findings=findings_controls,
        groups=groups_controls,
        labels=labels_controls,
        classes=classes,
        n_boot=n_boot,
        rng=rng,
    )
    features = penultimate_features(model, np.concatenate([x_test, x_controls]))
    probe = source_probe(
        features,
        sources=[*sources_test, *src_ctrl],
        labels=[*(classes[int(i)] for i in y_test), *lab_ctrl],
        groups=[*groups_test, *groups_controls],
        seed=seed,
        n_boot=n_boot,
        rng=rng,
    )
    ablation = ablation_test(
        model,
        x_test,
        np.asarray(y_test),
        groups_test,
        n_classes=len(classes),
        fraction=params.mask_fraction,
        n_boot=n_boot,
        rng=rng,
        proba_unmasked=proba_test,
    )
    result: dict[str, Any] = {
        "controls": controls,
        "source_probe": probe,
        "ablation": ablation,
        "classes": classes,
        "seed": seed,
        "n_boot": n_boot,
        "confidence": CONFIDENCE,
    }
    passed, reasons = audit_verdict(result, params)
    result.update(passed=passed, reasons=reasons)
    for line in reasons:
        log.info("audit: %s", line)
    return result


def _ci(est: dict[str, Any], pct: bool) -> str:
    def f(v: float) -> str:
        return f"{v:.1%}" if pct else f"{v:.3f}"

    if est.get("ci_low") is None:
        return "no CI"
    return f"{CONFIDENCE:.0%} CI {f(est['ci_low'])}-{f(est['ci_high'])}"


def audit_verdict(result: dict[str, Any], params: AuditParams) -> tuple[bool, list[str]]:
    """Pass or fail an audit result against ``params``; one reason line per test.

    Each test is ``pass``, ``FAIL``, ``inconclusive`` or ``not applicable``, judged on its point
    estimate (the line gives the CI too):

    - controls: fail when the COVID-19 rate of the controls with a label among the model's
      classes exceeds ``max_control_covid_rate``; inconclusive with fewer than
      ``min_controls`` such images; not applicable to a model without a ``covid`` class;
    - source probe: fail when the label-matched AUC exceeds ``max_source_probe_auc``;
      inconclusive when it could not be computed or the smaller source has fewer than
      ``min_controls`` images;
    - ablation: fail when masked balanced accuracy exceeds chance + ``max_masked_accuracy_gain``.

    Only a failed test fails the audit; whether that blocks promotion is the caller's
    (``params.block_promotion``).

    Returns:
        ``(passed, reasons)``.
    """
    reasons: list[str] = []
    failed = False

    c = result["controls"]
    rate = c.get("covid_rate") or {}
    if c.get("status") == NOT_APPLICABLE:
        reasons.append("controls: not applicable: the model has no covid class")
    elif c["n"] < params.min_controls or rate.get("value") is None:
        reasons.append(
            f"controls: inconclusive: {c['n']} control images with a label among the model's "
            f"classes, fewer than min_controls {params.min_controls}"
        )
    else:
        bad = rate["value"] > params.max_control_covid_rate
        failed |= bad
        reasons.append(
            f"controls: {'FAIL' if bad else 'pass'}: {rate['value']:.1%} of {c['n']} adult "
            f"non-COVID controls ({', '.join(c.get('basis_labels') or ['all'])}) called COVID-19 "
            f"({_ci(rate, True)}); {'above' if bad else 'within'} max_control_covid_rate "
            f"{params.max_control_covid_rate:.1%}"
        )

    p = result["source_probe"]
    auc = p.get("auc") or {}
    if auc.get("value") is None or p.get("n_smallest_source", 0) < params.min_controls:
        reasons.append(
            f"source_probe: inconclusive: {p.get('n_smallest_source', 0)} images in the smaller "
            f"source of the label-matched set (labels {p.get('labels')}), need min_controls "
            f"{params.min_controls} and two patients per source"
        )
    else:
        bad = auc["value"] > params.max_source_probe_auc
        failed |= bad
        reasons.append(
            f"source_probe: {'FAIL' if bad else 'pass'}: AUC {auc['value']:.3f} telling sources "
            f"apart from the model's features within labels {p['labels']} ({_ci(auc, False)}); "
            f"{'above' if bad else 'within'} max_source_probe_auc "
            f"{params.max_source_probe_auc:.3f}"
        )

    a = result["ablation"]
    bacc = (a.get("masked") or {}).get("balanced_accuracy") or {}
    if bacc.get("value") is None:
        reasons.append("ablation: inconclusive: no test images")
    else:
        limit = a["chance"] + params.max_masked_accuracy_gain
        bad = bacc["value"] > limit
        failed |= bad
        unmasked = a["unmasked"]["balanced_accuracy"]["value"]
        reasons.append(
            f"ablation: {'FAIL' if bad else 'pass'}: balanced accuracy {bacc['value']:.1%} with "
            f"the central {a['mask_fraction']:.0%} box masked ({_ci(bacc, True)}; unmasked "
            f"{unmasked:.1%}, chance {a['chance']:.1%}); {'above' if bad else 'within'} chance + "
            f"max_masked_accuracy_gain = {limit:.1%}"
        )
    return not failed, reasons
