"""Runs: the parent run of a pipeline run (race-safe), the nested run of each model, and what
steps log into them (params, metrics, epochs, artifacts, datasets)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cxrflow.names import (
    TAG_KIND,
    TAG_LAST_PHASE,
    TAG_MODEL_KEY,
    TAG_PIPELINE_RUN,
)
from cxrflow.tracking import session

log = logging.getLogger(__name__)


def _search_one(experiment_id: str, filter_string: str) -> Any | None:
    from mlflow.tracking import MlflowClient

    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=filter_string,
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


PARENT_SETTLE_SECONDS = 1.0
"""How long a step that created a parent run waits before checking for parallel duplicates:
it covers creations a few hundred milliseconds apart and clocks that disagree by less."""


def get_or_create_parent_run(
    experiment_name: str,
    pipeline_run_id: str,
    tags: Mapping[str, str],
    params: Mapping[str, str],
    *,
    settle_seconds: float | None = None,
) -> str:
    """Find the parent run of ``pipeline_run_id`` or create it; returns its run id.

    Race-safe: the model steps start in parallel and may each find no parent and create one.
    MLflow has no create-if-absent, so a step that created a parent waits
    ``settle_seconds`` (default :data:`PARENT_SETTLE_SECONDS`), lists the parents of the
    pipeline run again and converges on the oldest (start time, then run id: the order every
    step sees alike); if that is not its own, it deletes its duplicate. Params are logged by
    the step whose parent won, after converging, so a deleted duplicate never took any.
    """
    from mlflow.tracking import MlflowClient

    found = find_parent_run(experiment_name, pipeline_run_id)
    if found is not None:
        return found
    exp_id = session.configure(experiment_name)
    client = MlflowClient()
    run = client.create_run(
        exp_id,
        run_name=f"pipeline-{pipeline_run_id[:40]}",
        tags={
            **session.source_tags(),
            TAG_PIPELINE_RUN: pipeline_run_id,
            TAG_KIND: "pipeline",
            **tags,
        },
    )
    mine = str(run.info.run_id)
    time.sleep(PARENT_SETTLE_SECONDS if settle_seconds is None else settle_seconds)
    parents = _parent_runs(exp_id, pipeline_run_id)
    winner = parents[0] if parents else mine
    if winner != mine:
        log.info(
            "parent run of %s: %s was created first; deleting %s", pipeline_run_id, winner, mine
        )
        client.delete_run(mine)
        return winner
    _log_params(client, mine, params)
    return mine


def _parent_runs(experiment_id: str, pipeline_run_id: str) -> list[str]:
    """The live parent runs of a pipeline run, oldest first (start time, then run id)."""
    from mlflow.tracking import MlflowClient

    flt = f"tags.`{TAG_PIPELINE_RUN}` = '{pipeline_run_id}' and tags.`{TAG_KIND}` = 'pipeline'"
    runs = MlflowClient().search_runs([experiment_id], filter_string=flt, max_results=100)
    ordered = sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return [str(r.info.run_id) for r in ordered]


def find_parent_run(experiment_name: str, pipeline_run_id: str) -> str | None:
    """The parent run of ``pipeline_run_id`` (the oldest, should parallel steps have made
    more, see :func:`get_or_create_parent_run`) or None; creates nothing but the experiment."""
    parents = _parent_runs(session.configure(experiment_name), pipeline_run_id)
    return parents[0] if parents else None


def _log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    """Set tags on a run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics to a run."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):  # one request per 1000 (MLflow's batch limit)
        client.log_batch(run_id, metrics=items[i : i + 1000])


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Log a file or directory as an artifact of a run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if Path(path).is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    else:
        client.log_artifact(run_id, str(path), artifact_path)


