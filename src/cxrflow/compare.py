"""Comparing models across MLflow runs, pipeline runs and data versions (``cxrflow compare``).

The question after a rollback or a data update: which metrics changed, by how much, and is the
change larger than the uncertainty? This module turns the model runs a pipeline logged to MLflow
(metrics ``test_<metric>`` with ``_ci_low``/``_ci_high``, ``test_recall_<class>``, latency,
``audit_<figure>`` and the audit tags) into one table of models x metrics with their intervals,
the parameters that differ, and, for two data versions, the change of every metric with a
verdict. It writes ``compare.md`` (figures in ``compare_files/``), one self-contained
``compare.html`` (figures inlined, no script, no remote file) and a compact terminal table.

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

Everything but :func:`select_runs` is pure; that one reads through a :class:`RunSource`
(:class:`cxrflow.tracking.RunStore`, or a fake in tests).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Protocol

from cxrflow.evaluate import SCALAR_METRICS
from cxrflow.steps import audit_figures
from cxrflow.tracking import (
    RUN_ID_PATTERN,
    TAG_DATA_VERSION,
    TAG_KIND,
    TAG_MANIFEST_HASH,
    TAG_MODEL_KEY,
    TAG_PIPELINE_RUN,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TAG_PARAMS_HASH = "cxrflow.params_hash"
TAG_AUDIT_PASSED = "cxrflow.audit.passed"
TAG_AUDIT_REASONS = "cxrflow.audit.reasons"
TAG_PROMOTION = "cxrflow.promotion"

LATENCY = "latency_ms_per_image"
HEADLINE: tuple[str, ...] = ("accuracy", "f1_macro", "roc_auc_macro")
"""Metrics the terminal always shows; the others appear there only when they changed."""
LOWER_IS_BETTER = frozenset({"ece", LATENCY})
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
MAX_PARAM_ROWS = 60

BEYOND = "beyond uncertainty"
WITHIN = "within uncertainty"
NO_INTERVAL = "no interval"
DEGENERATE = "zero-width interval"
MISSING = "missing"


class RunSource(Protocol):
    """Read access to a tracking server (see :class:`cxrflow.tracking.RunStore`)."""

    uri: str

    def experiment_id(self, name: str) -> str | None:
        """The id of an experiment, or None."""
        ...

    def get(self, run_id: str) -> dict[str, Any] | None:
        """One run's record, or None."""
        ...

    def search(
        self, experiment_ids: Sequence[str], filter_string: str = "", on_page: Any = None
    ) -> list[dict[str, Any]]:
        """The records of the runs matching a filter, oldest first."""
        ...


# ----------------------------------------------------------------------------------- rows


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
    passed = tags.get(TAG_AUDIT_PASSED)
    try:
        confidence = float(params.get("evaluate.confidence", DEFAULT_CONFIDENCE))
    except ValueError:
        confidence = DEFAULT_CONFIDENCE
    return ModelRow(
        run_id=str(record["run_id"]),
        experiment_id=str(record.get("experiment_id", "")),
        model_key=tags.get(TAG_MODEL_KEY) or str(record.get("run_name") or "?"),
        pipeline_run_id=tags.get(TAG_PIPELINE_RUN, ""),
        data_version=tags.get(TAG_DATA_VERSION, "unknown"),
        manifest_hash=tags.get(TAG_MANIFEST_HASH, ""),
        params_hash=tags.get(TAG_PARAMS_HASH, ""),
        dataset=tags.get("cxrflow.dataset", ""),
        status=str(record.get("status", "")),
        start_time=int(record.get("start_time") or 0),
        link=run_link(tracking_uri, str(record.get("experiment_id", "")), record["run_id"], ui_url),
        metrics=metrics,
        classes=classes,
        audit={f: raw[f"audit_{f}"] for f in AUDIT_FIGURES if f"audit_{f}" in raw},
        audit_passed=None if passed is None else passed == "true",
        audit_reasons=tags.get(TAG_AUDIT_REASONS, ""),
        promotion=tags.get(TAG_PROMOTION, ""),
        confidence=confidence,
        params=dict(params),
    )


