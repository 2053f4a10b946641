"""A validation's outcome in plain Python types: :class:`FailedExpectation`,
:class:`ValidationSummary` and :class:`DataValidationError`, read from GX's results with
deduplicated examples of the unexpected values, and their one-message text form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrflow.data.expectations import _EXAMPLE_META_KEY

MAX_EXAMPLES = 5


class DataValidationError(RuntimeError):
    """Raised when a suite fails.

    ``str()`` names every failed expectation with up to 5 example unexpected values.

    Attributes:
        result: The summary of the failed validation.
    """

    result: ValidationSummary

    def __init__(self, result: ValidationSummary) -> None:
        self.result = result
        super().__init__(_format_summary(result))


@dataclass(frozen=True)
class FailedExpectation:
    """One failed expectation, in plain Python types.

    Attributes:
        expectation: GX expectation type, e.g. ``expect_column_values_to_be_in_set``.
        column: The column it checks, or ``None`` for table-level expectations.
        description: Human-readable statement of the expectation.
        unexpected_count: Number of unexpected values (rows, classes or patients for the derived
            group columns), or ``None`` for aggregate expectations and errors.
        examples: Up to 5 distinct example unexpected values or rows, stringified; for an
            expectation that raised (e.g. a missing column) the error message.
    """

    expectation: str
    column: str | None
    description: str
    unexpected_count: int | None
    examples: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "expectation": self.expectation,
            "column": self.column,
            "description": self.description,
            "unexpected_count": self.unexpected_count,
            "examples": list(self.examples),
        }


@dataclass(frozen=True)
class ValidationSummary:
    """Outcome of running one suite over one table.

    Attributes:
        suite_name: Name of the GX expectation suite.
        success: Whether every expectation passed.
        evaluated: Number of expectations evaluated.
        failed: The failed expectations, in suite order.
        statistics: GX's statistics (``evaluated_expectations``, ``successful_expectations``,
            ``unsuccessful_expectations``, ``success_percent``) plus ``row_count``.
        data_docs_index: ``index.html`` of the Data Docs site written, if one was requested.
    """

    suite_name: str
    success: bool
    evaluated: int
    failed: tuple[FailedExpectation, ...]
    statistics: dict[str, Any]
    data_docs_index: Path | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (paths as strings, tuples as lists)."""
        return {
            "suite_name": self.suite_name,
            "success": self.success,
            "evaluated": self.evaluated,
            "failed": [f.to_dict() for f in self.failed],
            "statistics": dict(self.statistics),
            "data_docs_index": str(self.data_docs_index) if self.data_docs_index else None,
        }


# ------------------------------------------------------------------------------ reporting


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4g}"
    return "''" if value == "" else str(value)


def _format_row(entry: Mapping[str, Any], column: str | None, template: str | None) -> str:
    values = {k: _fmt_value(v) for k, v in entry.items()}
    if template:
        try:
            return template.format_map(values)
        except (KeyError, IndexError, ValueError):
            pass
    value = values.get(column, "?") if column else "?"
    if column != "image_id" and "image_id" in values:
        return f"{value} (image_id={values['image_id']})"
    return value


def _examples(result: Mapping[str, Any], column: str | None, template: str | None) -> list[str]:
    """Distinct example strings from a GX result dict, in reported order."""
    candidates: list[str] = []
    rows = result.get("partial_unexpected_index_list")
    if rows and isinstance(rows[0], Mapping):
        candidates = [_format_row(row, column, template) for row in rows]
    elif result.get("partial_unexpected_list"):
        candidates = [_fmt_value(v) for v in result["partial_unexpected_list"]]
    elif result.get("partial_missing_list"):
        candidates = [f"missing {_fmt_value(v)!r}" for v in result["partial_missing_list"]]
    elif isinstance(result.get("details"), Mapping) and "mismatched" in result["details"]:
        mismatched = result["details"]["mismatched"]
        candidates = [f"missing column {c!r}" for c in mismatched.get("missing", [])]
    elif "observed_value" in result:
        candidates = [f"observed {result['observed_value']!r}"]
    return list(dict.fromkeys(candidates))[:MAX_EXAMPLES]


def _failed_expectation(evr: Any) -> FailedExpectation:
    """Convert one failed GX ``ExpectationValidationResult``."""
    config = evr.expectation_config
    kwargs = dict(config.kwargs)
    column = kwargs.get("column")
    meta = dict(config.meta or {})
    result = dict(evr.result or {})
    info = evr.exception_info or {}
    if info.get("raised_exception") is None and info:
        # Several metrics failed: {metric_id: {"exception_message": ...}, ...}.
        info = next(iter(info.values()), {})
    if info.get("raised_exception"):
        examples = [f"error: {info.get('exception_message')}"]
    else:
        examples = _examples(result, column, meta.get(_EXAMPLE_META_KEY))
    count = result.get("unexpected_count")
    return FailedExpectation(
        expectation=str(config.type),
        column=str(column) if column is not None else None,
        description=str(config.description or config.type),
        unexpected_count=int(count) if count is not None else None,
        examples=tuple(examples),
    )


def _format_summary(summary: ValidationSummary) -> str:
    lines = [
        f"GX suite {summary.suite_name!r} failed {len(summary.failed)} of "
        f"{summary.evaluated} expectations:"
    ]
    for f in summary.failed:
        where = f" [{f.column}]" if f.column else ""
        count = f" ({f.unexpected_count} unexpected)" if f.unexpected_count is not None else ""
        examples = f"; e.g. {', '.join(f.examples)}" if f.examples else ""
        lines.append(f"- {f.expectation}{where}: {f.description}{count}{examples}")
    if summary.data_docs_index is not None:
        lines.append(f"Data Docs: {summary.data_docs_index}")
    return "\n".join(lines)
