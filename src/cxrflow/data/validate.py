"""The Great Expectations (GX 1.x) gate over the manifest and over each dataset's split table.

Two suites, each run through an in-memory (ephemeral) GX context by a ``Checkpoint`` over a
pandas ``dataframe`` asset with a whole-dataframe batch definition:

- the *manifest suite* (:func:`build_manifest_suite`): column set, non-empty table,
  label/origin/mode/age-group/cohort sets, ``source`` among the registered sources
  (:mod:`cxrflow.data.sources`) and each source's ``patient_id`` prefixed with its name,
  image size bounds, unique and well-formed ``sha256``, unique ``image_id``, control rows
  (the audit's same-source controls) never labelled ``covid`` and naming their finding, and a
  minimum number of *study* rows per class (controls never train, so they do not count);
- the *split suite* (:func:`build_split_suite`): split names, all three splits non-empty, no
  patient in two splits, class balance within tolerance, unique ``image_id``.

Checks that are about groups rather than rows (rows per class, splits per patient) run on
*derived* columns that :func:`validate_manifest` / :func:`validate_splits` add to a copy of the
table: the group's value is written on the group's first row and the other rows stay null, which
GX skips. Each offending class or patient is therefore exactly one unexpected value, and the
failure examples name it (``covid: 3 rows``, ``kermany:p7 in test+train``).

``great_expectations`` takes seconds to import, so it is imported inside functions only; importing
this module is cheap. Validation never raises on bad data: it returns a
:class:`ValidationSummary`, and :func:`raise_on_failure` turns a failed one into a
:class:`DataValidationError` that names every failed expectation with examples.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow.config import ALL_LABELS, DATASETS, ValidateParams
from cxrflow.data.manifest import MANIFEST_COLUMNS, SPLIT_COLUMNS, SPLITS
from cxrflow.data.sources import AGE_GROUPS, COHORTS, CONTROL, STUDY, registered_sources

if TYPE_CHECKING:  # both are heavy; only typing needs them at import time
    import great_expectations as gx
    import pandas as pd

logger = logging.getLogger(__name__)

MANIFEST_SUITE_NAME = "cxrflow_manifest"
SPLIT_SUITE_NAME = "cxrflow_splits"
DATA_DOCS_SITE_NAME = "cxrflow"

ORIGINS: tuple[str, ...] = ("real", "phantom")
IMAGE_MODES: tuple[str, ...] = ("L", "RGB")
SHA256_REGEX = r"^[0-9a-f]{64}$"

# Derived columns added to a copy of the table before validation (see the module docstring).
COVID = "covid"  # the class a control never has
CLASS_COUNT_COLUMN = "class_count"
CLASS_BALANCE_COLUMN = "class_balance_ratio"
PATIENT_SPLITS_COLUMN = "patient_splits"

MAX_EXAMPLES = 5
_EXAMPLE_META_KEY = "cxrflow_example"  # str.format template over one unexpected row's values
_PARTIAL_UNEXPECTED_COUNT = 50  # rows GX reports per failure; deduplicated down to MAX_EXAMPLES


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


# ---------------------------------------------------------------------------------- suites


def _import_gx() -> Any:
    """Import great_expectations with analytics off (GX must never reach the network)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations

    return great_expectations


def _fmt_set(values: Sequence[str]) -> str:
    return "{" + ", ".join(values) + "}"