# ------------------------------------------------------------------------------ selection


@dataclass(frozen=True)
class Selection:
    """The model runs chosen for a comparison and how they were chosen."""

    records: list[dict[str, Any]]
    description: str
    versions: tuple[str, str] | None
    """The two data versions to compare (as the user named them), or None."""
    notes: tuple[str, ...] = ()


_MODEL_FILTER = f"tags.`{TAG_KIND}` = 'model'"
_SAFE_REF = re.compile(r"^[A-Za-z0-9._:@/+-]+$")


def _check_ref(ref: str, what: str) -> str:
    ref = ref.strip()
    if not _SAFE_REF.fullmatch(ref):
        raise ValueError(f"{what} {ref!r}: letters, digits and . _ : @ / + - only")
    return ref


def select_runs(
    source: RunSource,
    *,
    experiment: str,
    run_refs: Sequence[str] = (),
    data_versions: Sequence[str] = (),
    on_page: Callable[[int], Any] | None = None,
) -> Selection:
    """Find the evaluated model runs to compare.

    Args:
        source: The tracking server.
        experiment: The MLflow experiment searched for pipeline run ids, and for all runs
            when ``run_refs`` is empty.
        run_refs: MLflow run ids (a pipeline's parent run stands for its model runs) or pipeline
            run ids (the ``cxrflow.pipeline_run_id`` tag).
        data_versions: Two data versions (see :func:`version_matches`): keep only the runs on
            them, and compare the second against the first. Without them, a selection spanning
            exactly two data versions compares the later-named (or later-run) one against the
            other.
        on_page: Called with the number of runs of each page read (a progress bar).

    Raises:
        LookupError: No such experiment or run, or nothing evaluated on a named data version.
        ValueError: A malformed id, or not two data versions.
    """
    if data_versions and len(data_versions) != 2:
        raise ValueError(f"--data-versions takes two versions, got {len(data_versions)}")
    wanted = tuple(_check_ref(v, "data version") for v in data_versions)
    exp_id: str | None = None

    def experiment_id() -> str:
        nonlocal exp_id
        if exp_id is None:
            exp_id = source.experiment_id(experiment)
            if exp_id is None:
                raise LookupError(f"no MLflow experiment {experiment!r} at {source.uri}")
        return exp_id

    def model_runs(exp: str, pipeline_run: str | None = None) -> list[dict[str, Any]]:
        flt = _MODEL_FILTER
        if pipeline_run is not None:
            flt += f" and tags.`{TAG_PIPELINE_RUN}` = '{pipeline_run}'"
        return source.search([exp], flt, on_page)

    records: list[dict[str, Any]] = []
    if run_refs:
        for ref in (_check_ref(r, "run") for r in run_refs):
            run = source.get(ref) if re.fullmatch(RUN_ID_PATTERN, ref) else None
            if run is None:
                found = model_runs(experiment_id(), ref)
                if not found:
                    raise LookupError(
                        f"{ref}: no MLflow run of that id at {source.uri}, nor model runs of a "
                        f"pipeline run of that id in experiment {experiment!r}"
                    )
                records += found
                continue
            kind = run["tags"].get(TAG_KIND)
            if kind == "model":
                records.append(run)
            elif kind == "pipeline":
                records += model_runs(run["experiment_id"], run["tags"][TAG_PIPELINE_RUN])
            else:
                raise ValueError(
                    f"{ref}: this MLflow run is neither a cxrflow pipeline run nor a model run"
                )
        description = f"runs {', '.join(run_refs)}"
    else:
        records = model_runs(experiment_id())
        description = f"experiment {experiment!r}"
    unique = list({r["run_id"]: r for r in records}.values())
    evaluated = [r for r in unique if is_evaluated(r)]
    notes = []
    if len(evaluated) < len(unique):
        notes.append(
            f"{len(unique) - len(evaluated)} model run(s) without test metrics (never evaluated, "
            "or failed) left out"
        )
    if wanted:
        present = sorted({r["tags"].get(TAG_DATA_VERSION, "unknown") for r in evaluated})
        for v in wanted:
            if not any(version_matches(p, v) for p in present):
                raise LookupError(
                    f"no evaluated model run on data version {v!r} in {description}; versions "
                    f"there: {', '.join(present) or 'none'}"
                )
        evaluated = [
            r
            for r in evaluated
            if any(version_matches(r["tags"].get(TAG_DATA_VERSION, ""), v) for v in wanted)
        ]
        description += f", data versions {wanted[0]} and {wanted[1]}"
        return Selection(evaluated, description, (wanted[0], wanted[1]), tuple(notes))
    seen: list[str] = []
    for r in evaluated:
        v = r["tags"].get(TAG_DATA_VERSION, "unknown")
        if v not in seen:
            seen.append(v)
    pair = (seen[0], seen[1]) if len(seen) == 2 else None
    return Selection(evaluated, description, pair, tuple(notes))


