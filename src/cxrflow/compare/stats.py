"""The statistics of a comparison: changes between data versions and the params that differ.

The rule for "larger than the uncertainty" (:func:`metric_delta`): a run's bootstrap interval
of confidence ``c`` is read as a normal one, ``se = (ci_high - ci_low) / (2 z)`` with
``z = Phi^-1((1 + c) / 2)``; the change ``d = b - a`` gets the interval ``d -+ z sqrt(se_a^2 +
se_b^2)``, and the change is *beyond the uncertainty* when that interval excludes 0. This treats
the two test splits as independent samples. Two data versions usually share most test
patients, whose errors are positively correlated, so the true uncertainty of the change is
smaller and the rule is conservative: a change it flags is real at about the stated level, and
some real changes are called "within". A paired test on per-image predictions would be
sharper but needs the same test images on both sides, which a data-version change breaks.
Latency and the audit figures have no interval, and an interval of zero width (every bootstrap
resample agreed, as with a class of two patients both right) measures nothing: their change is
shown without a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

from cxrflow.compare.rows import (
    DEFAULT_CONFIDENCE,
    LATENCY,
    Estimate,
    ModelRow,
    short_version,
    version_matches,
)
from cxrflow.evaluate import SCALAR_METRICS

HEADLINE: tuple[str, ...] = ("accuracy", "f1_macro", "roc_auc_macro")
"""Metrics the terminal always shows; the others appear there only when they changed."""
LOWER_IS_BETTER = frozenset({"ece", LATENCY})
MAX_PARAM_ROWS = 60

BEYOND = "beyond uncertainty"
WITHIN = "within uncertainty"
NO_INTERVAL = "no interval"
DEGENERATE = "zero-width interval"
MISSING = "missing"


@dataclass(frozen=True)
class MetricDelta:
    """The change of one metric of one model from data version ``a`` to ``b``."""

    model_key: str
    metric: str
    a: Estimate | None
    b: Estimate | None
    delta: float | None
    low: float | None
    high: float | None
    verdict: str
    """:data:`BEYOND`, :data:`WITHIN`, :data:`NO_INTERVAL`, :data:`DEGENERATE` or
    :data:`MISSING`."""

    @property
    def better(self) -> bool | None:
        """Whether the change is an improvement (None when there is no change)."""
        if not self.delta:
            return None
        return (self.delta < 0) if self.metric in LOWER_IS_BETTER else (self.delta > 0)


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def metric_delta(
    model_key: str,
    metric: str,
    a: Estimate | None,
    b: Estimate | None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> MetricDelta:
    """``b - a`` with an interval and a verdict, by the rule in the module docstring.

    Each side's standard error is its interval's width over ``2 z``; the change is beyond the
    uncertainty when ``|b - a| > z sqrt(se_a^2 + se_b^2)`` (its interval excludes 0). No verdict
    where a side has no interval, or one of zero width (:attr:`Estimate.degenerate`).
    """
    if a is None or b is None:
        return MetricDelta(model_key, metric, a, b, None, None, None, MISSING)
    delta = b.value - a.value
    if not (a.has_interval and b.has_interval):
        return MetricDelta(model_key, metric, a, b, delta, None, None, NO_INTERVAL)
    if a.degenerate or b.degenerate:
        return MetricDelta(model_key, metric, a, b, delta, None, None, DEGENERATE)
    z = _z(confidence)
    se_a = (float(a.high) - float(a.low)) / (2 * z)  # type: ignore[arg-type]
    se_b = (float(b.high) - float(b.low)) / (2 * z)  # type: ignore[arg-type]
    half = z * math.hypot(se_a, se_b)
    beyond = abs(delta) > half + 1e-12
    return MetricDelta(
        model_key, metric, a, b, delta, delta - half, delta + half, BEYOND if beyond else WITHIN
    )


def latest_by_model(rows: Iterable[ModelRow]) -> dict[str, ModelRow]:
    """The most recent run of each model key."""
    out: dict[str, ModelRow] = {}
    for row in sorted(rows, key=lambda r: (r.start_time, r.run_id)):
        out[row.model_key] = row
    return out


def compare_versions(
    rows: Sequence[ModelRow], version_a: str, version_b: str
) -> tuple[list[MetricDelta], dict[str, tuple[ModelRow | None, ModelRow | None]]]:
    """Every metric of every model on data version ``a`` against ``b``.

    The latest run of each model on each version is compared. Returns the changes (by model,
    then metric order: scalar metrics, per-class recall, latency) and the pair of rows behind
    each model key.
    """
    side_a = latest_by_model(r for r in rows if version_matches(r.data_version, version_a))
    side_b = latest_by_model(r for r in rows if version_matches(r.data_version, version_b))
    pairs = {k: (side_a.get(k), side_b.get(k)) for k in sorted({*side_a, *side_b})}
    deltas: list[MetricDelta] = []
    for key, (ra, rb) in pairs.items():
        classes = sorted({*(ra.classes if ra else ()), *(rb.classes if rb else ())})
        names = [*SCALAR_METRICS, *(f"recall_{c}" for c in classes), LATENCY]
        conf = (ra or rb).confidence  # type: ignore[union-attr]
        for name in names:
            a = ra.metrics.get(name) if ra else None
            b = rb.metrics.get(name) if rb else None
            if a is None and b is None:
                continue
            deltas.append(metric_delta(key, name, a, b, conf))
    return deltas, pairs


@dataclass(frozen=True)
class ParamDiff:
    """The parameters that differ between the configurations (params hashes) compared."""

    groups: tuple[str, ...]
    """Column labels: ``<params hash> (<data versions>)``."""
    keys: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]
    """``values[i][j]``: key ``i`` in group ``j`` (``-`` when not logged)."""
    truncated: int = 0


def differing_params(rows: Sequence[ModelRow], limit: int = MAX_PARAM_ROWS) -> ParamDiff:
    """The params whose values differ between the configurations of ``rows``.

    Rows are grouped by their logged params (every run of one pipeline run logs the same, so a
    group is usually one params hash, which labels it); a key missing from a group counts as a
    difference.
    """
    groups: dict[tuple[tuple[str, str], ...], list[ModelRow]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row.params.items())), []).append(row)
    labels = tuple(
        f"{(g[0].params_hash or g[0].run_id)[:8]} "
        f"({', '.join(sorted({short_version(r.data_version) for r in g}))})"
        for g in groups.values()
    )
    params = [g[0].params for g in groups.values()]
    keys = sorted({k for p in params for k in p})
    diff = [k for k in keys if len({p.get(k, "-") for p in params}) > 1]
    values = tuple(tuple(p.get(k, "-") for p in params) for k in diff[:limit])
    return ParamDiff(labels, tuple(diff[:limit]), values, max(0, len(diff) - limit))


@dataclass(frozen=True)
class Comparison:
    """Everything ``cxrflow compare`` shows."""

    description: str
    source: str
    rows: tuple[ModelRow, ...]
    versions: tuple[str, ...]
    """The data versions of the rows, in display order."""
    params: ParamDiff
    version_pair: tuple[str, str] | None = None
    deltas: tuple[MetricDelta, ...] = ()
    pairs: Mapping[str, tuple[ModelRow | None, ModelRow | None]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def classes(self) -> tuple[str, ...]:
        """Every class some row has a recall for."""
        return tuple(sorted({c for r in self.rows for c in r.classes}))


def build_comparison(
    rows: Sequence[ModelRow],
    *,
    description: str,
    source: str,
    version_pair: tuple[str, str] | None = None,
    notes: Sequence[str] = (),
) -> Comparison:
    """Order the rows (data version, model, time) and compute the differences."""
    if not rows:
        raise LookupError(f"no evaluated model runs in {description} at {source}")
    by_time = sorted(rows, key=lambda r: (r.start_time, r.run_id))
    versions: list[str] = []
    for wanted in version_pair or ():
        for r in by_time:
            if version_matches(r.data_version, wanted) and r.data_version not in versions:
                versions.append(r.data_version)
    for r in by_time:
        if r.data_version not in versions:
            versions.append(r.data_version)
    ordered = sorted(
        rows, key=lambda r: (versions.index(r.data_version), r.model_key, r.start_time)
    )
    deltas: list[MetricDelta] = []
    pairs: dict[str, tuple[ModelRow | None, ModelRow | None]] = {}
    if version_pair:
        deltas, pairs = compare_versions(ordered, *version_pair)
    return Comparison(
        description=description,
        source=source,
        rows=tuple(ordered),
        versions=tuple(versions),
        params=differing_params(ordered),
        version_pair=version_pair,
        deltas=tuple(deltas),
        pairs=pairs,
        notes=tuple(notes),
    )