@contextmanager
def model_run(
    experiment_name: str,
    parent_run_id: str,
    pipeline_run_id: str,
    model_key: str,
    tags: Mapping[str, str],
    params: Mapping[str, str],
) -> Iterator[str]:
    """Start (or resume) the nested run of ``model_key`` under the parent run.

    Yields the run id; the run is active (``mlflow.active_run()``) inside the block.
    """
    import mlflow

    exp_id = session.configure(experiment_name)
    flt = (
        f"tags.`{TAG_PIPELINE_RUN}` = '{pipeline_run_id}' and "
        f"tags.`{TAG_MODEL_KEY}` = '{model_key}'"
    )
    found = _search_one(exp_id, flt)
    all_tags = {
        **session.source_tags(),
        TAG_PIPELINE_RUN: pipeline_run_id,
        TAG_MODEL_KEY: model_key,
        TAG_KIND: "model",
        "mlflow.parentRunId": parent_run_id,
        **tags,
    }
    if found is not None:
        run = mlflow.start_run(run_id=found.info.run_id)
    else:
        run = mlflow.start_run(
            experiment_id=exp_id,
            run_name=model_key,
            nested=True,
            parent_run_id=parent_run_id,
            tags=all_tags,
        )
        from mlflow.tracking import MlflowClient

        _log_params(MlflowClient(), run.info.run_id, params)
    try:
        yield str(run.info.run_id)
        mlflow.end_run("FINISHED")
    except KeyboardInterrupt:  # SIGINT: the run was stopped, not broken
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise


def make_epoch_logger(run_id: str, phase: str, step_offset: int = 0) -> Any:
    """A Keras callback logging every epoch's metrics (and learning rate) to ``run_id``.

    Metrics are logged as-is (``loss``, ``val_accuracy``...) with ``step`` = global epoch, and
    the training phase (``head``/``finetune``/``full``) as a tag, MONAI-style: tracking is
    attached to training from outside, not written into the loop.
    """
    import keras
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()

    class _EpochLogger(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            import time

            logs = dict(logs or {})
            try:
                lr = self.model.optimizer.learning_rate
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
            except Exception:
                pass
            ts = int(time.time() * 1000)
            step = step_offset + epoch
            metrics = [
                Metric(str(k), float(v), ts, step)
                for k, v in logs.items()
                if isinstance(v, int | float) or hasattr(v, "__float__")
            ]
            client.log_batch(run_id, metrics=metrics)
            client.set_tag(run_id, TAG_LAST_PHASE, phase)

    return _EpochLogger()


def end_run(run_id: str, status: str) -> None:
    """Mark a run ``FINISHED``/``FAILED``/``KILLED`` with an end time (the UI shows a duration)."""
    from mlflow.tracking import MlflowClient

    MlflowClient().set_terminated(run_id, status)


def run_tags(run_id: str) -> dict[str, str]:
    """A run's tags."""
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient().get_run(run_id).data.tags)


def log_dataset(
    run_id: str,
    name: str,
    digest: str,
    source: Mapping[str, Any],
    profile: Mapping[str, Any],
    context: str,
    schema_columns: Sequence[str] = (),
) -> None:
    """Record a dataset as an input of a run (the MLflow UI's Dataset column: lineage).

    Args:
        run_id: The run that used the data.
        name: Dataset name (e.g. ``dataset_1`` or ``manifest``).
        digest: Content digest (the manifest hash).
        source: Where it came from: data version, registry and commit, paths.
        profile: Small summary (row and class counts).
        context: ``training``, ``evaluation`` or ``ingest``.
        schema_columns: Column names, recorded as the schema.
    """
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    schema = {"mlflow_colspec": [{"name": c, "type": "string"} for c in schema_columns]}
    entity = Dataset(
        name=name,
        digest=digest[:36],
        source_type="cxrflow-dvc",
        source=json.dumps(dict(source), sort_keys=True, default=str),
        schema=json.dumps(schema),
        profile=json.dumps(dict(profile), sort_keys=True, default=str),
    )
    MlflowClient().log_inputs(
        run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])]
    )


def fail_running_children(
    experiment_name: str, pipeline_run_id: str, status: str = "FAILED"
) -> list[str]:
    """Mark the pipeline run's nested runs still ``RUNNING`` as ``status`` (a killed step).

    Args:
        experiment_name: The pipeline's MLflow experiment.
        pipeline_run_id: The pipeline run.
        status: ``FAILED`` (a step died), or ``KILLED`` (the run was stopped).

    Returns:
        The ids of the runs it ended.
    """
    from mlflow.tracking import MlflowClient

    exp_id = session.configure(experiment_name)
    client = MlflowClient()
    flt = (
        f"tags.`{TAG_PIPELINE_RUN}` = '{pipeline_run_id}' and tags.`{TAG_KIND}` = 'model' "
        "and attributes.status = 'RUNNING'"
    )
    stale = [r.info.run_id for r in client.search_runs([exp_id], filter_string=flt)]
    for run_id in stale:
        client.set_terminated(run_id, status)
    return [str(r) for r in stale]