# ----------------------------------------------------------------------------- comparison


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


# ---------------------------------------------------------------------------- formatting


def fmt_value(value: float | None, metric: str = "", digits: int = 3) -> str:
    """A metric value as text (latency in ms with 2 decimals)."""
    if value is None:
        return "n/a"
    return f"{value:.2f}" if metric == LATENCY else f"{value:.{digits}f}"


def fmt_estimate(est: Estimate | None, metric: str = "", digits: int = 3) -> str:
    """``0.812 [0.700, 0.900]``, or the value alone without an interval."""
    if est is None:
        return "n/a"
    text = fmt_value(est.value, metric, digits)
    if est.has_interval:
        text += f" [{est.low:.{digits}f}, {est.high:.{digits}f}]"
    return text


def fmt_delta(d: MetricDelta, digits: int = 3) -> str:
    """``+0.050 [-0.100, +0.200]`` (the change and its interval)."""
    if d.delta is None:
        return "n/a"
    if d.metric == LATENCY:
        return f"{d.delta:+.2f}"
    text = f"{d.delta:+.{digits}f}"
    if d.low is not None and d.high is not None:
        text += f" [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"
    return text


def fmt_audit(row: ModelRow) -> str:
    """``passed``, ``FAILED`` or ``-`` (not audited)."""
    return "-" if row.audit_passed is None else ("passed" if row.audit_passed else "FAILED")


def rule_text(confidence: float = DEFAULT_CONFIDENCE) -> str:
    """The rule behind the verdicts, in one sentence for the reader."""
    c = round(100 * confidence)
    return (
        f"A change is beyond the uncertainty when its {c} % interval excludes 0. The interval "
        f"is the change +- z sqrt(se_a^2 + se_b^2), with each run's standard error read off its "
        f"{c} % patient-bootstrap interval as width / (2 z), z = {_z(confidence):.2f}: the two "
        "test splits are treated as independent, which is conservative when they share "
        "patients. Latency and the audit figures have no interval; an interval of zero width "
        "(every resample agreed: too few patients) gives no verdict."
    )