def build_manifest_suite(
    params: ValidateParams,
    labels: Sequence[str] = ALL_LABELS,
    sources: Sequence[str] | None = None,
) -> gx.ExpectationSuite:
    """Build the manifest expectation suite.

    The per-class minimum runs on the derived column ``class_count`` that
    :func:`validate_manifest` adds; validate through that function rather than running the suite
    on a raw manifest.

    Args:
        params: Thresholds (``min_per_class``, ``min_side``, ``max_side``).
        labels: Allowed labels.
        sources: Allowed source names; default every registered source. Each gets an
            expectation that its rows' ``patient_id`` is ``<name>:<id>``.

    Returns:
        An unsaved ``gx.ExpectationSuite`` named :data:`MANIFEST_SUITE_NAME`.
    """
    gx = _import_gx()
    from great_expectations.expectations.row_conditions import Column

    ex = gx.expectations
    lo, hi = params.min_side, params.max_side
    names = list(sources) if sources is not None else [s.name for s in registered_sources()]
    control_labels = [lab for lab in labels if lab != COVID]
    expectations = [
        ex.ExpectTableColumnsToMatchSet(
            column_set=list(MANIFEST_COLUMNS),
            exact_match=False,
            description="all manifest columns present",
        ),
        ex.ExpectTableRowCountToBeBetween(min_value=1, description="manifest is not empty"),
        ex.ExpectColumnValuesToNotBeNull(column="image_id", description="image_id is not null"),
        ex.ExpectColumnValuesToBeUnique(column="image_id", description="image_id is unique"),
        ex.ExpectColumnValuesToNotBeNull(column="label", description="label is not null"),
        ex.ExpectColumnValuesToBeInSet(
            column="label", value_set=list(labels), description=f"label in {_fmt_set(labels)}"
        ),
        ex.ExpectColumnValuesToBeInSet(
            column="source", value_set=names, description=f"source in {_fmt_set(names)}"
        ),
        ex.ExpectColumnValuesToBeInSet(
            column="origin", value_set=list(ORIGINS), description=f"origin in {_fmt_set(ORIGINS)}"
        ),
        ex.ExpectColumnValuesToBeBetween(
            column="width", min_value=lo, max_value=hi, description=f"width in [{lo}, {hi}] px"
        ),
        ex.ExpectColumnValuesToBeBetween(
            column="height", min_value=lo, max_value=hi, description=f"height in [{lo}, {hi}] px"
        ),
        ex.ExpectColumnValuesToBeInSet(
            column="mode",
            value_set=list(IMAGE_MODES),
            description=f"mode in {_fmt_set(IMAGE_MODES)} (grayscale or RGB only)",
        ),
        ex.ExpectColumnValuesToNotBeNull(column="sha256", description="sha256 is not null"),
        ex.ExpectColumnValuesToBeUnique(column="sha256", description="sha256 is unique"),
        ex.ExpectColumnValuesToMatchRegex(
            column="sha256", regex=SHA256_REGEX, description="sha256 is 64 lowercase hex digits"
        ),
        ex.ExpectColumnValuesToBeInSet(
            column="age_group",
            value_set=list(AGE_GROUPS),
            description=f"age_group in {_fmt_set(AGE_GROUPS)}",
        ),
        ex.ExpectColumnValuesToBeInSet(
            column="cohort",
            value_set=list(COHORTS),
            description=f"cohort in {_fmt_set(COHORTS)}",
        ),
        ex.ExpectColumnValuesToBeInSet(
            column="label",
            value_set=control_labels,
            row_condition=Column("cohort") == CONTROL,
            description=f"a control row is labelled {_fmt_set(control_labels)} (never covid)",
        ),
        ex.ExpectColumnValuesToMatchRegex(
            column="finding",
            regex=r"\S",
            row_condition=Column("cohort") == CONTROL,
            description="a control row names its finding",
        ),
        ex.ExpectColumnValuesToNotBeNull(column="patient_id", description="patient_id is not null"),
        *(
            ex.ExpectColumnValuesToMatchRegex(
                column="patient_id",
                regex=rf"^{name}:.+",
                row_condition=Column("source") == name,
                description=f"{name}: patient_id is non-empty '{name}:<id>'",
            )
            for name in names
        ),
        ex.ExpectColumnValuesToBeBetween(
            column=CLASS_COUNT_COLUMN,
            min_value=params.min_per_class,
            description=f"every class present has >= {params.min_per_class} study rows",
            meta={_EXAMPLE_META_KEY: "{label}: {class_count} rows"},
        ),
    ]
    return gx.ExpectationSuite(name=MANIFEST_SUITE_NAME, expectations=expectations)


