"""MLflow tracking: the only package that imports ``mlflow``.

Run layout: one *parent* run per pipeline run (tag ``cxrflow.pipeline_run_id``) and one nested
run per model (tag ``cxrflow.model_key``). Steps that start in parallel may each create the
parent; they converge on the oldest and delete their duplicates
(:func:`~cxrflow.tracking.runs.get_or_create_parent_run`). Every run carries the flattened
params, the git commit, the data version and manifest hash, the profile and the pipeline run
id, so that any number in MLflow can be traced to its inputs. The tracking URI comes from the
environment (``MLFLOW_TRACKING_URI``), defaulting to ``sqlite:///mlruns.db`` with local
artifacts.

One job a module: :mod:`.session` (where tracking goes), :mod:`.runs` (what steps log),
:mod:`.registry` (registered models and aliases), :mod:`.store` (the store itself and the
read-only queries). Importing this package imports no ``mlflow``: every function imports it
when called. Callers use the names below; a test that replaces one patches the module that
defines it.
"""

from __future__ import annotations

from cxrflow.tracking.registry import (
    ModelNotFoundError,
    RegistryAccessError,
    alias_version,
    delete_model_alias,
    find_model_version,
    load_model,
    log_keras_model,
    model_version,
    register_model,
    registered_model,
    set_model_alias,
    set_model_version_tags,
    set_registered_model_tag,
)
from cxrflow.tracking.runs import (
    PARENT_SETTLE_SECONDS,
    end_run,
    fail_running_children,
    find_parent_run,
    get_or_create_parent_run,
    log_artifact,
    log_dataset,
    log_metrics,
    make_epoch_logger,
    model_run,
    run_tags,
    set_tags,
)
from cxrflow.tracking.session import (
    DEFAULT_TRACKING_URI,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    SOURCE_GIT_COMMIT_TAG,
    SOURCE_NAME_TAG,
    SOURCE_TYPE_TAG,
    configure,
    git_commit,
    source_tags,
    tracking_uri,
)
from cxrflow.tracking.store import (
    RUN_ID_PATTERN,
    RunStore,
    ensure_store,
    tracking_store_exists,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "PARENT_SETTLE_SECONDS",
    "RUN_ID_PATTERN",
    "SOURCE_GIT_COMMIT_TAG",
    "SOURCE_NAME_TAG",
    "SOURCE_TYPE_TAG",
    "ModelNotFoundError",
    "RegistryAccessError",
    "RunStore",
    "alias_version",
    "configure",
    "delete_model_alias",
    "end_run",
    "ensure_store",
    "fail_running_children",
    "find_model_version",
    "find_parent_run",
    "get_or_create_parent_run",
    "git_commit",
    "load_model",
    "log_artifact",
    "log_dataset",
    "log_keras_model",
    "log_metrics",
    "make_epoch_logger",
    "model_run",
    "model_version",
    "register_model",
    "registered_model",
    "run_tags",
    "set_model_alias",
    "set_model_version_tags",
    "set_registered_model_tag",
    "set_tags",
    "source_tags",
    "tracking_store_exists",
    "tracking_uri",
]
