"""Model runs as rows: a run record of the tracking store read into metrics with intervals.

A record is what :class:`cxrflow.tracking.RunStore` returns for a run: its tags, params and
metrics (``test_<metric>`` with ``_ci_low``/``_ci_high``, ``test_recall_<class>``, latency,
``audit_<figure>``). :func:`row_from_record` turns one into a :class:`ModelRow`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cxrflow import names
from cxrflow.evaluate import SCALAR_METRICS
from cxrflow.external import EXTERNAL_PREFIX
from cxrflow.steps import audit_figures

LATENCY = "latency_ms_per_image"
AUDIT_FIGURES: tuple[str, ...] = tuple(audit_figures({}))
"""The audit's headline numbers, logged to each candidate's run as ``audit_<figure>``."""
_AUDIT_TEST = {
    "control_covid_rate": "controls",
    "source_probe_auc": "source_probe",
    "masked_balanced_accuracy": "ablation",
}
_AUDIT_OUTCOME = re.compile(
    r"\b(controls|source_probe|ablation): (pass|FAIL|inconclusive|not applicable)"
)
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A metric's point estimate and its interval (None where the run logged none)."""

    value: float
    low: float | None = None
    high: float | None = None

    @property
    def has_interval(self) -> bool:
        """Whether both bounds are there."""
        return self.low is not None and self.high is not None

    @property
    def degenerate(self) -> bool:
        """An interval of zero width: every bootstrap resample gave the same value (e.g. all
        of a class's few patients right), which says the uncertainty was not measured, not
        that there is none."""
        return self.has_interval and float(self.high) - float(self.low) <= 1e-12  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelRow:
    """One model run: what it was trained on, with what, and how it scored."""

    run_id: str
    experiment_id: str
    model_key: str
    pipeline_run_id: str
    data_version: str
    manifest_hash: str
    params_hash: str
    dataset: str
    status: str
    start_time: int
    link: str
    metrics: Mapping[str, Estimate]
    """``accuracy``... (:data:`cxrflow.evaluate.SCALAR_METRICS`), ``recall_<class>`` and
    ``latency_ms_per_image`` (no interval)."""
    classes: tuple[str, ...]
    audit: Mapping[str, float]
    audit_passed: bool | None
    audit_reasons: str
    promotion: str
    confidence: float
    params: Mapping[str, str] = field(repr=False)
    external: Mapping[str, Mapping[str, Estimate]] = field(default_factory=dict)
    """Per external source: ``accuracy``, ``f1_macro``... and ``non_covid_called_covid``
    (logged as ``external_<source>_<metric>``, :func:`cxrflow.external.flat_external`), and
    ``n`` (no interval)."""

    @property
    def label(self) -> str:
        """``model_key @ short data version`` (plots, headings)."""
        return f"{self.model_key} @ {short_version(self.data_version)}"

    @property
    def audit_tests(self) -> dict[str, str]:
        """Each audit figure's test outcome as the audit stated it in its reasons (``pass``,
        ``FAIL``, ``inconclusive``, ``not applicable``; see :func:`cxrflow.audit.audit_verdict`)."""
        said = dict(_AUDIT_OUTCOME.findall(self.audit_reasons))
        return {f: said[t] for f, t in _AUDIT_TEST.items() if t in said}


def short_version(version: str) -> str:
    """A data version without its commit (``data-v1@0123abcd`` -> ``data-v1``)."""
    return version.split("@", 1)[0] or version


def version_matches(version: str, wanted: str) -> bool:
    """Whether a run's data version tag is the version a user named.

    ``wanted`` may be the whole tag (``data-v1@0123456789ab``), the tag or branch name before
    the ``@`` (``data-v1``), or a commit prefix of at least 7 hex digits.
    """
    if not wanted:
        return False
    name, _, commit = version.partition("@")
    if wanted in (version, name):
        return True
    bare = commit or (name if re.fullmatch(r"[0-9a-f]{7,40}", name) else "")
    if not re.fullmatch(r"[0-9a-f]{7,40}", wanted) or not bare:
        return False
    return bare.startswith(wanted) or wanted.startswith(bare)


