"""Which pipeline run a step belongs to, and what it records about its data in MLflow.

Ingest writes the id of the run that made the data into ``provenance.json``
(:class:`~cxrflow.artifacts.Provenance`). Locally (the CLI, DVC) the later steps take it from
there. In a KFP run the data steps may be reused from an earlier run (KFP caching), so the
other steps are given the current run's id; when it differs from the provenance's, the current
run's parent records the reuse (:func:`record_reuse`): ``cxrflow.data.reused_from``, the data
steps marked done as ``cached``, the manifest as a dataset input, the data tags ingest set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow import names
from cxrflow.artifacts import Provenance

if TYPE_CHECKING:
    from cxrflow.config import Params


log = logging.getLogger(__name__)

PROVENANCE_FILE = Provenance.FILE
PIPELINE_RUN_ENV = "CXRFLOW_PIPELINE_RUN_ID"
"""The pipeline run executing a step, where the runner can say so without a step input: the
cluster sets it on the cacheable data steps from their pod's ``pipeline/runid`` label (what
KFP's ``{{$.pipeline_job_uuid}}`` resolves to), ``pipelines.local`` for every step of a local
run. An input would enter KFP's cache key; an environment variable does not."""


def read_provenance(dataset_dir: str | Path) -> Provenance:
    """Read ``provenance.json`` of a dataset directory (an ingest output)."""
    return Provenance.read(dataset_dir)


def new_pipeline_run_id() -> str:
    """A fresh id grouping the MLflow runs of one local (non-KFP) pipeline run."""
    return f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def current_pipeline_run(given: str = "") -> str | None:
    """The id of the pipeline run executing this step, for a KFP component.

    ``$CXRFLOW_PIPELINE_RUN_ID`` when the runner sets it (see :data:`PIPELINE_RUN_ENV`), else
    ``given`` (KFP's run-id placeholder), else None (the step then makes or reads one).
    """
    return os.environ.get(PIPELINE_RUN_ENV, "").strip() or given.strip() or None


def common_tags(params: Params, prov: Provenance) -> dict[str, str]:
    """The tags every run of one pipeline run carries (profile, data, commit, params hash)."""
    from cxrflow import tracking
    from cxrflow.config import params_hash

    hashes = prov.sources.get("dvc_hashes") or {}
    extra = {names.TAG_DATA_DVC_HASHES: json.dumps(hashes, sort_keys=True)} if hashes else {}
    return {
        **extra,
        names.TAG_PROFILE: params.profile,
        names.TAG_MANIFEST_HASH: prov.manifest_hash,
        names.TAG_DATA_VERSION: prov.data_version,
        names.TAG_DATA_ORIGIN: prov.origin,
        names.TAG_GIT_COMMIT: tracking.git_commit(),
        names.TAG_PARAMS_HASH: params_hash(params),
    }


def parent_run(
    params: Params,
    prov: Provenance,
    pipeline_run_id: str | None = None,
    *,
    step: str,
    dataset_dir: str | Path | None = None,
) -> str:
    """The MLflow parent run of the current pipeline run (``pipeline_run_id``, default: the
    run that made the data), found or created; records a reuse of the data steps."""
    from cxrflow import tracking
    from cxrflow.config import flatten_params

    current = pipeline_run_id or prov.pipeline_run_id
    parent = tracking.get_or_create_parent_run(
        params.tracking.experiment_name,
        current,
        common_tags(params, prov),
        flatten_params(params),
    )
    if current != prov.pipeline_run_id:
        record_reuse(parent, prov, step, dataset_dir)
    return parent


