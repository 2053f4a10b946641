"""Comparing models across MLflow runs, pipeline runs and data versions (``cxrflow compare``).

The question after a rollback or a data update: which metrics changed, by how much, and is the
change larger than the uncertainty? The package turns the model runs a pipeline logged to
MLflow into one table of models x metrics with their intervals, the parameters that differ,
and, for two data versions, the change of every metric with a verdict. It writes ``compare.md``
(figures in ``compare_files/``), one self-contained ``compare.html`` (the same document
rendered, figures inlined, no script, no remote file) and a compact terminal table.

One module per job, in the order the data flows:

- :mod:`~cxrflow.compare.selection`: which runs (:func:`select_runs`, the only reader, through
  a :class:`RunSource`: :class:`cxrflow.tracking.RunStore` or a fake in tests);
- :mod:`~cxrflow.compare.rows`: a run record as a :class:`ModelRow` of :class:`Estimate`;
- :mod:`~cxrflow.compare.stats`: changes and their verdicts (the rule is in its docstring),
  the params that differ, the :class:`Comparison`;
- :mod:`~cxrflow.compare.rendering`: terminal table, Markdown, the HTML page;
- :mod:`~cxrflow.compare.plots`: the figures.
"""

from __future__ import annotations

from pathlib import Path

from cxrflow.compare.plots import (
    Plot,
    plot_audit,
    plot_latency_accuracy,
    plot_metric_by_version,
    plot_per_class_recall,
    write_figures,
)
from cxrflow.compare.rendering import (
    fmt_audit,
    fmt_delta,
    fmt_estimate,
    fmt_value,
    format_terminal,
    html_page,
    render_html,
    render_markdown,
    rule_text,
)
from cxrflow.compare.rows import (
    AUDIT_FIGURES,
    DEFAULT_CONFIDENCE,
    LATENCY,
    Estimate,
    ModelRow,
    is_evaluated,
    row_from_record,
    run_link,
    short_version,
    version_matches,
)
from cxrflow.compare.selection import RunSource, Selection, select_runs
from cxrflow.compare.stats import (
    BEYOND,
    DEGENERATE,
    HEADLINE,
    LOWER_IS_BETTER,
    MAX_PARAM_ROWS,
    MISSING,
    NO_INTERVAL,
    WITHIN,
    Comparison,
    MetricDelta,
    ParamDiff,
    build_comparison,
    compare_versions,
    differing_params,
    latest_by_model,
    metric_delta,
)

__all__ = [
    "AUDIT_FIGURES",
    "BEYOND",
    "DEFAULT_CONFIDENCE",
    "DEGENERATE",
    "HEADLINE",
    "LATENCY",
    "LOWER_IS_BETTER",
    "MAX_PARAM_ROWS",
    "MISSING",
    "NO_INTERVAL",
    "WITHIN",
    "Comparison",
    "Estimate",
    "MetricDelta",
    "ModelRow",
    "ParamDiff",
    "Plot",
    "RunSource",
    "Selection",
    "build_comparison",
    "compare_versions",
    "differing_params",
    "fmt_audit",
    "fmt_delta",
    "fmt_estimate",
    "fmt_value",
    "format_terminal",
    "html_page",
    "is_evaluated",
    "latest_by_model",
    "metric_delta",
    "plot_audit",
    "plot_latency_accuracy",
    "plot_metric_by_version",
    "plot_per_class_recall",
    "render_html",
    "render_markdown",
    "row_from_record",
    "rule_text",
    "run_link",
    "select_runs",
    "short_version",
    "version_matches",
    "write_comparison",
    "write_figures",
]


def write_comparison(comp: Comparison, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``compare.md`` (+ ``compare_files/``) and the self-contained ``compare.html``
    (``compare.md`` rendered, its figures inlined)."""
    out = Path(out_dir)
    figures = write_figures(comp, out / "compare_files")
    markdown = render_markdown(comp, figures, "compare_files")
    md = out / "compare.md"
    md.write_text(markdown, encoding="utf-8")
    page = out / "compare.html"
    page.write_text(html_page(comp, markdown, out), encoding="utf-8")
    return md, page