def run_link(tracking_uri: str, experiment_id: str, run_id: str, ui_url: str | None = None) -> str:
    """Where a run is seen: its page in the MLflow UI (``ui_url``, else an ``http(s)``
    tracking URI: ``<ui>/#/experiments/<exp>/runs/<run>``), else its ``runs:/<id>`` URI."""
    base = ui_url or (tracking_uri if tracking_uri.startswith(("http://", "https://")) else "")
    if base:
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"runs:/{run_id}"


def _estimate(metrics: Mapping[str, float], name: str) -> Estimate | None:
    value = metrics.get(f"test_{name}")
    if value is None or not math.isfinite(value):
        return None
    return Estimate(value, metrics.get(f"test_{name}_ci_low"), metrics.get(f"test_{name}_ci_high"))


_EXTERNAL_FIGURES = (*SCALAR_METRICS, "non_covid_called_covid", "n")


def external_estimates(metrics: Mapping[str, float]) -> dict[str, dict[str, Estimate]]:
    """``source -> figure -> Estimate`` from a run's ``external_<source>_<figure>`` metrics."""
    out: dict[str, dict[str, Estimate]] = {}
    for name, value in metrics.items():
        if not name.startswith(f"{EXTERNAL_PREFIX}_") or name.endswith(("_ci_low", "_ci_high")):
            continue
        rest = name[len(EXTERNAL_PREFIX) + 1 :]
        fig = next((f for f in _EXTERNAL_FIGURES if rest.endswith(f"_{f}")), None)
        if fig is None or not math.isfinite(value):
            continue
        source = rest[: -len(fig) - 1]
        out.setdefault(source, {})[fig] = Estimate(
            value, metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
        )
    return out


def _classes(metrics: Mapping[str, float]) -> tuple[str, ...]:
    found = []
    for name in metrics:
        if name.startswith("test_recall_") and not name.endswith(("_ci_low", "_ci_high")):
            cls = name[len("test_recall_") :]
            if cls != "macro":
                found.append(cls)
    return tuple(sorted(found))


def is_evaluated(record: Mapping[str, Any]) -> bool:
    """Whether a model run has test metrics (it went through ``evaluate``)."""
    return "test_accuracy" in (record.get("metrics") or {})


def row_from_record(
    record: Mapping[str, Any], tracking_uri: str, ui_url: str | None = None
) -> ModelRow:
    """A table row from a run record (see :class:`cxrflow.tracking.RunStore`)."""
    tags: Mapping[str, str] = record.get("tags") or {}
    raw: Mapping[str, float] = record.get("metrics") or {}
    params: Mapping[str, str] = record.get("params") or {}
    classes = _classes(raw)
    metrics: dict[str, Estimate] = {}
    for name in (*SCALAR_METRICS, *(f"recall_{c}" for c in classes)):
        est = _estimate(raw, name)
        if est is not None:
            metrics[name] = est
    if f"test_{LATENCY}" in raw:
        metrics[LATENCY] = Estimate(raw[f"test_{LATENCY}"])
    passed = tags.get(names.TAG_AUDIT_PASSED)
    try:
        confidence = float(params.get("evaluate.confidence", DEFAULT_CONFIDENCE))
    except ValueError:
        confidence = DEFAULT_CONFIDENCE
    return ModelRow(
        run_id=str(record["run_id"]),
        experiment_id=str(record.get("experiment_id", "")),
        model_key=tags.get(names.TAG_MODEL_KEY) or str(record.get("run_name") or "?"),
        pipeline_run_id=tags.get(names.TAG_PIPELINE_RUN, ""),
        data_version=tags.get(names.TAG_DATA_VERSION, "unknown"),
        manifest_hash=tags.get(names.TAG_MANIFEST_HASH, ""),
        params_hash=tags.get(names.TAG_PARAMS_HASH, ""),
        dataset=tags.get(names.TAG_DATASET, ""),
        status=str(record.get("status", "")),
        start_time=int(record.get("start_time") or 0),
        link=run_link(tracking_uri, str(record.get("experiment_id", "")), record["run_id"], ui_url),
        metrics=metrics,
        classes=classes,
        audit={f: raw[f"audit_{f}"] for f in AUDIT_FIGURES if f"audit_{f}" in raw},
        audit_passed=None if passed is None else passed == "true",
        audit_reasons=tags.get(names.TAG_AUDIT_REASONS, ""),
        promotion=tags.get(names.TAG_PROMOTION, ""),
        confidence=confidence,
        params=dict(params),
        external=external_estimates(raw),
    )