def _columns(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=False)]
    line = "  ".join
    out = [line(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out += [line(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    return out


def format_terminal(comp: Comparison, max_rows: int = 40) -> str:
    """The compact terminal view: one line per model run; for two data versions, the change
    of the headline metrics and of every metric that changed beyond the uncertainty."""
    ci = f"{round(100 * comp.rows[0].confidence)}% CI"
    body = [
        [
            r.model_key,
            short_version(r.data_version),
            fmt_estimate(r.metrics.get("accuracy"), digits=2),
            fmt_estimate(r.metrics.get("f1_macro"), digits=2),
            fmt_value(est.value if (est := r.metrics.get("roc_auc_macro")) else None),
            fmt_value(est.value if (est := r.metrics.get(LATENCY)) else None, LATENCY),
            fmt_audit(r),
            r.run_id[:8],
        ]
        for r in comp.rows[:max_rows]
    ]
    lines = [f"cxrflow compare: {comp.description} ({len(comp.rows)} model runs, {comp.source})"]
    lines += _columns(
        ["model", "data", f"accuracy [{ci}]", f"macro F1 [{ci}]", "AUC", "ms/img", "audit", "run"],
        body,
    )
    if len(comp.rows) > max_rows:
        lines.append(f"... and {len(comp.rows) - max_rows} more (see compare.md)")
    if comp.version_pair:
        a, b = comp.version_pair
        shown = [d for d in comp.deltas if d.metric in HEADLINE or d.verdict == BEYOND]
        lines += ["", f"data version {a} -> {b}: change (b - a) [{ci}]"]
        lines += _columns(
            ["model", "metric", a, b, "change", "verdict"],
            [
                [
                    d.model_key,
                    d.metric,
                    fmt_estimate(d.a, d.metric, 2),
                    fmt_estimate(d.b, d.metric, 2),
                    fmt_delta(d, 2),
                    _verdict_word(d),
                ]
                for d in shown
            ],
        )
        n = sum(d.verdict == BEYOND for d in comp.deltas)
        lines.append(
            f"{n} of {sum(d.verdict in (BEYOND, WITHIN) for d in comp.deltas)} metrics with "
            "intervals changed beyond the uncertainty (conservative: see compare.md for the rule)"
        )
    lines += [f"note: {n}" for n in comp.notes]
    return "\n".join(lines) + "\n"


def _verdict_word(d: MetricDelta) -> str:
    if d.verdict == BEYOND:
        return f"{BEYOND} ({'better' if d.better else 'worse'})"
    return d.verdict


# ------------------------------------------------------------------------------ documents


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in body]
    return out


def _md_link(row: ModelRow) -> str:
    if row.link.startswith(("http://", "https://")):
        return f"[{row.run_id[:8]}]({row.link})"
    return f"`{row.link}`"


_MAIN_METRICS: tuple[str, ...] = (*SCALAR_METRICS, LATENCY)
_TITLES = {
    "accuracy": "accuracy",
    "precision_macro": "macro precision",
    "recall_macro": "macro recall",
    "f1_macro": "macro F1",
    "roc_auc_macro": "ROC AUC",
    "ece": "ECE",
    LATENCY: "ms/image",
}


def _title(metric: str) -> str:
    if metric.startswith("recall_") and metric not in _TITLES:
        return f"recall {metric[len('recall_') :]}"
    return _TITLES.get(metric, metric)


@dataclass(frozen=True)
class _Tables:
    """The document's tables as plain cells (Markdown and HTML render the same content)."""

    main: tuple[list[str], list[list[str]]]
    recall: tuple[list[str], list[list[str]]]
    deltas: tuple[list[str], list[list[str]]] | None
    audit: tuple[list[str], list[list[str]]] | None
    params: tuple[list[str], list[list[str]]] | None


def _tables(comp: Comparison) -> _Tables:
    ci = f"{round(100 * comp.rows[0].confidence)}% CI"
    main_head = [
        "model",
        "data version",
        "pipeline run",
        "params",
        *(f"{_title(m)}" + ("" if m == LATENCY else f" [{ci}]") for m in _MAIN_METRICS),
        "audit",
        "MLflow run",
    ]
    main_body = [
        [
            r.model_key,
            r.data_version,
            r.pipeline_run_id,
            r.params_hash[:8],
            *(fmt_estimate(r.metrics.get(m), m) for m in _MAIN_METRICS),
            fmt_audit(r),
            r.run_id,
        ]
        for r in comp.rows
    ]
    recall_head = ["model", "data version", *(f"recall {c} [{ci}]" for c in comp.classes)]
    recall_body = [
        [
            r.model_key,
            short_version(r.data_version),
            *(
                fmt_estimate(r.metrics.get(f"recall_{c}")) if c in r.classes else "-"
                for c in comp.classes
            ),
        ]
        for r in comp.rows
    ]
    deltas = None
    if comp.version_pair:
        a, b = comp.version_pair
        deltas = (
            ["model", "metric", f"{a} [{ci}]", f"{b} [{ci}]", f"change b - a [{ci}]", "verdict"],
            [
                [
                    d.model_key,
                    _title(d.metric),
                    fmt_estimate(d.a, d.metric),
                    fmt_estimate(d.b, d.metric),
                    fmt_delta(d),
                    _verdict_word(d),
                ]
                for d in comp.deltas
            ],
        )
    audited = [r for r in comp.rows if r.audit_passed is not None or r.audit]
    audit = None
    if audited:
        audit = (
            ["model", "data version", "verdict", *AUDIT_FIGURES, "why"],
            [
                [
                    r.model_key,
                    short_version(r.data_version),
                    fmt_audit(r),
                    *(fmt_value(r.audit.get(f)) for f in AUDIT_FIGURES),
                    r.audit_reasons or "-",
                ]
                for r in audited
            ],
        )
    params = None
    if comp.params.keys:
        params = (
            ["param", *comp.params.groups],
            [[k, *v] for k, v in zip(comp.params.keys, comp.params.values, strict=True)],
        )
    return _Tables((main_head, main_body), (recall_head, recall_body), deltas, audit, params)


@dataclass(frozen=True)
class Plot:
    """A written plot: file, title, what it shows."""

    path: Path
    title: str
    caption: str


def render_markdown(comp: Comparison, figures: Sequence[Plot] = (), files_dir: str = "") -> str:
    """``compare.md``: the tables, the rule, and the figures (relative links)."""
    t = _tables(comp)
    lines = [
        "# cxrflow compare",
        "",
        f"- Selection: {comp.description}; {len(comp.rows)} evaluated model runs",
        f"- Tracking server: `{comp.source}`",
        f"- Data versions: {', '.join(f'`{v}`' for v in comp.versions)}",
        *(f"- Note: {n}" for n in comp.notes),
        "",
        "## Models x metrics",
        "",
    ]
    header, body = t.main
    link_col = len(header) - 1
    lines += _md_table(
        header,
        [[*r[:link_col], _md_link(row)] for r, row in zip(body, comp.rows, strict=True)],
    )
    lines += ["", "## Recall per class", "", *_md_table(*t.recall)]
    if t.deltas is not None and comp.version_pair:
        a, b = comp.version_pair
        lines += ["", f"## Data version {a} -> {b}", "", rule_text(comp.rows[0].confidence), ""]
        lines += _md_table(*t.deltas)
    lines += ["", "## Audit verdicts", ""]
    lines += _md_table(*t.audit) if t.audit else ["No audit verdicts in these runs."]
    lines += ["", "## Parameters that differ", ""]
    if t.params:
        lines += _md_table(*t.params)
        if comp.params.truncated:
            lines.append(f"\n... and {comp.params.truncated} more keys.")
    else:
        lines.append("None: every run has the same parameters.")
    if figures:
        lines += ["", "## Figures", ""]
        for f in figures:
            rel = f"{files_dir}/{f.path.name}" if files_dir else f.path.name
            lines += [f"**{f.title}**: {f.caption}", "", f"![{f.title}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1400px;
margin:1.5em auto;padding:0 1em;line-height:1.4;color:#1b1f24}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #d0d7de;padding:3px 7px;text-align:left;vertical-align:top}
td{white-space:nowrap}td.wrap{white-space:normal;min-width:24em}
th{background:#f6f8fa}td.num{font-variant-numeric:tabular-nums}
tr.beyond-better td{background:#dafbe1}tr.beyond-worse td{background:#ffebe9}
span.pass{color:#1a7f37;font-weight:600}span.fail{color:#cf222e;font-weight:600}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;max-width:640px}
.rule{background:#f6f8fa;padding:.5em .8em;border-left:3px solid #8c959f;font-size:.9em}
code{font-size:.9em}
"""


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(
    header: Sequence[str],
    body: Sequence[Sequence[str]],
    *,
    raw_cols: Iterable[int] = (),
    row_classes: Sequence[str] = (),
) -> str:
    raw = set(raw_cols)
    out = ["<table><thead><tr>", *(f"<th>{_h(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for i, r in enumerate(body):
        cls = f' class="{row_classes[i]}"' if i < len(row_classes) and row_classes[i] else ""
        cells = []
        for j, c in enumerate(r):
            kind = "num" if re.match(r"^[-+]?\d", c) else ("wrap" if len(c) > 60 else "")
            attr = f' class="{kind}"' if kind and j not in raw else ""
            cells.append(f"<td{attr}>{c if j in raw else _h(c)}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _html_link(row: ModelRow) -> str:
    if row.link.startswith(("http://", "https://")):
        return f'<a href="{_h(row.link)}" target="_blank" rel="noopener">{_h(row.run_id)}</a>'
    return f'<code title="{_h(row.link)}">{_h(row.run_id)}</code>'


def _html_audit(row: ModelRow) -> str:
    word = fmt_audit(row)
    cls = {"passed": "pass", "FAILED": "fail"}.get(word)
    return f'<span class="{cls}">{word}</span>' if cls else word


def render_html(comp: Comparison, figures: Sequence[Plot] = ()) -> str:
    """``compare.html``: one self-contained page (figures as data URIs, no script)."""
    from cxrflow.htmlpack import data_uri

    t = _tables(comp)
    header, body = t.main
    n = len(header)
    main_rows = [
        [*r[: n - 2], _html_audit(row), _html_link(row)]
        for r, row in zip(body, comp.rows, strict=True)
    ]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<link rel='icon' href='data:,'>",  # no favicon request
        f"<title>cxrflow compare: {_h(comp.description)}</title><style>{_CSS}</style></head>",
        "<body><h1>cxrflow compare</h1><ul>",
        f"<li>Selection: {_h(comp.description)}; {len(comp.rows)} evaluated model runs</li>",
        f"<li>Tracking server: <code>{_h(comp.source)}</code> (each row links to its run)</li>",
        "<li>Data versions: " + ", ".join(f"<code>{_h(v)}</code>" for v in comp.versions) + "</li>",
        *(f"<li>Note: {_h(x)}</li>" for x in comp.notes),
        "</ul><h2 id='models'>Models x metrics</h2>",
        _html_table(header, main_rows, raw_cols=(n - 2, n - 1)),
        "<h2 id='recall'>Recall per class</h2>",
        _html_table(*t.recall),
    ]
    if t.deltas is not None and comp.version_pair:
        a, b = comp.version_pair
        classes = [
            "" if d.verdict != BEYOND else ("beyond-better" if d.better else "beyond-worse")
            for d in comp.deltas
        ]
        parts += [
            f"<h2 id='versions'>Data version {_h(a)} &rarr; {_h(b)}</h2>",
            f"<p class='rule'>{_h(rule_text(comp.rows[0].confidence))}</p>",
            _html_table(*t.deltas, row_classes=classes),
        ]
    parts.append("<h2 id='audit'>Audit verdicts</h2>")
    parts.append(_html_table(*t.audit) if t.audit else "<p>No audit verdicts in these runs.</p>")
    parts.append("<h2 id='params'>Parameters that differ</h2>")
    if t.params:
        parts.append(_html_table(*t.params))
        if comp.params.truncated:
            parts.append(f"<p>... and {comp.params.truncated} more keys.</p>")
    else:
        parts.append("<p>None: every run has the same parameters.</p>")
    if figures:
        parts.append("<h2 id='figures'>Figures</h2>")
        for f in figures:
            parts.append(
                f"<figure><img src='{data_uri(f.path)}' alt='{_h(f.title)}'>"
                f"<figcaption><b>{_h(f.title)}</b>: {_h(f.caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _yerr(ests: Sequence[Estimate | None]) -> list[list[float]]:
    lo = [max(0.0, e.value - e.low) if e and e.low is not None else 0.0 for e in ests]
    hi = [max(0.0, e.high - e.value) if e and e.high is not None else 0.0 for e in ests]
    return [lo, hi]


def _latest_per_version(comp: Comparison) -> dict[tuple[str, str], ModelRow]:
    out: dict[tuple[str, str], ModelRow] = {}
    for r in sorted(comp.rows, key=lambda r: (r.start_time, r.run_id)):
        out[r.model_key, r.data_version] = r
    return out


def _version_labels(versions: Sequence[str]) -> list[str]:
    short = [short_version(v) for v in versions]
    return short if len(set(short)) == len(short) else list(versions)


def plot_metric_by_version(
    comp: Comparison, path: Path, metrics: Sequence[str] = ("accuracy", "f1_macro")
) -> Path:
    """One panel per metric: each model's value on each data version, with its interval."""
    latest = _latest_per_version(comp)
    models = sorted({r.model_key for r in comp.rows})
    xs = list(range(len(comp.versions)))
    fig = _figure(4.2 * len(metrics), 3.6)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for j, key in enumerate(models):
            offset = (j - (len(models) - 1) / 2) * 0.06
            ests: list[tuple[int, Estimate]] = []
            for x, version in zip(xs, comp.versions, strict=True):
                row = latest.get((key, version))
                est = row.metrics.get(metric) if row is not None else None
                if est is not None:
                    ests.append((x, est))
            if not ests:
                continue
            ax.errorbar(
                [x + offset for x, _ in ests],
                [e.value for _, e in ests],
                yerr=_yerr([e for _, e in ests]),
                marker="o",
                capsize=3,
                label=key,
            )
        ax.set_xticks(xs, _version_labels(comp.versions), rotation=15)
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_xlabel("data version")
        ax.set_ylabel(_title(metric))
        ax.set_title(f"{_title(metric)} by data version", fontsize=10)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    return _save(fig, path)


def plot_per_class_recall(comp: Comparison, path: Path) -> Path:
    """One panel per model: recall of each class on each data version, with its interval."""
    latest = _latest_per_version(comp)
    models = sorted({r.model_key for r in comp.rows})
    cols = min(len(models), 3)
    rows_n = math.ceil(len(models) / cols)
    fig = _figure(4.3 * cols, 3.3 * rows_n)
    labels = _version_labels(comp.versions)
    for i, key in enumerate(models):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        runs = [(lab, latest.get((key, v))) for lab, v in zip(labels, comp.versions, strict=True)]
        runs = [(lab, r) for lab, r in runs if r is not None]
        classes = sorted({c for _, r in runs if r is not None for c in r.classes})
        width = 0.8 / max(len(runs), 1)
        for j, (lab, r) in enumerate(runs):
            ests = [r.metrics.get(f"recall_{c}") for c in classes]  # type: ignore[union-attr]
            ax.bar(
                [k + (j - (len(runs) - 1) / 2) * width for k in range(len(classes))],
                [e.value if e else 0.0 for e in ests],
                width,
                yerr=_yerr(ests),
                capsize=3,
                label=lab,
            )
        ax.set_xticks(range(len(classes)), classes)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("recall")
        ax.set_title(key, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_latency_accuracy(comp: Comparison, path: Path) -> Path:
    """Latency (ms per image, batch 1) against accuracy with its interval, one point per run."""
    fig = _figure(5.6, 4.0)
    ax = fig.add_subplot()
    labels = _version_labels(comp.versions)
    for lab, version in zip(labels, comp.versions, strict=True):
        pts = [
            r
            for r in comp.rows
            if r.data_version == version and LATENCY in r.metrics and "accuracy" in r.metrics
        ]
        if not pts:
            continue
        accs = [r.metrics["accuracy"] for r in pts]
        ax.errorbar(
            [r.metrics[LATENCY].value for r in pts],
            [e.value for e in accs],
            yerr=_yerr(accs),
            fmt="o",
            capsize=3,
            label=lab,
        )
        for r in pts:
            ax.annotate(
                r.model_key,
                (r.metrics[LATENCY].value, r.metrics["accuracy"].value),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    ax.set_xlabel("latency, ms per image (batch 1)")
    ax.set_ylabel("accuracy")
    ax.set_title("latency vs accuracy", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="data version", title_fontsize=8)
    return _save(fig, path)


def _threshold(row: ModelRow, figure: str) -> float | None:
    p = row.params
    try:
        if figure == "control_covid_rate":
            return float(p["audit.max_control_covid_rate"])
        if figure == "source_probe_auc":
            return float(p["audit.max_source_probe_auc"])
        if figure == "masked_balanced_accuracy":
            chance = 1.0 / max(len(row.classes), 1)
            return chance + float(p["audit.max_masked_accuracy_gain"])
    except (KeyError, ValueError):
        return None
    return None


def plot_audit(comp: Comparison, path: Path) -> Path | None:
    """The audit figures of each audited run, coloured by its verdict, with the thresholds
    from its params (dashed); None when no run was audited."""
    audited = [r for r in comp.rows if r.audit]
    if not audited:
        return None
    fig = _figure(4.0 * len(AUDIT_FIGURES), 1.2 + 0.4 * len(audited))
    ys = list(range(len(audited)))
    for i, figure in enumerate(AUDIT_FIGURES):
        ax = fig.add_subplot(1, len(AUDIT_FIGURES), i + 1)
        values = [r.audit.get(figure) for r in audited]
        limits = [_threshold(r, figure) for r in audited]
        outcomes = [r.audit_tests.get(figure, "") for r in audited]
        colors = [{"pass": "#2da44e", "FAIL": "#cf222e"}.get(o, "#8c959f") for o in outcomes]
        ax.barh(ys, [0.0 if v is None else v for v in values], color=colors)
        for y, limit in zip(ys, limits, strict=True):
            if limit is not None:
                ax.plot([limit, limit], [y - 0.4, y + 0.4], "k--", lw=1)
        labels = [f"{r.label} ({fmt_audit(r)})" for r in audited]
        ax.set_yticks(ys, labels if i == 0 else [""] * len(ys))
        ax.set_xlim(0, 1.0)
        ax.invert_yaxis()
        ax.set_title(figure.replace("_", " "), fontsize=9)
    fig.suptitle(
        "audit tests: green pass, red FAIL, grey inconclusive or not applicable; dashed: threshold",
        fontsize=9,
    )
    return _save(fig, path)


def write_figures(comp: Comparison, files_dir: Path) -> list[Plot]:
    """The four plots as PNG files in ``files_dir`` (audit only where a run was audited)."""
    files_dir.mkdir(parents=True, exist_ok=True)
    figs = [
        Plot(
            plot_metric_by_version(comp, files_dir / "metric_by_version.png"),
            "metric by data version",
            "accuracy and macro F1 of the latest run of each model on each data version, with "
            "the patient-bootstrap interval",
        ),
        Plot(
            plot_per_class_recall(comp, files_dir / "per_class_recall.png"),
            "per-class recall",
            "recall of every class by model and data version, with the interval",
        ),
        Plot(
            plot_latency_accuracy(comp, files_dir / "latency_vs_accuracy.png"),
            "latency vs accuracy",
            "mean latency per image at batch 1 on the evaluation hardware against accuracy, "
            "one point per run",
        ),
    ]
    audit = plot_audit(comp, files_dir / "audit_verdicts.png")
    if audit is not None:
        figs.append(
            Plot(
                audit,
                "audit verdicts",
                "controls called COVID-19, source-probe AUC and masked balanced accuracy of "
                "every audited run against its thresholds, coloured by the outcome of that test, "
                "with the run's verdict (a FAIL fails the audit; an inconclusive test, e.g. too "
                "few controls, does not)",
            )
        )
    return figs


def write_comparison(comp: Comparison, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``compare.md`` (+ ``compare_files/``) and the self-contained ``compare.html``."""
    out = Path(out_dir)
    figures = write_figures(comp, out / "compare_files")
    md = out / "compare.md"
    md.write_text(render_markdown(comp, figures, "compare_files"), encoding="utf-8")
    page = out / "compare.html"
    page.write_text(render_html(comp, figures), encoding="utf-8")
    return md, page
