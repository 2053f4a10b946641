"""The ``cxrflow export`` step: find the trained model (a ``train`` output directory or an MLflow
model URI) and what it was trained on, export it calibrated on its training split, refuse an
int8 model that loses too much accuracy, and optionally log the files to the model's run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow.export.bundle import export_model
from cxrflow.export.calibration import (
    CHECK_SPLIT,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_CHECK_IMAGES,
    load_calibration,
    load_check_split,
)
from cxrflow.export.contract import ARTIFACT_PATH, EXPORT_INFO_FILE, FP32_FILE, INT8_FILE

if TYPE_CHECKING:
    from cxrflow.config import Params


MAX_DROP_POINTS = 1.0
"""The accuracy (percentage points) int8 may lose against fp32 on the check split."""


@dataclass(frozen=True)
class SourceModel:
    """A trained model to export and what it was trained on.

    Attributes:
        model: The Keras model.
        ref: Where it came from (MLflow model URI or model directory).
        classes: Class names in output order.
        image_size: Input side.
        model_key: The key in ``params.models``.
        dataset: The dataset it was trained on (its training split calibrates).
        run_id: Its MLflow run, where known.
    """

    model: Any
    ref: str
    classes: tuple[str, ...]
    image_size: int
    model_key: str
    dataset: str
    run_id: str | None


# --------------------------------------------------------------------------- the CLI's step


def _run_id_of(ref: str) -> str | None:
    """The MLflow run behind a ``runs:/<id>/...`` or ``models:/<name>@<alias>`` URI."""
    if ref.startswith("runs:/"):
        return ref[len("runs:/") :].split("/", 1)[0] or None
    if ref.startswith("models:/") and "@" in ref:
        from cxrflow import tracking

        name, _, alias = ref[len("models:/") :].partition("@")
        found = tracking.alias_version(name, alias)
        return str(found["run_id"]) if found and found.get("run_id") else None
    return None


def load_source_model(params: Params, ref: str) -> SourceModel:
    """The model to export: a model directory (``train``'s output) or an MLflow model URI.

    Raises:
        FileNotFoundError: A directory without ``model.keras`` / ``model_info.json``.
        ValueError: Metadata missing, or a model key not in ``params.models``.
    """
    from cxrflow.steps import MODEL_FILE, MODEL_INFO_FILE

    path = Path(ref)
    if path.is_dir():
        import keras

        for name in (MODEL_FILE, MODEL_INFO_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name}: not found (a `cxrflow train` output?)")
        from cxrflow.artifacts import ModelInfo

        info = ModelInfo.read(path)
        model = keras.models.load_model(path / MODEL_FILE)
        meta: dict[str, Any] = info.model_dump()
        run_id = info.run_id
    elif ":/" not in ref:  # not a URI (models:/, runs:/, s3://...): a directory that is not there
        raise FileNotFoundError(
            f"{ref}: no such model directory (give a `cxrflow train` output or an MLflow "
            "model URI such as models:/<name>@<alias>)"
        )
    else:
        from cxrflow import tracking

        model, meta = tracking.load_model(ref)
        run_id = None
    missing = [k for k in ("classes", "image_size", "model_key") if not meta.get(k)]
    if missing:
        raise ValueError(f"{ref}: model has no cxrflow metadata ({', '.join(missing)})")
    key = str(meta["model_key"])
    dataset = meta.get("dataset") or (params.models[key].dataset if key in params.models else "")
    if not dataset:
        raise ValueError(
            f"{ref}: model key {key!r} is not in params models {list(params.models)}: "
            "cannot tell which training split to calibrate on"
        )
    return SourceModel(
        model=model,
        ref=ref,
        classes=tuple(meta["classes"]),
        image_size=int(meta["image_size"]),
        model_key=key,
        dataset=str(dataset),
        run_id=str(run_id) if run_id else None,
    )


def run_export(
    params: Params,
    model_ref: str,
    dataset_dir: str | Path,
    splits_dir: str | Path,
    out_dir: str | Path,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    log_to_run: bool = False,
    check_images: int = DEFAULT_CHECK_IMAGES,
    max_drop_points: float = MAX_DROP_POINTS,
) -> dict[str, Any]:
    """Step ``export``: ONNX fp32 + static int8 of a trained model, calibrated on its training
    split (seed ``train.seed``) and compared with fp32 on its validation split; optionally
    logged to the model's MLflow run under ``onnx/``.

    Args:
        params: The resolved configuration (``models``, ``train.seed``, ``tracking``).
        model_ref: A ``cxrflow train`` output directory or an MLflow model URI.
        dataset_dir: An ingest output directory.
        splits_dir: A split output directory.
        out_dir: Where the files go.
        calibration_images: Training images to calibrate on.
        log_to_run: Log the files to the model's run.
        check_images: Validation images (balanced, seed ``train.seed``) to compare fp32 and
            int8 on; 0 = no comparison.
        max_drop_points: Fail when int8 loses more accuracy than this on them.

    Returns:
        ``export.json``'s content, plus ``logged_to_run`` (the run id, or None).

    Raises:
        ValueError: ``log_to_run`` but the model's run cannot be told from ``model_ref``, or
            int8 lost more than ``max_drop_points`` of accuracy (the files are written and
            not logged; the fp32 ``model.onnx`` can still be served).
    """
    src = load_source_model(params, model_ref)
    run_id = src.run_id or (_run_id_of(model_ref) if log_to_run else None)
    if log_to_run and not run_id:
        raise ValueError(
            f"{model_ref}: cannot tell the model's MLflow run; --log-to-run needs a model "
            "directory, a runs:/<id>/... URI or a models:/<name>@<alias> URI"
        )
    calib = load_calibration(
        dataset_dir,
        splits_dir,
        src.dataset,
        src.classes,
        src.image_size,
        calibration_images,
        params.train.seed,
    )
    check = None
    if check_images > 0:
        check = load_check_split(
            dataset_dir,
            splits_dir,
            src.dataset,
            src.classes,
            src.image_size,
            check_images,
            params.train.seed,
        )
    info = export_model(
        src.model,
        out_dir,
        src.classes,
        src.image_size,
        src.model_key,
        calib,
        source=model_ref,
        dataset=src.dataset,
        check=check,
    )
    drop = info["check"]["drop_points"]["accuracy"] if "check" in info else None
    if drop is not None and drop > max_drop_points:
        raise ValueError(
            f"{Path(out_dir) / INT8_FILE}: int8 loses {drop:.1f} points of accuracy against "
            f"fp32 on {info['check']['n']} {CHECK_SPLIT} images (limit {max_drop_points}); "
            f"serve {FP32_FILE} instead, or calibrate on more images"
        )
    logged = None
    if log_to_run and run_id:
        from cxrflow import tracking

        tracking.configure(params.tracking.experiment_name)
        for name in (FP32_FILE, INT8_FILE, EXPORT_INFO_FILE):
            tracking.log_artifact(run_id, Path(out_dir) / name, ARTIFACT_PATH)
        logged = run_id
    return {**info, "logged_to_run": logged}
