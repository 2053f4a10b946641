"""Every MLflow tag, param and metric name that cxrflow writes, defined once.

Writers (the steps, :mod:`cxrflow.tracking`) and readers (``register``, ``compare``,
``report``, ``predict``) use these names; a test fails on a ``"cxrflow.`` string literal
anywhere else in ``src/``. Prefixes end with a dot and take a suffix (a step, a model key, a
metric); the helpers below build those names so that nobody spells a prefix twice.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "cxrflow."

# ----------------------------------------------------------------------- run identity
TAG_PIPELINE_RUN: Final = "cxrflow.pipeline_run_id"
TAG_MODEL_KEY: Final = "cxrflow.model_key"
TAG_STEP: Final = "cxrflow.step"
TAG_KIND: Final = "cxrflow.run_kind"
TAG_PROFILE: Final = "cxrflow.profile"
TAG_GIT_COMMIT: Final = "cxrflow.git_commit"
TAG_PARAMS_HASH: Final = "cxrflow.params_hash"
TAG_RUN_ID: Final = "cxrflow.run_id"
TAG_LAST_PHASE: Final = "cxrflow.last_phase"

# --------------------------------------------------------------------------- the data
TAG_MANIFEST_HASH: Final = "cxrflow.data.manifest_hash"
TAG_DATA_VERSION: Final = "cxrflow.data.version"
TAG_DATA_ORIGIN: Final = "cxrflow.data.origin"
TAG_DATA_REUSED_FROM: Final = "cxrflow.data.reused_from"
TAG_DATA_DVC_HASHES: Final = "cxrflow.data.dvc_hashes"
TAG_DATA_REGISTRY: Final = "cxrflow.data.registry"
TAG_DATA_COMMIT: Final = "cxrflow.data.commit"
TAG_DATA_DVC_MD5_PREFIX: Final = "cxrflow.data.dvc_md5."
TAG_VALIDATE_SUCCESS: Final = "cxrflow.validate.success"
TAG_CONFOUND_PREFIX: Final = "cxrflow.confound."

# ----------------------------------------------------------------------- step progress
TAG_STEP_DONE_PREFIX: Final = "cxrflow.step_done."
TAG_FAILED_STEP: Final = "cxrflow.failed_step"
TAG_ERROR: Final = "cxrflow.error"
STEP_CACHED: Final = "cached"
"""The value of ``cxrflow.step_done.<step>`` for a data step reused from an earlier run."""

# ---------------------------------------------------------------------------- training
TAG_DATASET: Final = "cxrflow.dataset"
TAG_ARCHITECTURE: Final = "cxrflow.architecture"
TAG_INIT: Final = "cxrflow.init"
TAG_PRETRAINED: Final = "cxrflow.pretrained_weights"
TAG_PRETRAINED_SHA256: Final = "cxrflow.pretrained_weights_sha256"
TAG_WARNING: Final = "cxrflow.warning"
TAG_RESUMED_FROM_EPOCH: Final = "cxrflow.resumed_from_epoch"
METRIC_DATA_SECONDS: Final = "cxrflow.time.data_s"
METRIC_EVALUATE_COMPUTE_SECONDS: Final = "cxrflow.time.evaluate.compute_s"

# ------------------------------------------------------------------ audit and registry
TAG_AUDIT_PASSED: Final = "cxrflow.audit.passed"
TAG_AUDIT_REASONS: Final = "cxrflow.audit.reasons"
TAG_PROMOTION: Final = "cxrflow.promotion"
TAG_PROMOTION_REASON: Final = "cxrflow.promotion_reason"
TAG_CHAMPION: Final = "cxrflow.champion"
TAG_METRIC_PREFIX: Final = "cxrflow.metric."

# ------------------------------------------------------------------------------ export
TAG_EXPORT_INT8_DROP: Final = "cxrflow.export.int8_accuracy_drop"
TAG_EXPORT_DIGEST: Final = "cxrflow.export.int8_sha256"


def step_done_tag(step: str) -> str:
    """``cxrflow.step_done.<step>``: set on the parent run when ``step`` finished."""
    return TAG_STEP_DONE_PREFIX + step


def metric_tag(metric: str) -> str:
    """``cxrflow.metric.<metric>``: a registered version's score on its test split."""
    return TAG_METRIC_PREFIX + metric


def legacy_metric_tag(metric: str) -> str:
    """``cxrflow.<metric>``: the promotion metric as versions registered before 0.2 carry it."""
    return PREFIX + metric


def confound_tag(name: str) -> str:
    """``cxrflow.confound.<name>``: a confound warning of the split."""
    return TAG_CONFOUND_PREFIX + name


def dvc_md5_tag(path: str) -> str:
    """``cxrflow.data.dvc_md5.<path>``: the DVC hash of one tracked data path."""
    return TAG_DATA_DVC_MD5_PREFIX + path


# ------------------------------------------------------- promotion against the champion
TAG_PROMOTION_METRIC: Final = "cxrflow.promotion.metric"
TAG_PROMOTION_CHAMPION_VERSION: Final = "cxrflow.promotion.champion_version"
"""The champion version a candidate was compared with on the same test images."""
TAG_PROMOTION_DIFFERENCE: Final = "cxrflow.promotion.difference"
"""Candidate minus champion on the promotion metric, on the same test images."""
TAG_PROMOTION_CI_LOW: Final = "cxrflow.promotion.difference_ci_low"
TAG_PROMOTION_CI_HIGH: Final = "cxrflow.promotion.difference_ci_high"
TAG_PROMOTION_MCNEMAR_P: Final = "cxrflow.promotion.mcnemar_p"
TAG_AUDIT_OVERRIDE: Final = "cxrflow.audit.override"
"""Set on a version made eligible although not audited (or promoted although it failed)."""
TAG_PROMOTED_BY: Final = "cxrflow.promotion.by"
TAG_ALIAS_MOVE_PREFIX: Final = "cxrflow.alias_move."
"""Registered-model tags ``cxrflow.alias_move.<ms>-<alias>``: one JSON record per alias move."""


def alias_move_tag(millis: int, alias: str) -> str:
    """``cxrflow.alias_move.<ms>-<alias>``: one alias move (sortable by time)."""
    return f"{TAG_ALIAS_MOVE_PREFIX}{millis:015d}-{alias}"


# ------------------------------------------------------------------- served models
TAG_EXPORT_SOURCE_MODEL: Final = "cxrflow.export.source_model"
INT8_SUFFIX: Final = "-int8"
"""The registered model ``<name>-int8`` holds the int8 ONNX exports of registered model
``<name>`` (its versions tagged :data:`TAG_EXPORT_SOURCE_MODEL` ``<name>/<version>``)."""


def int8_model_name(name: str) -> str:
    """The registered model holding the int8 ONNX exports of registered model ``name``."""
    return name + INT8_SUFFIX


"""On an int8 ONNX version: the registered Keras version it was exported from (``name/version``)."""