def record_reuse(parent: str, prov: Provenance, step: str, dataset_dir: str | Path | None) -> None:
    """Record on ``parent`` that this run reuses data made by run ``prov.pipeline_run_id``.

    The data steps before ``step`` that did not run in this run (no done tag yet) are marked
    done as ``cached``: KFP reuses only successful executions, and a step runs only after its
    upstream steps succeeded. Idempotent: parallel model steps may all call it.
    """
    from cxrflow import tracking
    from cxrflow.steps.registry import data_steps

    data = data_steps()
    tags = tracking.run_tags(parent)
    before = data[: data.index(step)] if step in data else data
    marks = {
        names.step_done_tag(s): names.STEP_CACHED
        for s in before
        if names.step_done_tag(s) not in tags
    }
    first = names.TAG_DATA_REUSED_FROM not in tags
    if first or marks:
        tracking.set_tags(
            parent,
            {names.TAG_DATA_REUSED_FROM: prov.pipeline_run_id, **data_tags(prov), **marks},
        )
    if first and dataset_dir is not None:
        from cxrflow.data.manifest import read_manifest

        log_manifest(parent, prov, read_manifest(dataset_dir))
    if marks:
        log.info(
            "data steps %s reused from pipeline run %s",
            ", ".join(s.removeprefix(names.TAG_STEP_DONE_PREFIX) for s in marks),
            prov.pipeline_run_id,
        )


def data_tags(prov: Provenance) -> dict[str, str]:
    """The registry, commit and DVC hashes of registry data (ingest's tags on the parent)."""
    registry = prov.sources.get("registry")
    if not registry:
        return {}
    hashes = prov.sources.get("dvc_hashes") or {}
    return {
        names.TAG_DATA_REGISTRY: str(registry),
        names.TAG_DATA_COMMIT: str(prov.sources.get("registry_commit") or ""),
        **{names.dvc_md5_tag(k): str(v) for k, v in hashes.items()},
    }


def log_manifest(parent: str, prov: Provenance, manifest: Any) -> None:
    """The manifest as the parent run's dataset input (lineage in the MLflow UI)."""
    from cxrflow import tracking

    tracking.log_dataset(
        parent,
        "manifest",
        prov.manifest_hash,
        data_source(prov),
        {"rows": len(manifest), "labels": manifest["label"].value_counts().to_dict()},
        "ingest",
        list(manifest.columns),
    )


def mark_done(parent: str, step: str) -> None:
    """Mark ``step`` done on the parent run (finalize reads these marks)."""
    from cxrflow import tracking

    tracking.set_tags(parent, {names.step_done_tag(step): "true"})


def data_source(prov: Provenance) -> dict[str, Any]:
    """Where a run's data came from, as an MLflow dataset source."""
    return {
        "data_version": prov.data_version,
        "registry": prov.sources.get("registry"),
        "registry_commit": prov.sources.get("registry_commit"),
        "roots": prov.sources.get("roots"),
        "origin": prov.origin,
        "pipeline_run_id": prov.pipeline_run_id,
    }


def split_digest(table: Any, splits: tuple[str, ...]) -> str:
    """Content digest of some splits of a split table (which images, which labels, which split):
    the MLflow dataset digest of what a run trained or was tested on."""
    rows = table[table["split"].isin(splits)].sort_values("path")
    blob = "\n".join(f"{p},{lab},{sp}" for p, lab, sp in rows[["path", "label", "split"]].values)
    return hashlib.sha256(blob.encode()).hexdigest()


def log_report(params: Params, dataset_dir: str | Path, files: list[Path]) -> str | None:
    """Log report files to the MLflow parent run of the run that made ``dataset_dir``."""
    from cxrflow import tracking

    prov = read_provenance(dataset_dir)
    if not tracking.tracking_store_exists():
        return None
    parent = tracking.find_parent_run(params.tracking.experiment_name, prov.pipeline_run_id)
    if parent is None:
        return None
    for f in files:
        tracking.log_artifact(parent, f, "report")
    return parent


def run_commit(params: Params, dataset_dir: str | Path) -> str:
    """The git commit the code of the run that made ``dataset_dir`` was at (its parent run's
    ``mlflow.source.git.commit`` tag); "" when the tracking store or the tag is not there."""
    from cxrflow import tracking

    prov = read_provenance(dataset_dir)
    if not tracking.tracking_store_exists():
        return ""
    parent = tracking.find_parent_run(params.tracking.experiment_name, prov.pipeline_run_id)
    if parent is None:
        return ""
    return tracking.run_tags(parent).get("mlflow.source.git.commit", "")
