"""Scoring a model on external sources: another site's images it never trained on.

A source with role ``external`` (:mod:`cxrflow.data.sources.roles`) lands in the manifest as
the ``external`` cohort: never in a dataset, never split. Every model is scored on every
external source separately, on the images whose label is one of the model's classes (the
others are counted, not hidden), with the same patient-level bootstrap intervals as the test
split (:func:`cxrflow.stats.metric_summary`), plus the share of the source's non-COVID images
the model calls COVID-19 (the audit's control question, asked of another hospital).

Pure functions over arrays and the manifest; the evaluate step loads images and models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrflow.data.sources import EXTERNAL
from cxrflow.evaluate import SCALAR_METRICS

if TYPE_CHECKING:
    import pandas as pd

    from cxrflow.config import EvaluateParams

COVID = "covid"
EXTERNAL_PREFIX = "external"
"""MLflow metric prefix: ``external_<source>_<metric>``."""


@dataclass(frozen=True)
class ExternalRows:
    """One external source's rows a model can be scored on, and what it cannot score."""

    source: str
    rows: pd.DataFrame
    skipped: dict[str, int]  # label outside the model's classes -> images


def external_sources(manifest: pd.DataFrame) -> list[str]:
    """The sources of the manifest's ``external`` rows, sorted."""
    if "cohort" not in manifest.columns:
        return []
    return sorted(manifest.loc[manifest["cohort"] == EXTERNAL, "source"].unique())


def external_rows(manifest: pd.DataFrame, classes: Sequence[str]) -> list[ExternalRows]:
    """Per external source, its rows labelled with one of ``classes`` (sorted by image id)
    and the count of the other rows by label."""
    out = []
    for source in external_sources(manifest):
        rows = manifest[(manifest["cohort"] == EXTERNAL) & (manifest["source"] == source)]
        inside = rows["label"].isin(list(classes)).to_numpy()
        skipped = rows.loc[~inside, "label"].value_counts().sort_index()
        out.append(
            ExternalRows(
                source=source,
                rows=rows[inside].sort_values("image_id").reset_index(drop=True),
                skipped={str(k): int(v) for k, v in skipped.items()},
            )
        )
    return out


def external_arrays(
    dataset_dir: str | Path, ext: ExternalRows, classes: Sequence[str], image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (preprocessed as for training), class indices and patient ids of ``ext``'s
    rows, in their order: what a model is scored on (evaluate) and compared on (register)."""
    from cxrflow.audit import load_images

    x = load_images(dataset_dir, ext.rows, image_size)
    y = np.asarray([list(classes).index(c) for c in ext.rows["label"]], dtype=int)
    return x, y, ext.rows["patient_id"].astype(str).to_numpy()


def score_external(
    proba: np.ndarray,
    y: np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    classes: Sequence[str],
    params: EvaluateParams,
) -> dict[str, Any]:
    """Figures of one model on one external source (see the module doc).

    Args:
        proba: The model's class probabilities, ``(n, k)``.
        y: True class indices, ``(n,)``.
        groups: Patient id per image (the bootstrap unit).
        classes: The model's classes, in output order.
        params: Bootstrap size, confidence, seed and calibration bins.

    Returns:
        ``n``, ``n_patients``; each of :data:`cxrflow.evaluate.SCALAR_METRICS` as a float (None if undefined) with
        ``<name>_ci``; ``confusion_matrix``; ``predictions``; ``non_covid_called_covid``
        (``{"value", "ci_low", "ci_high", "n"}``, value None without non-COVID images or
        without a COVID-19 class). Empty input gives ``n`` 0 and nothing else.
    """
    from cxrflow.audit.estimates import rate_with_ci
    from cxrflow.evaluate import summarize

    y = np.asarray(y, dtype=int)
    groups = np.asarray(groups)
    if len(y) == 0:
        return {"n": 0, "n_patients": 0}
    summary = summarize(y, proba, classes, groups, params)
    pred = np.asarray(proba).argmax(axis=1)
    out: dict[str, Any] = {
        "n": len(y),
        "n_patients": len(set(groups.tolist())),
        "confusion_matrix": summary["confusion_matrix"],
        "predictions": pred.astype(int).tolist(),
    }
    for name in SCALAR_METRICS:
        value = summary.get(name) or {}
        out[name] = value.get("value")
        out[f"{name}_ci"] = value
    covid = list(classes).index(COVID) if COVID in classes else None
    others = y != covid if covid is not None else np.zeros(len(y), dtype=bool)
    rate: dict[str, Any] = {"value": None, "ci_low": None, "ci_high": None}
    if covid is not None and others.any():
        rng = np.random.default_rng(params.seed)
        rate = dict(
            rate_with_ci(pred[others] == covid, groups[others], params.bootstrap_samples, rng)
        )
    out["non_covid_called_covid"] = {**rate, "n": int(others.sum())}
    return out


def flat_external(external: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """MLflow metrics of a model's external figures: ``external_<source>_<name>`` with
    ``_ci_low`` / ``_ci_high``, and ``external_<source>_n``. Undefined values are left out."""
    out: dict[str, float] = {}
    for source, fig in external.items():
        base = f"{EXTERNAL_PREFIX}_{source}"
        out[f"{base}_n"] = float(fig.get("n", 0))
        for name in (*SCALAR_METRICS, "non_covid_called_covid"):
            ci = fig.get(f"{name}_ci") if name != "non_covid_called_covid" else fig.get(name)
            ci = ci or {}
            for suffix, key in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                if ci.get(key) is not None:
                    out[f"{base}_{name}{suffix}"] = float(ci[key])
    return out
