"""A comparison as text: the terminal table, ``compare.md`` and the page made from it.

The tables are built once as plain cells (:func:`_tables`) and formatted by
:func:`cxrflow.tables.format_table`; ``compare.html`` is ``compare.md`` rendered by
:func:`cxrflow.htmlpack.render_page`, so that the two files cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrflow.compare.rows import (
    AUDIT_FIGURES,
    DEFAULT_CONFIDENCE,
    LATENCY,
    Estimate,
    ModelRow,
    short_version,
)
from cxrflow.compare.stats import BEYOND, HEADLINE, WITHIN, Comparison, MetricDelta, _z
from cxrflow.evaluate import SCALAR_METRICS
from cxrflow.tables import format_table

if TYPE_CHECKING:
    from cxrflow.compare.plots import Plot


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
    lines.append(
        format_table(
            [
                *("model", "data", f"accuracy [{ci}]", f"macro F1 [{ci}]"),
                *("AUC", "ms/img", "audit", "run"),
            ],
            body,
            "plain",
        )
    )
    if len(comp.rows) > max_rows:
        lines.append(f"... and {len(comp.rows) - max_rows} more (see compare.md)")
    if comp.version_pair:
        a, b = comp.version_pair
        shown = [d for d in comp.deltas if d.metric in HEADLINE or d.verdict == BEYOND]
        lines += ["", f"data version {a} -> {b}: change (b - a) [{ci}]"]
        lines.append(
            format_table(
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
                "plain",
            )
        )
        n = sum(d.verdict == BEYOND for d in comp.deltas)
        lines.append(
            f"{n} of {sum(d.verdict in (BEYOND, WITHIN) for d in comp.deltas)} metrics with "
            "intervals changed beyond the uncertainty (conservative: see compare.md for the rule)"
        )
    external = _external(comp)
    if external is not None:
        head, body = external
        lines += ["", "internal (test split) and external sources:"]
        lines.append(format_table(head, body[:max_rows], "plain"))
    lines += [f"note: {n}" for n in comp.notes]
    return "\n".join(lines) + "\n"


def _verdict_word(d: MetricDelta) -> str:
    if d.verdict == BEYOND:
        return f"{BEYOND} ({'better' if d.better else 'worse'})"
    return d.verdict


# ------------------------------------------------------------------------------ documents


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
    external: tuple[list[str], list[list[str]]] | None = None


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
    return _Tables(
        (main_head, main_body), (recall_head, recall_body), deltas, audit, params, _external(comp)
    )


def _external(comp: Comparison) -> tuple[list[str], list[list[str]]] | None:
    """Internal (test split) and external figures side by side, one row per model and
    external source; None when no run was scored on an external source."""
    ci = f"{round(100 * comp.rows[0].confidence)}% CI"
    body = [
        [
            r.model_key,
            short_version(r.data_version),
            source,
            fmt_value(est.value if (est := figs.get("n")) else None, digits=0),
            fmt_estimate(r.metrics.get("accuracy")),
            fmt_estimate(figs.get("accuracy")),
            fmt_estimate(r.metrics.get("f1_macro")),
            fmt_estimate(figs.get("f1_macro")),
            fmt_estimate(figs.get("non_covid_called_covid")),
        ]
        for r in comp.rows
        for source, figs in sorted(r.external.items())
    ]
    if not body:
        return None
    head = [
        "model", "data version", "external source", "n",
        f"accuracy test [{ci}]", f"accuracy external [{ci}]",
        f"macro F1 test [{ci}]", f"macro F1 external [{ci}]",
        f"non-COVID called COVID-19, external [{ci}]",
    ]  # fmt: skip
    return head, body


EXTERNAL_NOTE = (
    "External sources were never trained on and never split: each model is scored on every "
    "image of theirs labelled with one of its classes, with patient-level intervals."
)


def _markdown(comp: Comparison, figures: Sequence[Plot], image_ref: Callable[[Path], str]) -> str:
    t = _tables(comp)
    lines = [
        "# cxrflow compare",
        "",
        f"- Selection: {comp.description}; {len(comp.rows)} evaluated model runs",
        f"- Tracking server: `{comp.source}` (each row links to its run)",
        f"- Data versions: {', '.join(f'`{v}`' for v in comp.versions)}",
        *(f"- Note: {n}" for n in comp.notes),
        "",
        "## Models x metrics",
        "",
    ]
    header, body = t.main
    link_col = len(header) - 1
    lines.append(
        format_table(
            header,
            [[*r[:link_col], _md_link(row)] for r, row in zip(body, comp.rows, strict=True)],
        )
    )
    lines += ["", "## Recall per class", "", format_table(*t.recall)]
    if t.deltas is not None and comp.version_pair:
        a, b = comp.version_pair
        lines += ["", f"## Data version {a} -> {b}", "", f"> {rule_text(comp.rows[0].confidence)}"]
        lines += ["", format_table(*t.deltas)]
    if t.external is not None:
        lines += ["", "## Internal and external", "", EXTERNAL_NOTE, "", format_table(*t.external)]
    lines += ["", "## Audit verdicts", ""]
    lines.append(format_table(*t.audit) if t.audit else "No audit verdicts in these runs.")
    lines += ["", "## Parameters that differ", ""]
    if t.params:
        lines.append(format_table(*t.params))
        if comp.params.truncated:
            lines.append(f"\n... and {comp.params.truncated} more keys.")
    else:
        lines.append("None: every run has the same parameters.")
    if figures:
        lines += ["", "## Figures", ""]
        for f in figures:
            lines += [f"**{f.title}**: {f.caption}", "", f"![{f.title}]({image_ref(f.path)})", ""]
    return "\n".join(lines).rstrip() + "\n"


def render_markdown(comp: Comparison, figures: Sequence[Plot] = (), files_dir: str = "") -> str:
    """``compare.md``: the tables, the rule, and the figures (links relative to the document:
    ``<files_dir>/<figure file>``)."""
    return _markdown(comp, figures, lambda p: f"{files_dir}/{p.name}" if files_dir else p.name)


# The page's anchors (other pages and the page's tests link to them), by heading
_ANCHORS = {
    "Models x metrics": "models",
    "Recall per class": "recall",
    "Internal and external": "external",
    "Audit verdicts": "audit",
    "Parameters that differ": "params",
    "Figures": "figures",
}


def _row_class(cells: Sequence[str]) -> str:
    """Highlights a change beyond the uncertainty in the data-version table."""
    for cell in cells:
        if cell.startswith(BEYOND):
            return "beyond-better" if cell.endswith("(better)") else "beyond-worse"
    return ""


def html_page(comp: Comparison, markdown: str, base: str | Path) -> str:
    """``compare.html`` from ``compare.md`` (:func:`cxrflow.htmlpack.render_page`).

    Args:
        comp: The comparison (its description titles the page).
        markdown: The document, as :func:`render_markdown` wrote it.
        base: The folder its figure links are relative to (their images are inlined).
    """
    from cxrflow.htmlpack import render_page

    return render_page(
        markdown,
        title=f"cxrflow compare: {comp.description}",
        base=base,
        ids=_ANCHORS,
        row_class=_row_class,
    )


def render_html(comp: Comparison, figures: Sequence[Plot] = ()) -> str:
    """``compare.html``: one self-contained page (figures as data URIs, no script)."""
    # absolute figure paths in angle brackets (a path may hold spaces), resolved from "/"
    markdown = _markdown(comp, figures, lambda p: f"<{p.resolve().as_posix()}>")
    return html_page(comp, markdown, Path("/"))
