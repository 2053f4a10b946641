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

The suites are built in :mod:`cxrflow.data.expectations`; results and their text form live in
:mod:`cxrflow.data.validation_report`. This module runs the suites.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow.config import ALL_LABELS, ValidateParams
from cxrflow.data.expectations import (
    CLASS_BALANCE_COLUMN,
    CLASS_COUNT_COLUMN,
    COVID,
    IMAGE_MODES,
    MANIFEST_SUITE_NAME,
    ORIGINS,
    PATIENT_SPLITS_COLUMN,
    SHA256_REGEX,
    SPLIT_SUITE_NAME,
    _import_gx,
    _with_class_counts,
    _with_patient_splits,
    build_manifest_suite,
    build_split_suite,
)
from cxrflow.data.validation_report import (
    MAX_EXAMPLES,
    DataValidationError,
    FailedExpectation,
    ValidationSummary,
    _failed_expectation,
)

if TYPE_CHECKING:  # both are heavy; only typing needs them at import time
    import great_expectations as gx
    import pandas as pd


logger = logging.getLogger(__name__)


DATA_DOCS_SITE_NAME = "cxrflow"


_PARTIAL_UNEXPECTED_COUNT = 50  # rows GX reports per failure; deduplicated down to MAX_EXAMPLES


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


__all__ = [
    "CLASS_BALANCE_COLUMN",
    "CLASS_COUNT_COLUMN",
    "COVID",
    "DATA_DOCS_SITE_NAME",
    "IMAGE_MODES",
    "MANIFEST_SUITE_NAME",
    "MAX_EXAMPLES",
    "ORIGINS",
    "PATIENT_SPLITS_COLUMN",
    "SHA256_REGEX",
    "SPLIT_SUITE_NAME",
    "DataValidationError",
    "FailedExpectation",
    "ValidationSummary",
    "build_manifest_suite",
    "build_split_suite",
    "raise_on_failure",
    "validate_manifest",
    "validate_splits",
]
