"""MLflow tracking: the only module that imports ``mlflow``.

Run layout: one *parent* run per pipeline run (tag ``cxrflow.pipeline_run_id``) and one nested
run per model (tag ``cxrflow.model_key``). Steps that start in parallel may each create the
parent; they converge on the oldest and delete their duplicates
(:func:`get_or_create_parent_run`). Every run carries the flattened params, the git
commit, the data version and manifest hash, the profile and the pipeline run id, so that any
number in MLflow can be traced to its inputs. The tracking URI comes from the environment
(``MLFLOW_TRACKING_URI``), defaulting to ``sqlite:///mlruns.db`` with local artifacts.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

from cxrflow.names import (
    TAG_KIND,
    TAG_LAST_PHASE,
    TAG_MODEL_KEY,
    TAG_PIPELINE_RUN,
)

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""MLflow 3's experiment type; unset, the UI may open the experiment as a GenAI one (traces)."""
EXPERIMENT_KIND = "custom_model_development"
"""The value the MLflow 3 UI shows as "Machine learning" (``genai_development``: GenAI)."""
SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"
SOURCE_GIT_COMMIT_TAG = "mlflow.source.git.commit"
"""MLflow's own source tags: what fills the Source column of the runs page."""


def tracking_uri() -> str:
    """The tracking URI: ``MLFLOW_TRACKING_URI`` or the local sqlite default (made absolute)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return "sqlite:///" + str(Path("mlruns.db").resolve())


def _artifact_root(uri: str) -> str | None:
    """Artifact root for new experiments: ``CXRFLOW_ARTIFACT_ROOT`` or next to a sqlite db."""
    env = os.environ.get("CXRFLOW_ARTIFACT_ROOT", "").strip()
    if env:
        return env
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def configure(experiment_name: str) -> str:
    """Point mlflow at the tracking server and experiment; returns the experiment id."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment_name)
    if exp is None:
        try:
            exp_id = mlflow.create_experiment(
                experiment_name,
                artifact_location=_artifact_root(uri),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except Exception:  # created concurrently by a parallel step
            exp = mlflow.get_experiment_by_name(experiment_name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
        if EXPERIMENT_KIND_TAG not in (exp.tags or {}):  # made by an older cxrflow, or by hand
            mlflow.MlflowClient().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)


def source_tags() -> dict[str, str]:
    """MLflow's own source tags for a new run: the command, where it ran, the git commit.

    The runs page's Source column shows them (runs created through the client get none from
    MLflow). The name is the ``cxrflow`` command and its subcommands (``cxrflow ingest``);
    the type ``JOB`` in a Kubeflow pod, else ``LOCAL``; the commit is :func:`git_commit`'s,
    without its ``-dirty`` mark (``cxrflow.git_commit`` keeps it), and absent when unknown.
    """
    import sys

    words = ["cxrflow"]
    if sys.argv and Path(sys.argv[0]).name == "cxrflow":
        args = iter(sys.argv[1:])
        for word in args:  # the subcommands: after the global options, before the others
            if word in ("--params", "--profile", "--set"):
                next(args, None)
            elif (word.startswith("-") and len(words) > 1) or "/" in word or len(words) == 3:
                break
            elif not word.startswith("-"):
                words.append(word)
    tags = {
        SOURCE_NAME_TAG: " ".join(words),
        SOURCE_TYPE_TAG: "JOB" if os.environ.get("KFP_POD_NAME") else "LOCAL",
    }
    commit = git_commit().removesuffix("-dirty")
    if commit != "unknown":
        tags[SOURCE_GIT_COMMIT_TAG] = commit
    return tags


def git_commit() -> str:
    """The git commit of the code (``CXRFLOW_GIT_COMMIT`` in images, else ``git rev-parse``)."""
    env = os.environ.get("CXRFLOW_GIT_COMMIT", "").strip()
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        sha = out.stdout.strip()
        if out.returncode == 0 and sha:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


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
    exp_id = configure(experiment_name)
    client = MlflowClient()
    run = client.create_run(
        exp_id,
        run_name=f"pipeline-{pipeline_run_id[:40]}",
        tags={**source_tags(), TAG_PIPELINE_RUN: pipeline_run_id, TAG_KIND: "pipeline", **tags},
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

    exp_id = configure(experiment_name)
    flt = (
        f"tags.`{TAG_PIPELINE_RUN}` = '{pipeline_run_id}' and "
        f"tags.`{TAG_MODEL_KEY}` = '{model_key}'"
    )
    found = _search_one(exp_id, flt)
    all_tags = {
        **source_tags(),
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


def log_keras_model(model: Any, name: str, metadata: Mapping[str, Any]) -> str:
    """Log a Keras model in the active run as the served image classifier.

    The logged model is :class:`cxrflow.serving.ImageClassifier`, an MLflow pyfunc taking image
    files (base64 bytes or paths) and returning class names and probabilities, with the Keras
    model inside, its signature, an input example and requirements pinned to what this
    environment installs (``tensorflow-cpu``); the input example is a grey PNG, not a tensor of
    training images (no patient's picture goes into the model's files).

    Returns:
        The model URI (``models:/<model_id>``).
    """
    from cxrflow import serving

    return serving.log_keras_classifier(model, name, metadata)


def register_model(
    model_uri: str, name: str, alias: str, tags: Mapping[str, str], description: str = ""
) -> int:
    """Register ``model_uri`` under ``name`` and point ``alias`` at the new version."""
    from mlflow.tracking import MlflowClient

    import mlflow

    client = MlflowClient()
    with suppress(Exception):
        client.create_registered_model(
            name,
            description="COVID-19 / bacterial / normal chest X-ray classifier (cxrflow).",
        )
    mv = mlflow.register_model(model_uri, name, tags=dict(tags))
    if description:
        client.update_model_version(name, mv.version, description=description)
    client.set_registered_model_alias(name, alias, mv.version)
    return int(mv.version)


def alias_version(name: str, alias: str) -> dict[str, Any] | None:
    """The model version an alias points at (``{"version", "tags", "run_id"}``), or None."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        mv = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return {"version": int(mv.version), "tags": dict(mv.tags or {}), "run_id": mv.run_id}


class ModelNotFoundError(LookupError):
    """No model behind a model URI (nothing registered, unknown alias or run)."""


def load_model(model_uri: str, *, allow_onnx: bool = False) -> tuple[Any, dict[str, Any]]:
    """Load the model behind a model URI and its cxrflow metadata (classes, image size).

    A model logged by :mod:`cxrflow.serving` (the pyfunc image classifier) gives its backend:
    the Keras model, or with ``allow_onnx`` the :class:`cxrflow.export.OnnxClassifier` of an
    int8 export (``models:/<name>-int8@<alias>``); both have Keras' ``predict(x, verbose=0)``.
    A model logged with the Keras flavour (before the pyfunc) loads as Keras.

    Raises:
        ModelNotFoundError: Nothing is tracked yet, or the URI names no model; the message says
            what to do. No tracking database is created as a side effect.
        ValueError: The URI names an ONNX model and ``allow_onnx`` is False (a caller that needs
            the Keras model, such as ``cxrflow export``).
    """
    uri = tracking_uri()
    if model_uri.startswith(("models:/", "runs:/")) and not tracking_store_exists():
        raise ModelNotFoundError(
            f"no MLflow tracking store at {uri}: nothing has been trained here yet; run "
            "`make run` first, or set MLFLOW_TRACKING_URI to your tracking server"
        )
    from mlflow.exceptions import MlflowException

    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        info = mlflow.models.get_model_info(model_uri)
        meta = dict(info.metadata or {})
        if "keras" in (info.flavors or {}):
            return mlflow.keras.load_model(model_uri), meta
        if meta.get("backend") == "onnx" and not allow_onnx:
            raise ValueError(
                f"{model_uri}: an int8 ONNX model; this needs the Keras model it was exported "
                "from (the registered model without -int8)"
            )
        from cxrflow import serving

        model = serving.load_classifier(model_uri).model
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"{model_uri}: no such model in {uri} ({first}); register one with `make run` "
            "or pass --model-uri"
        ) from None
    return model, meta


def find_parent_run(experiment_name: str, pipeline_run_id: str) -> str | None:
    """The parent run of ``pipeline_run_id`` (the oldest, should parallel steps have made
    more, see :func:`get_or_create_parent_run`) or None; creates nothing but the experiment."""
    parents = _parent_runs(configure(experiment_name), pipeline_run_id)
    return parents[0] if parents else None


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


def ensure_store(uri: str | None = None) -> bool:
    """Create a sqlite tracking store's schema now, once, whoever else is starting.

    MLflow creates a sqlite store's tables when a process first opens it and finds some
    missing; two processes doing so at once both create them and the second fails (``table
    webhooks already exists``): two local runs started together on a new store. A runner calls
    this before any step starts. It holds an exclusive ``flock`` on the database's folder (no
    lock file is left behind) while it checks the schema (stdlib ``sqlite3``, read-only) and,
    only when the store is new, lets MLflow create it; an existing store costs no MLflow import.
    Other URIs (a tracking server, PostgreSQL) are left alone: their schema is the server's.

    Args:
        uri: The tracking URI (default: :func:`tracking_uri`).

    Returns:
        Whether this call created the schema.
    """
    import fcntl

    uri = uri or tracking_uri()
    if not uri.startswith("sqlite:///"):
        return False
    db = Path(uri[len("sqlite:///") :]).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        if _has_schema(db):
            return False
        from mlflow.tracking import MlflowClient

        # the first request opens the store: MLflow creates every table and the default
        # experiment, as a step would, but alone
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        return True
    finally:
        os.close(folder)  # releases the lock


def _has_schema(db: Path) -> bool:
    """Whether the sqlite file ``db`` holds MLflow's tables (its migrations ran to the end)."""
    import sqlite3

    if not db.is_file():
        return False
    try:
        with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not {"alembic_version", "experiments", "runs"} <= tables:
                return False
            return bool(conn.execute("SELECT version_num FROM alembic_version").fetchall())
    except sqlite3.Error:
        return False


def tracking_store_exists() -> bool:
    """False when the default sqlite store has never been created (nothing was ever tracked).

    Read-only commands check this first, so that they never create an empty database.
    """
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).is_file()
    return True


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

    exp_id = configure(experiment_name)
    client = MlflowClient()
    flt = (
        f"tags.`{TAG_PIPELINE_RUN}` = '{pipeline_run_id}' and tags.`{TAG_KIND}` = 'model' "
        "and attributes.status = 'RUNNING'"
    )
    stale = [r.info.run_id for r in client.search_runs([exp_id], filter_string=flt)]
    for run_id in stale:
        client.set_terminated(run_id, status)
    return [str(r) for r in stale]


# --------------------------------------------------------------------- reading runs back


RUN_ID_PATTERN = r"^[0-9a-f]{32}$"
"""What an MLflow run id looks like (a pipeline run id never does: KFP's are UUIDs with dashes,
kfp.local's are ``<pipeline>-<timestamp>``)."""


class RunStore:
    """Read-only queries of a tracking server for ``cxrflow compare`` (any MLflow 3 server:
    sqlite, PostgreSQL, ``http(s)://``, Databricks), returning plain dicts so that callers need
    no MLflow types.

    A run record is ``{"run_id", "experiment_id", "run_name", "status", "start_time", "tags",
    "metrics", "params"}``; ``metrics`` holds each metric's latest value.

    Args:
        uri: The tracking URI (default: :func:`tracking_uri`).

    Raises:
        LookupError: The URI is the local sqlite default and no store was ever made there.
    """

    PAGE_SIZE = 500

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or tracking_uri()
        if self.uri.startswith("sqlite:///") and not Path(self.uri[len("sqlite:///") :]).is_file():
            raise LookupError(
                f"no MLflow tracking store at {self.uri}: nothing has been tracked there; set "
                "MLFLOW_TRACKING_URI or --tracking-uri to your tracking server"
            )
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)

    def experiment_id(self, name: str) -> str | None:
        """The id of the experiment called ``name`` (None when there is none)."""
        exp = self._client.get_experiment_by_name(name)
        return None if exp is None else str(exp.experiment_id)

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The record of one run (None when the server has no such run)."""
        from mlflow.exceptions import MlflowException

        try:
            return _record(self._client.get_run(run_id))
        except MlflowException:
            return None

    def search(
        self,
        experiment_ids: Sequence[str],
        filter_string: str = "",
        on_page: Any = None,
    ) -> list[dict[str, Any]]:
        """Every live run of the experiments matching ``filter_string``, oldest first.

        Pages through the results ``PAGE_SIZE`` at a time, calling ``on_page(n)`` after each
        page of ``n`` runs (a progress bar).
        """
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self._client.search_runs(
                list(experiment_ids),
                filter_string=filter_string,
                max_results=self.PAGE_SIZE,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            out.extend(_record(r) for r in page)
            if on_page is not None:
                on_page(len(page))
            token = page.token
            if not token:
                return out


def _record(run: Any) -> dict[str, Any]:
    return {
        "run_id": str(run.info.run_id),
        "experiment_id": str(run.info.experiment_id),
        "run_name": str(run.info.run_name or ""),
        "status": str(run.info.status),
        "start_time": int(run.info.start_time or 0),
        "tags": dict(run.data.tags),
        "metrics": {k: float(v) for k, v in run.data.metrics.items()},
        "params": dict(run.data.params),
    }


# ------------------------------------------------------------ registry: people in the loop


class RegistryAccessError(PermissionError):
    """The tracking server refused the credentials of the environment (HTTP 401/403)."""


def _refused(exc: BaseException) -> RegistryAccessError | None:
    """A :class:`RegistryAccessError` for an authentication or permission failure, else None."""
    text = str(exc)
    code = str(getattr(exc, "error_code", ""))
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or any(
        f"error code {n}" in text for n in (401, 403)
    ):
        what = "not authenticated" if "401" in text or code == "UNAUTHENTICATED" else "forbidden"
        return RegistryAccessError(
            f"{tracking_uri()}: {what}: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account with access to "
            "the model registry"
        )
    return None


def registered_model(name: str) -> dict[str, Any] | None:
    """A registered model (``{"name", "tags", "aliases"}``), or None when there is none.

    ``aliases`` maps each alias to its version. Reads the tracking URI of the environment
    (``MLFLOW_TRACKING_URI``, with ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or a token for a
    server with authentication).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        rm = MlflowClient(tracking_uri=tracking_uri()).get_registered_model(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None
        refused = _refused(exc)
        if refused is not None:
            raise refused from None
        raise
    return {
        "name": rm.name,
        "tags": dict(rm.tags or {}),
        "aliases": {str(k): int(v) for k, v in (rm.aliases or {}).items()},
    }


def model_version(name: str, version: int | str) -> dict[str, Any] | None:
    """One version of a registered model (``{"version", "tags", "run_id", "source"}``), or None."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        mv = MlflowClient(tracking_uri=tracking_uri()).get_model_version(name, str(version))
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        refused = _refused(exc)
        if refused is not None:
            raise refused from None
        raise
    return {
        "version": int(mv.version),
        "tags": dict(mv.tags or {}),
        "run_id": mv.run_id,
        "source": mv.source,
    }


def set_model_alias(name: str, alias: str, version: int | str) -> None:
    """Point ``alias`` of a registered model at ``version``."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri()).set_registered_model_alias(name, alias, str(version))


def set_model_version_tags(name: str, version: int | str, tags: Mapping[str, Any]) -> None:
    """Set tags on one version of a registered model."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri())
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, str(v))


def set_registered_model_tag(name: str, key: str, value: str) -> None:
    """Set one tag on a registered model (the alias history is kept this way)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri()).set_registered_model_tag(name, key, value)
