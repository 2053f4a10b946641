"""One model's audit and its decision: :func:`audit_model` runs the three tests and collects
their results; :func:`audit_verdict` turns the numbers into pass / fail with the thresholds
of :class:`~cxrflow.config.AuditParams` (too few controls: inconclusive, not failed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrflow.audit.checks import NOT_APPLICABLE, ablation_test, control_test, source_probe
from cxrflow.audit.estimates import CONFIDENCE
from cxrflow.audit.images import penultimate_features, predict_proba
from cxrflow.config import AuditParams

log = logging.getLogger(__name__)


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