def build_split_suite(
    params: ValidateParams,
    class_counts_expected: Mapping[str, int] | None = None,
    check_balance: bool = True,
) -> gx.ExpectationSuite:
    """Build the split-table expectation suite (one dataset's rows).

    Class balance: without targets, each class's row count must lie within
    ``±params.balance_tolerance`` of the mean class count (derived column
    ``class_balance_ratio`` = count / mean); with ``class_counts_expected``, the classes must be
    exactly its keys and each count within ``±balance_tolerance`` of its target. The group
    checks run on derived columns that :func:`validate_splits` adds.

    Args:
        params: Thresholds (``balance_tolerance``).
        class_counts_expected: Optional per-class target counts (e.g. the undersampling targets).
        check_balance: ``False`` for a dataset that is deliberately not undersampled (the
            paper's Dataset_0 keeps its natural 1575 / 2772 / 1493 imbalance).

    Returns:
        An unsaved ``gx.ExpectationSuite`` named :data:`SPLIT_SUITE_NAME`.
    """
    gx = _import_gx()
    from great_expectations.expectations.row_conditions import Column

    ex = gx.expectations
    tol = params.balance_tolerance
    expectations = [
        ex.ExpectTableColumnsToMatchSet(
            column_set=list(SPLIT_COLUMNS),
            exact_match=False,
            description="all split-table columns present",
        ),
        ex.ExpectColumnValuesToBeInSet(
            column="dataset", value_set=list(DATASETS), description=f"dataset in {list(DATASETS)}"
        ),
        ex.ExpectColumnUniqueValueCountToBeBetween(
            column="dataset", min_value=1, max_value=1, description="one dataset per table"
        ),
        ex.ExpectColumnValuesToNotBeNull(column="image_id", description="image_id is not null"),
        ex.ExpectColumnValuesToBeUnique(column="image_id", description="image_id is unique"),
        ex.ExpectColumnValuesToNotBeNull(column="patient_id", description="patient_id is not null"),
        ex.ExpectColumnValuesToBeInSet(
            column="split", value_set=list(SPLITS), description=f"split in {_fmt_set(SPLITS)}"
        ),
        ex.ExpectColumnDistinctValuesToContainSet(
            column="split",
            value_set=list(SPLITS),
            description=f"all of {_fmt_set(SPLITS)} are non-empty",
        ),
        ex.ExpectColumnValuesToBeInSet(
            column=PATIENT_SPLITS_COLUMN,
            value_set=list(SPLITS),
            description="no patient in more than one split",
            meta={_EXAMPLE_META_KEY: "{patient_id} in {patient_splits}"},
        ),
    ]
    for dataset, classes in DATASETS.items():
        expectations.append(
            ex.ExpectColumnValuesToBeInSet(
                column="label",
                value_set=list(classes),
                row_condition=Column("dataset") == dataset,
                description=f"{dataset}: label in {_fmt_set(classes)}",
            )
        )
    if not check_balance:
        pass
    elif class_counts_expected is None:
        expectations.append(
            ex.ExpectColumnValuesToBeBetween(
                column=CLASS_BALANCE_COLUMN,
                min_value=1.0 - tol,
                max_value=1.0 + tol,
                description=f"each class count within ±{tol:.0%} of the mean class count",
                meta={
                    _EXAMPLE_META_KEY: "{label}: {class_count} rows, {class_balance_ratio} x mean"
                },
            )
        )
    else:
        expectations.append(
            ex.ExpectColumnDistinctValuesToEqualSet(
                column="label",
                value_set=list(class_counts_expected),
                description=f"classes are exactly {_fmt_set(list(class_counts_expected))}",
            )
        )
        for label, target in class_counts_expected.items():
            lo, hi = math.ceil(target * (1.0 - tol) - 1e-9), math.floor(target * (1.0 + tol) + 1e-9)
            expectations.append(
                ex.ExpectColumnValuesToBeBetween(
                    column=CLASS_COUNT_COLUMN,
                    min_value=lo,
                    max_value=hi,
                    row_condition=Column("label") == label,
                    description=f"{label}: count within ±{tol:.0%} of {target} ([{lo}, {hi}])",
                    meta={_EXAMPLE_META_KEY: "{label}: {class_count} rows"},
                )
            )
    return gx.ExpectationSuite(name=SPLIT_SUITE_NAME, expectations=expectations)


# ------------------------------------------------------------------------- derived columns


def _first_of_group(key: pd.Series, per_group: pd.Series) -> pd.Series:
    """``per_group`` mapped onto the first row of each ``key`` group; null on the other rows."""
    return key.map(per_group).where(~key.duplicated())


def _with_class_counts(df: pd.DataFrame, *, balance: bool) -> pd.DataFrame:
    if "label" not in df.columns:  # the column-set expectation reports it
        return df
    label = df["label"]
    if "cohort" in df.columns:  # controls never train: the class minimum is about study rows
        label = label.where(df["cohort"] == STUDY)
    counts = label.value_counts()
    df[CLASS_COUNT_COLUMN] = _first_of_group(label, counts).where(label.notna())
    if balance and len(counts):
        df[CLASS_BALANCE_COLUMN] = _first_of_group(label, (counts / counts.mean()).round(4))
    return df


def _with_patient_splits(df: pd.DataFrame) -> pd.DataFrame:
    if "patient_id" not in df.columns or "split" not in df.columns:
        return df
    per_patient = df.groupby("patient_id", sort=False)["split"].agg(
        lambda s: "+".join(sorted({str(v) for v in s.dropna()}))
    )
    df[PATIENT_SPLITS_COLUMN] = _first_of_group(df["patient_id"], per_patient)
    return df


# -------------------------------------------------------------------------------- running


