"""The two Great Expectations suites of the data gate, built in code: the manifest suite and the
split suite (see :mod:`cxrflow.data.validate`), and the derived group columns (rows per class,
class balance, splits per patient) they check, one value per group. GX is imported lazily.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cxrflow.config import ALL_LABELS, DATASETS, ValidateParams
from cxrflow.data.manifest import MANIFEST_COLUMNS, SPLIT_COLUMNS, SPLITS
from cxrflow.data.sources import AGE_GROUPS, COHORTS, CONTROL, STUDY, registered_sources

if TYPE_CHECKING:  # both are heavy; only typing needs them at import time
    import great_expectations as gx
    import pandas as pd


MANIFEST_SUITE_NAME = "cxrflow_manifest"
SPLIT_SUITE_NAME = "cxrflow_splits"


ORIGINS: tuple[str, ...] = ("real", "phantom")
IMAGE_MODES: tuple[str, ...] = ("L", "RGB")
SHA256_REGEX = r"^[0-9a-f]{64}$"

# Derived columns added to a copy of the table before validation (see the module docstring).
COVID = "covid"  # the class a control never has
CLASS_COUNT_COLUMN = "class_count"
CLASS_BALANCE_COLUMN = "class_balance_ratio"
PATIENT_SPLITS_COLUMN = "patient_splits"


_EXAMPLE_META_KEY = "cxrflow_example"  # str.format template over one unexpected row's values


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
