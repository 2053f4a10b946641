"""Step ``export``: the model this run registered, as ONNX fp32 and static int8."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow import names
from cxrflow.artifacts import Registration
from cxrflow.jsonio import write_json_atomic
from cxrflow.steps.frame import step_frame
from cxrflow.steps.spec import Port, StepSpec

if TYPE_CHECKING:
    from cxrflow.config import Params


def run_export(
    params: Params,
    dataset: str | Path,
    splits: str | Path,
    registered: str | Path,
    exported: str | Path,
    pipeline_run_id: str | None = None,
) -> dict[str, Any]:
    """export: the model registered by this run to ONNX fp32 and static int8, logged to its run.

    Reads params ``export``, ``train.seed``, ``tracking``. int8 is calibrated on the model's
    own training split and compared with fp32 on its validation split; the step fails when
    int8 loses more than ``export.max_drop_points`` of accuracy (the files are then written
    but not logged). Both models and ``export.json`` go to the registered model's MLflow run
    under ``onnx/``, with the int8 accuracy drop as a tag; the int8 model is also registered as
    ``<model_name>-int8`` (a served image classifier, ONNX Runtime inside) under the same alias
    as the Keras version, tagged with that drop.
    """
    with step_frame("export", params, dataset_dir=dataset, pipeline_run_id=pipeline_run_id) as ctx:
        with ctx.phase("imports"):
            from cxrflow import export
        reg = Registration.read(registered)
        ep, out = params.export, Path(exported)
        out.mkdir(parents=True, exist_ok=True)
        ctx.open_parent()
        if not ep.enabled:
            write_json_atomic(out / export.EXPORT_INFO_FILE, {"skipped": "export.enabled: false"})
            ctx.summary = "disabled (export.enabled: false): nothing exported"
            return {"skipped": True}
        with ctx.phase("compute"):
            info = export.run_export(
                params,
                reg.source_model_uri,
                dataset,
                splits,
                out,
                ep.calibration_images,
                check_images=ep.check_images,
                max_drop_points=ep.max_drop_points,
            )
        for name in (export.FP32_FILE, export.INT8_FILE, export.EXPORT_INFO_FILE):
            ctx.tracking.log_artifact(reg.run_id, out / name, export.ARTIFACT_PATH)
        drop = info["check"]["drop_points"]["accuracy"] if "check" in info else None
        tags = {names.TAG_EXPORT_DIGEST: info["files"]["int8"].get("sha256", "")}
        if drop is not None:
            tags[names.TAG_EXPORT_INT8_DROP] = f"{drop:.4f}"
        ctx.tracking.set_tags(reg.run_id, tags)
        with ctx.phase("tracking"):
            int8 = _register_int8(ctx.tracking, reg, out / export.INT8_FILE, info, drop)
        info = {**info, "logged_to_run": reg.run_id, "int8_registered": int8}
        files = info["files"]
        ctx.summary = (
            f"{reg.model_key} (version {reg.version}) -> {files['fp32']['file']} "
            f"{files['fp32']['bytes'] / 1e6:.1f} MB, {files['int8']['file']} "
            f"{files['int8']['bytes'] / 1e6:.1f} MB"
            + ("" if drop is None else f"; int8 loses {drop:.2f} accuracy points")
            + f"; registered as {int8['model_uri']} (version {int8['version']})"
        )
    return info


def _register_int8(
    tracking: Any, reg: Registration, path: Path, info: Mapping[str, Any], drop: float | None
) -> dict[str, Any]:
    """Log the int8 model as the served image classifier (its ONNX Runtime backend) to the
    registered model's run and register it as ``<name>-int8`` under the same alias (champion
    or challenger) as the Keras version it came from, tagged with its accuracy loss."""
    from cxrflow import serving

    name = serving.int8_model_name(reg.model_name)
    model_uri = serving.log_classifier(
        "onnx",
        path,
        "model_int8",
        {
            "classes": list(info["classes"]),
            "image_size": int(info["image_size"]),
            "model_key": reg.model_key,
            "precision": "int8",
            "source_model": f"{reg.model_name}/{reg.version}",
        },
        run_id=reg.run_id,
    )
    tags = {
        names.TAG_MODEL_KEY: reg.model_key,
        names.TAG_RUN_ID: reg.run_id,
        names.TAG_EXPORT_SOURCE_MODEL: f"{reg.model_name}/{reg.version}",
        names.TAG_EXPORT_DIGEST: info["files"]["int8"].get("sha256", ""),
    }
    loss = "not measured (export.check_images: 0)"
    if drop is not None:
        tags[names.TAG_EXPORT_INT8_DROP] = f"{drop:.4f}"
        loss = f"loses {drop:.2f} accuracy points against fp32 on the validation split"
    version = tracking.register_model(
        model_uri,
        name,
        reg.alias,
        tags=tags,
        description=(
            f"int8 ONNX of {reg.model_name} version {reg.version} ({reg.model_key}, "
            f"{reg.role}): {loss}"
        ),
    )
    return {
        "model_name": name,
        "version": version,
        "alias": reg.alias,
        "model_uri": f"models:/{name}@{reg.alias}",
        "logged_model_uri": model_uri,
    }


def _publish(info: Mapping[str, Any] | None, outputs: Mapping[str, Any]) -> None:
    if info is not None and not info.get("skipped"):
        outputs["exported"].metadata.update(
            {"model_key": info["model_key"], "logged_to_run": info["logged_to_run"]}
        )


SPEC = StepSpec(
    name="export",
    run=run_export,
    kind="evaluate",
    reads=("export", "train.seed", "tracking"),
    inputs=("dataset", "splits", "registered"),
    outputs=(Port("exported", "Model", "reports/export"),),
    io_retry=True,
    publish=_publish,
    cli=False,  # `cxrflow export` (cxrflow.cli.models) also exports any model: --model
    dvc_outputs={"outs": [{"reports/export": {"cache": False}}]},
)
