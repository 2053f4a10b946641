"""Step ``audit``: the shortcut audit of every candidate model, before register."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow import names
from cxrflow.artifacts import AuditReport, ModelInfo
from cxrflow.steps.evaluate import load_test_split, patient_images_allowed
from cxrflow.steps.frame import StepContext, step_frame
from cxrflow.steps.spec import CANDIDATES, Port, StepSpec
from cxrflow.steps.train import MODEL_FILE

if TYPE_CHECKING:
    from cxrflow.config import Params


AUDIT_FILE = AuditReport.FILE


def audit_figures(result: Mapping[str, Any]) -> dict[str, float | None]:
    """The audit's headline numbers (for MLflow metrics and the KFP UI)."""
    rate = (result.get("controls") or {}).get("covid_rate") or {}
    auc = (result.get("source_probe") or {}).get("auc") or {}
    masked = ((result.get("ablation") or {}).get("masked") or {}).get("balanced_accuracy") or {}
    return {
        "control_covid_rate": rate.get("value"),
        "source_probe_auc": auc.get("value"),
        "masked_balanced_accuracy": masked.get("value"),
    }


def verdict_tags(passed: bool, reasons: list[str]) -> dict[str, str]:
    """The audit verdict as tags (a model's run, its registered version)."""
    return {
        names.TAG_AUDIT_PASSED: str(passed).lower(),
        names.TAG_AUDIT_REASONS: "; ".join(reasons)[:4900],
    }


def _audit_one(
    ctx: StepContext,
    mdir: Path,
    splits: str | Path,
    manifest: Any,
    controls: dict[tuple[str, int], dict[str, Any]],
) -> dict[str, Any]:
    """Audit one candidate; logs its figures and verdict to its run."""
    import keras

    from cxrflow.audit import audit_model, control_arrays
    from cxrflow.data.split import read_split_table

    params, dataset_dir = ctx.params, ctx.dataset_dir or ""
    info = ModelInfo.read(mdir)
    dataset, size = info.dataset, info.image_size
    with ctx.phase("data"):
        test = load_test_split(dataset_dir, splits, dataset, list(info.classes), size)
        if (dataset, size) not in controls:
            controls[dataset, size] = control_arrays(
                dataset_dir, manifest, size, read_split_table(splits, dataset)
            )
    with ctx.phase("model_io"):
        model = keras.models.load_model(mdir / MODEL_FILE)
    with ctx.phase("compute"):
        result = audit_model(
            model,
            x_test=test.x,
            y_test=test.y,
            groups_test=list(test.groups),
            sources_test=list(test.sources),
            classes=list(info.classes),
            params=params.audit,
            seed=params.evaluate.seed,
            n_boot=params.evaluate.bootstrap_samples,
            **controls[dataset, size],
        )
    result["figures"] = audit_figures(result)
    ctx.tracking.log_metrics(
        info.run_id, {f"audit_{k}": v for k, v in result["figures"].items() if v is not None}
    )
    ctx.tracking.set_tags(info.run_id, verdict_tags(result["passed"], result["reasons"]))
    return result


def run_audit(
    params: Params,
    dataset: str | Path,
    splits: str | Path,
    candidates: Mapping[str, str | Path],
    audit_report: str | Path,
    pipeline_run_id: str | None = None,
) -> dict[str, Any]:
    """audit: the shortcut audit of every candidate (same-source controls, source probe,
    lung-field ablation) with 95 % CIs; its verdict can block promotion.

    Reads params ``audit``, ``register.candidates``, ``evaluate`` (bootstrap size and seed).
    For each candidate: the share of adult non-COVID control X-rays from the COVID source that
    it calls COVID-19, how well a probe tells the data sources apart from its features, and its
    accuracy with the lung field masked out, each with a CI and a verdict against the
    thresholds (:func:`cxrflow.audit.audit_verdict`). Writes ``audit.json`` and the mask
    picture; logs the figures and the verdict to each model's nested run.
    """
    with step_frame("audit", params, dataset_dir=dataset, pipeline_run_id=pipeline_run_id) as ctx:
        with ctx.phase("imports"):
            from cxrflow.audit import plot_mask
            from cxrflow.data.manifest import read_manifest
        out = Path(audit_report)
        out.mkdir(parents=True, exist_ok=True)
        parent = ctx.open_parent()
        results: dict[str, Any] = {}
        if not params.audit.enabled:
            AuditReport({}).write(out)
            ctx.summary = "disabled (audit.enabled: false): nothing audited"
            return results
        manifest = read_manifest(dataset)
        controls: dict[tuple[str, int], dict[str, Any]] = {}
        for key in [k for k in params.register.candidates if k in candidates]:
            results[key] = _audit_one(ctx, Path(candidates[key]), splits, manifest, controls)
        if results:
            first = next(iter(controls.values()))
            if len(first["x_controls"]):
                mask = plot_mask(
                    first["x_controls"][0], params.audit.mask_fraction, out / "lung_mask.png"
                )
                # a control patient's X-ray: to MLflow only where patients' pictures may go
                if patient_images_allowed(params.evaluate.log_patient_images, ctx.prov.origin):
                    ctx.tracking.log_artifact(parent, mask, "audit")
        AuditReport.model_validate(results).write(out)
        ctx.tracking.log_artifact(parent, out / AUDIT_FILE, "audit")
        passed = [k for k, r in results.items() if r["passed"]]
        ctx.tracking.set_tags(parent, {names.TAG_AUDIT_PASSED: ",".join(passed) or "none"})
        ctx.summary = (
            "; ".join(f"{k} {'passed' if r['passed'] else 'FAILED'}" for k, r in results.items())
            or "no candidate to audit"
        )
    return results


def _publish(results: Mapping[str, Any] | None, outputs: Mapping[str, Any]) -> None:
    if results is None:
        return
    for key, r in results.items():
        outputs["metrics"].log_metric(f"{key}_audit_passed", 1.0 if r["passed"] else 0.0)
        for name, value in r.get("figures", {}).items():
            if value is not None:
                outputs["metrics"].log_metric(f"{key}_{name}", float(value))


def _show(results: Mapping[str, Any]) -> str:
    return "\n".join(
        f"{key}: {'passed' if r['passed'] else 'FAILED'}"
        + "".join(f"\n  - {x}" for x in r.get("reasons", []))
        for key, r in results.items()
    )


SPEC = StepSpec(
    name="audit",
    run=run_audit,
    kind="evaluate",
    reads=("audit", "evaluate", "register.candidates", "tracking"),
    inputs=("dataset", "splits", CANDIDATES),
    outputs=(Port("audit_report", "Artifact", "reports/audit", cli="audit"),),
    ui_outputs=(Port("metrics", "Metrics"),),
    after=("evaluate",),
    io_retry=True,
    preload=("sklearn.linear_model", "cxrflow.audit"),
    publish=_publish,
    show=_show,
    dvc_outputs={"outs": [{"reports/audit": {"cache": False}}]},
)
