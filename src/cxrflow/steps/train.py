"""The model steps: one task per key of ``params.models`` (``model_0`` ... ``model_3``)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow import names
from cxrflow.artifacts import ModelInfo, Provenance
from cxrflow.jsonio import write_json_atomic
from cxrflow.logs import emit_progress
from cxrflow.steps.frame import StepContext, step_frame
from cxrflow.steps.lineage import common_tags, data_source, split_digest
from cxrflow.steps.spec import BASE_MODEL, Port, StepSpec

if TYPE_CHECKING:
    from cxrflow.config import ModelSpec, Params
    from cxrflow.weights import Weights


log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
MODEL_INFO_FILE = ModelInfo.FILE


MODEL_DESCRIPTIONS = {
    "scratch": "{arch} from scratch on {dataset}.",
    "imagenet": "ImageNet {arch} fine-tuned on {dataset} (head, then the last layers).",
    "transfer": "{init} transfer-fine-tuned on {dataset} (head first, then unfrozen layers).",
}


def describe_model(params: Params, model_key: str) -> str:
    """One line saying what model ``model_key`` is (the KFP UI's task description)."""
    spec = params.models[model_key]
    return MODEL_DESCRIPTIONS[spec.init_kind].format(
        arch=spec.architecture, dataset=spec.dataset, init=spec.init
    )


def checkpoint_dir(
    params: Params,
    pipeline_run_id: str,
    model_key: str,
    out: Path,
    volume: str | Path | None = None,
) -> Path:
    """Where a training step checkpoints every epoch, so that a retried pod resumes.

    ``train.checkpoint_root`` if set; else ``volume`` (the cluster's checkpoint volume,
    ``cluster.checkpoints.mount_path``) when it is mounted here, i.e. a directory: kfp.local
    mounts no volume and keeps the checkpoints in the output; else inside the step's output
    (lost with the pod). Durable roots are keyed by pipeline run and model.
    """
    root = params.train.checkpoint_root
    if not root and volume and Path(volume).is_dir():
        root = str(volume)
    elif not root and volume:
        log.info("checkpoint volume %s is not mounted here: checkpoints stay in the output", volume)
    if root:
        return Path(root) / pipeline_run_id / model_key
    return out / "checkpoints"


def _run_tags(params: Params, prov: Provenance, spec: ModelSpec) -> dict[str, str]:
    pretrained = spec.init
    if spec.init_kind == "imagenet":
        pretrained = spec.weights_path or "NONE (random init)"
    return {
        **common_tags(params, prov),
        names.TAG_DATASET: spec.dataset,
        names.TAG_ARCHITECTURE: spec.architecture,
        names.TAG_INIT: spec.init,
        names.TAG_PRETRAINED: pretrained,
    }


def _weights_tags(model_key: str, spec: ModelSpec, weights: Weights | None) -> dict[str, str]:
    """What the run must say about its pretrained weights (the file it loaded, checked by
    :func:`cxrflow.weights.fetched_weights`) or their absence."""
    if weights is not None:
        return {names.TAG_PRETRAINED_SHA256: weights.sha256}
    if spec.init_kind == "imagenet":
        return {
            names.TAG_WARNING: f"{spec.architecture} trained WITHOUT ImageNet weights "
            f"(models.{model_key}.weights_path is null)"
        }
    return {}


def _callbacks(ctx: StepContext, run_id: str, model_key: str, epochs_max: int) -> Any:
    """The callback factory train_model calls per phase: MLflow epoch logging (timed as
    tracking) and one progress line per epoch for the runner."""
    import keras

    class _Progress(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self, phase: str) -> None:
            super().__init__()
            self.phase = phase

        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            figures = " ".join(
                f"{k}={float(v):.4f}"
                for k, v in (logs or {}).items()
                if k in ("loss", "accuracy", "val_loss", "val_accuracy")
            )
            emit_progress(model_key, f"{self.phase} epoch {epoch + 1}/{epochs_max} {figures}")

    def factory(phase: str, offset: int) -> list[Any]:
        logger = ctx.tracking.make_epoch_logger(run_id, phase, offset)
        return [ctx.times.callback(logger, "tracking"), _Progress(phase)]

    return factory


def _load_base(ctx: StepContext, model_key: str, spec: ModelSpec, base_model: Any) -> Any:
    """The trained model a transfer starts from (None for a model from scratch/ImageNet)."""
    if spec.base_model_key is None:
        return None
    if base_model is None:
        raise ValueError(
            f"{model_key}: init={spec.init} needs the trained {spec.init} "
            f"(--base-model {spec.init}'s output directory)"
        )
    import keras

    with ctx.phase("model_io"):
        return keras.models.load_model(Path(base_model) / MODEL_FILE)


def _start_run(ctx: StepContext, model_key: str, spec: ModelSpec) -> Any:
    """The model's nested MLflow run (resumed by a retried attempt), as a context manager."""
    from cxrflow.config import flatten_params

    return ctx.tracking.model_run(
        ctx.params.tracking.experiment_name,
        ctx.open_parent(),
        ctx.run_key,
        model_key,
        _run_tags(ctx.params, ctx.prov, spec),
        flatten_params(ctx.params),
    )


def _log_inputs(
    ctx: StepContext,
    run_id: str,
    spec: ModelSpec,
    weights: Weights | None,
    table: Any,
    data: Any,
) -> None:
    """What the run starts from: its weights (or their absence) and its training data."""
    from cxrflow.config import DATASETS

    tags = _weights_tags(ctx.step, spec, weights)
    if tags:
        ctx.tracking.set_tags(run_id, tags)
    ctx.tracking.log_dataset(
        run_id,
        f"{spec.dataset}/train+val",
        split_digest(table, ("train", "val")),
        {**data_source(ctx.prov), "manifest_hash": ctx.prov.manifest_hash},
        {"train": len(data[0]), "val": len(data[2]), "classes": list(DATASETS[spec.dataset])},
        "training",
    )


def run_train(
    params: Params,
    model_key: str,
    dataset: str | Path,
    splits: str | Path,
    model: str | Path,
    base_model: str | Path | None = None,
    verbose: int = 2,
    *,
    pipeline_run_id: str | None = None,
    checkpoint_volume: str | Path | None = None,
) -> dict[str, Any]:
    """train: train one model of ``params.models`` and log it to MLflow.

    Reads params ``train``, ``models.<model_key>`` (and logs the whole configuration). A model
    whose ``init`` names another model starts from that model's output (``base_model``).
    Writes ``model.keras``, ``history.json`` and ``model_info.json`` (incl. the MLflow model
    URI) to ``model``. Training checkpoints every epoch (:func:`checkpoint_dir`, with
    ``checkpoint_volume``) and resumes from the checkpoint a killed attempt of the same
    pipeline run left, in the same nested MLflow run. The train and val images are decoded
    once into a temporary file (``$TMPDIR``, 50 KB an image at 224 px, removed at the end)
    and streamed from it a batch at a time, so memory does not grow with the dataset.

    First of all the pretrained weights file (``models.<model_key>.weights_path``: local,
    ``s3://`` or ``dvc://``) is fetched into a temporary folder and checked against
    ``weights_sha256`` (:func:`cxrflow.weights.fetched_weights`), so that missing or wrong
    weights fail in seconds, before the heavy imports and before any image is decoded.
    """
    with (
        step_frame(model_key, params, dataset_dir=dataset, pipeline_run_id=pipeline_run_id) as ctx,
        ExitStack() as stack,
    ):
        from cxrflow.config import check_model_key
        from cxrflow.weights import fetched_weights

        spec = check_model_key(params, model_key)
        with ctx.phase("model_io"):
            weights = stack.enter_context(fetched_weights(spec, params.data, model_key))
        with ctx.phase("imports"):
            from cxrflow.config import DATASETS
            from cxrflow.data.split import read_split_table
            from cxrflow.datasets import write_split_cache
            from cxrflow.train import train_model
        classes, size, out = DATASETS[spec.dataset], params.train.image_size, Path(model)
        train_params = params.train
        if spec.epochs is not None:  # this model's own epoch budget
            train_params = train_params.model_copy(update={"epochs": spec.epochs})
        out.mkdir(parents=True, exist_ok=True)
        table = read_split_table(splits, spec.dataset)
        with tempfile.TemporaryDirectory(prefix="cxrflow-images-") as cache:
            with ctx.phase("data"):
                data = (
                    *write_split_cache(dataset, table, "train", classes, size, cache),
                    *write_split_cache(dataset, table, "val", classes, size, cache),
                )
            log.info("%s: %d train / %d val images", model_key, len(data[0]), len(data[2]))
            base = _load_base(ctx, model_key, spec, base_model)
            with _start_run(ctx, model_key, spec) as run_id:
                _log_inputs(ctx, run_id, spec, weights, table, data)
                t0 = time.perf_counter()
                ckpt = checkpoint_dir(params, ctx.run_key, model_key, out, checkpoint_volume)
                with ctx.phase("compute"):
                    result = train_model(
                        spec,
                        train_params,
                        classes,
                        data,
                        base,
                        _callbacks(ctx, run_id, model_key, train_params.epochs),
                        verbose,
                        checkpoint_dir=ckpt,
                        model_key=model_key,
                        weights_file=None if weights is None else weights.path,
                    )
                train_s = time.perf_counter() - t0
                model_uri = _save_model(ctx, run_id, out, spec, result, train_s, data)
        info = ModelInfo(
            model_key=model_key,
            classes=list(classes),
            image_size=size,
            dataset=spec.dataset,
            run_id=run_id,
            model_uri=model_uri,
            pipeline_run_id=ctx.run_key,
            pretrained=result.pretrained,
            phases=result.phases,
            train_seconds=train_s,
            resumed_from_epoch=result.resumed_from_epoch,
        )
        info.write(out)
        _after_training(params, ckpt)
        val_acc = result.history.get("val_accuracy") or [float("nan")]
        ctx.summary = (
            f"{len(result.history.get('loss', []))} epochs, best val_accuracy "
            f"{max(val_acc):.3f} ({train_s:.0f} s)"
        )
    return info.model_dump()


def _after_training(params: Params, ckpt: Path) -> None:
    """What becomes of a finished training's checkpoint.

    In the step's output or on the cluster's volume it is removed: the model is saved and
    logged, and a checkpoint (hundreds of MB for ResNet-50) must not become part of the output
    or fill the volume night after night (KFP retries only the task that failed). Under
    ``train.checkpoint_root``, a root the user chose, only the finished model's weights stay
    (the files of its last epochs are gone already): ``cxrflow pipeline run --local --resume``
    then restores this model in seconds instead of training it again. Delete the pipeline
    run's folder there once the run is done.
    """
    if params.train.checkpoint_root:
        log.info("kept %s: a resumed pipeline run restores this model from it", ckpt)
        return
    shutil.rmtree(ckpt, ignore_errors=True)


def _save_model(
    ctx: StepContext,
    run_id: str,
    out: Path,
    spec: ModelSpec,
    result: Any,
    train_s: float,
    data: Any,
) -> str:
    """Save the model and its history to the output, log the run's figures and the model;
    returns the logged model's URI."""
    from cxrflow.config import DATASETS
    from cxrflow.models import get_architecture

    if result.resumed_from_epoch:
        ctx.tracking.set_tags(run_id, {names.TAG_RESUMED_FROM_EPOCH: result.resumed_from_epoch})
    with ctx.phase("model_io"):
        result.model.save(out / MODEL_FILE)
    write_json_atomic(out / "history.json", {"history": result.history, "phases": result.phases})
    ctx.tracking.log_metrics(
        run_id,
        {
            "train_seconds": train_s,
            "epochs_total": float(len(result.history.get("loss", []))),
            "n_train": float(len(data[0])),
            "n_val": float(len(data[2])),
            names.METRIC_DATA_SECONDS: ctx.times.seconds.get("data", 0.0),
        },
    )
    ctx.tracking.log_artifact(run_id, out / "history.json")
    model_key = ctx.step
    return str(
        ctx.tracking.log_keras_model(
            result.model,
            "model",
            {
                "classes": list(DATASETS[spec.dataset]),
                "image_size": ctx.params.train.image_size,
                "model_key": model_key,
                "preprocessing": get_architecture(spec.architecture).preprocessing,
            },
        )
    )


def _publish(result: Mapping[str, Any] | None, outputs: Mapping[str, Any]) -> None:
    if result is not None:
        outputs["model"].metadata.update(
            {"mlflow_run_id": result["run_id"], "model_uri": result["model_uri"]}
        )


SPEC = StepSpec(
    name="train",
    run=run_train,
    kind="train",
    reads=("train", "models.{key}", "tracking"),
    inputs=("dataset", "splits", BASE_MODEL),
    outputs=(Port("model", "Model", "models/{key}"),),
    optional=(BASE_MODEL,),
    per_model=True,
    preload=("tensorflow", "keras", "mlflow.keras", "cxrflow.train"),
    publish=_publish,
    show=lambda info: json.dumps(
        {k: info[k] for k in ("model_key", "run_id", "model_uri", "train_seconds")},
        indent=2,
        sort_keys=True,
    ),
)
