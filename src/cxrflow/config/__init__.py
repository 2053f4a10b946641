"""Typed, frozen configuration resolved once per run from ``params.yaml``.

``params.yaml`` is the single source of configuration. The paper's hyper-parameters are the
top-level values; a *profile* (``demo``, ``smoke``) overrides a few keys, and explicit overrides
(``--set train.epochs=20``, ``dvc exp run -S``) come last. :func:`load_params` resolves all three
into one :class:`Params` (pydantic v2 models, frozen, unknown keys forbidden), which is then
passed whole to every step: the CLI, the DVC stages and every KFP component see the same values
and log the same :func:`params_hash`.

Errors name the dotted key (``params: train.batch_size: Input should be greater than or equal
to 1``). Integers and booleans are strict: ``12.0`` is no integer in ``params.yaml``. Kubeflow
Pipelines carries numbers as floats and cannot carry null, so :func:`params_from_kfp`, and only
it, reads integral floats as integers and ``""`` as null. Nothing here performs I/O at import.

The package's modules, one job each: :mod:`~cxrflow.config.constants` (the vocabulary),
:mod:`~cxrflow.config.base` (the section base and :class:`ParamsError`),
:mod:`~cxrflow.config.sections` (one section per step, and :class:`Params`),
:mod:`~cxrflow.config.cluster` (how the pipeline runs on Kubernetes) and
:mod:`~cxrflow.config.loading` (resolution, encodings, hash). Import from here.
"""

from __future__ import annotations

from cxrflow.config.base import (
    ParamsError,
    PositiveInt,
)
from cxrflow.config.cluster import (
    CheckpointVolume,
    ClusterParams,
    ClusterResources,
    ClusterRetries,
    CpuQuantity,
    MemoryQuantity,
    ResourceParams,
    RetryParams,
    parse_quantity,
)
from cxrflow.config.constants import (
    ALL_LABELS,
    DATASET_0_CLASSES,
    DATASET_1_CLASSES,
    DATASETS,
    FULL_COMMIT,
    INIT_IMAGENET,
    INIT_SCRATCH,
    MIXED_DATASET,
    MODEL_KEYS,
    PAPER,
    PROFILES,
)
from cxrflow.config.loading import (
    check_model_key,
    deep_merge,
    flatten_params,
    load_params,
    nulls_to_empty,
    params_from_dict,
    params_from_kfp,
    params_hash,
    params_json_schema,
    params_to_dict,
    params_to_kfp,
    params_to_yaml,
    parse_override,
    read_params_file,
)
from cxrflow.config.sections import (
    CSV_KIND,
    PHANTOM_SITE,
    REGISTER_METRICS,
    SOURCE_ROLES,
    AuditParams,
    CohenFilter,
    DataParams,
    EvaluateParams,
    ExportParams,
    IngestParams,
    ModelSpec,
    Params,
    RegisterParams,
    SourceSettings,
    SplitParams,
    SynthParams,
    TrackingParams,
    TrainParams,
    ValidateParams,
)

__all__ = [
    "ALL_LABELS",
    "CSV_KIND",
    "DATASETS",
    "DATASET_0_CLASSES",
    "DATASET_1_CLASSES",
    "FULL_COMMIT",
    "INIT_IMAGENET",
    "INIT_SCRATCH",
    "MIXED_DATASET",
    "MODEL_KEYS",
    "PAPER",
    "PHANTOM_SITE",
    "PROFILES",
    "REGISTER_METRICS",
    "SOURCE_ROLES",
    "AuditParams",
    "CheckpointVolume",
    "ClusterParams",
    "ClusterResources",
    "ClusterRetries",
    "CohenFilter",
    "CpuQuantity",
    "DataParams",
    "EvaluateParams",
    "ExportParams",
    "IngestParams",
    "MemoryQuantity",
    "ModelSpec",
    "Params",
    "ParamsError",
    "PositiveInt",
    "RegisterParams",
    "ResourceParams",
    "RetryParams",
    "SourceSettings",
    "SplitParams",
    "SynthParams",
    "TrackingParams",
    "TrainParams",
    "ValidateParams",
    "check_model_key",
    "deep_merge",
    "flatten_params",
    "load_params",
    "nulls_to_empty",
    "params_from_dict",
    "params_from_kfp",
    "params_hash",
    "params_json_schema",
    "params_to_dict",
    "params_to_kfp",
    "params_to_yaml",
    "parse_override",
    "parse_quantity",
    "read_params_file",
]