def _make_context(docs_dir: Path | None) -> Any:
    """An in-memory GX context, progress bars off, with a Data Docs site at ``docs_dir``."""
    gx = _import_gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites: dict[str, Any] = {}
    if docs_dir is not None:
        sites[DATA_DOCS_SITE_NAME] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _run_suite(
    suite: gx.ExpectationSuite,
    df: pd.DataFrame,
    *,
    asset_name: str,
    index_columns: Sequence[str],
    docs_dir: Path | None,
    row_count: int,
) -> ValidationSummary:
    """Run ``suite`` over ``df`` through a Checkpoint; optionally write Data Docs."""
    gx = _import_gx()
    docs = docs_dir.resolve() if docs_dir is not None else None
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
    context = _make_context(docs)
    batch_definition = (
        context.data_sources.add_pandas("cxrflow")
        .add_dataframe_asset(asset_name)
        .add_batch_definition_whole_dataframe("whole_dataframe")
    )
    suite = context.suites.add(suite)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(
            name=f"{suite.name}_{asset_name}", data=batch_definition, suite=suite
        )
    )
    result_format: dict[str, Any] = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": _PARTIAL_UNEXPECTED_COUNT,
    }
    present = [c for c in index_columns if c in df.columns]
    if present:
        result_format["unexpected_index_column_names"] = present
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs")] if docs else []
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{suite.name}_checkpoint",
            validation_definitions=[validation],
            actions=actions,
            result_format=result_format,
        )
    )
    checkpoint_result = checkpoint.run(batch_parameters={"dataframe": df})
    (result,) = checkpoint_result.run_results.values()

    index: Path | None = None
    if docs is not None:
        index = docs / "index.html"
        if not index.is_file() or suite.name not in index.read_text(errors="replace"):
            raise OSError(f"{index}: GX Data Docs were requested but not written")

    # GX returns results grouped by metric; report failures in suite order instead.
    order = {e.id: i for i, e in enumerate(suite.expectations)}
    failed_results = sorted(
        (r for r in result.results if not r.success),
        key=lambda r: order.get(r.expectation_config.id, len(order)),
    )
    failed = tuple(_failed_expectation(r) for r in failed_results)
    statistics = {**dict(result.statistics), "row_count": row_count}
    return ValidationSummary(
        suite_name=suite.name,
        success=bool(result.success),
        evaluated=int(statistics.get("evaluated_expectations", len(result.results))),
        failed=failed,
        statistics=statistics,
        data_docs_index=index,
    )


def validate_manifest(
    df: pd.DataFrame,
    params: ValidateParams,
    labels: Sequence[str] = ALL_LABELS,
    docs_dir: Path | None = None,
) -> ValidationSummary:
    """Run the manifest suite over a manifest table. Does not raise on bad data.

    Args:
        df: The manifest (:data:`~cxrflow.data.manifest.MANIFEST_COLUMNS`, strings except integer
            ``width`` / ``height``). Not modified.
        params: Validation thresholds.
        labels: Allowed labels.
        docs_dir: If given, the GX Data Docs site is written there (the directory holds this
            validation only: a later validation into the same directory replaces it).

    Returns:
        The summary; ``success`` is False when any expectation failed.

    Raises:
        OSError: ``docs_dir`` was given but GX did not write ``index.html``.
    """
    table = _with_class_counts(df.copy(), balance=False)
    return _run_suite(
        build_manifest_suite(params, labels),
        table,
        asset_name="manifest",
        index_columns=("image_id", "label"),
        docs_dir=Path(docs_dir) if docs_dir is not None else None,
        row_count=len(df),
    )


def validate_splits(
    df: pd.DataFrame,
    params: ValidateParams,
    docs_dir: Path | None = None,
    *,
    class_counts_expected: Mapping[str, int] | None = None,
    check_balance: bool = True,
) -> ValidationSummary:
    """Run the split suite over one dataset's split table. Does not raise on bad data.

    Args:
        df: Rows of one dataset (``dataset_0`` or ``dataset_1``) with
            :data:`~cxrflow.data.manifest.SPLIT_COLUMNS`. Not modified.
        params: Validation thresholds (``balance_tolerance``).
        docs_dir: If given, the GX Data Docs site is written there (one directory per table).
        class_counts_expected: Optional per-class targets; balance is then checked against them
            instead of against the mean class count.
        check_balance: ``False`` skips the class-balance expectation (not undersampled data).

    Returns:
        The summary; ``success`` is False when any expectation failed.

    Raises:
        OSError: ``docs_dir`` was given but GX did not write ``index.html``.
    """
    table = _with_class_counts(df.copy(), balance=class_counts_expected is None)
    table = _with_patient_splits(table)
    datasets = df["dataset"].dropna().unique() if "dataset" in df.columns else []
    asset_name = str(datasets[0]) if len(datasets) == 1 else "splits"
    return _run_suite(
        build_split_suite(params, class_counts_expected, check_balance),
        table,
        asset_name=asset_name,
        index_columns=("image_id", "patient_id", "label", CLASS_COUNT_COLUMN),
        docs_dir=Path(docs_dir) if docs_dir is not None else None,
        row_count=len(df),
    )


def raise_on_failure(summary: ValidationSummary) -> None:
    """Raise :class:`DataValidationError` if ``summary`` is not a success.

    Raises:
        DataValidationError: Naming every failed expectation with up to 5 examples.
    """
    if not summary.success:
        raise DataValidationError(summary)


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
