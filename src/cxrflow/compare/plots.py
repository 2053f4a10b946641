"""The comparison's figures, drawn with matplotlib (imported when a figure is drawn)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrflow.compare.rendering import _title, fmt_audit
from cxrflow.compare.rows import AUDIT_FIGURES, LATENCY, Estimate, ModelRow, short_version
from cxrflow.compare.stats import Comparison

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Plot:
    """A written plot: file, title, what it shows."""

    path: Path
    title: str
    caption: str


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
