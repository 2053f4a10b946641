"""Components whose signature follows params: one per model key, and evaluate over all models.

KFP names a task after its component's function, and ``params.yaml`` may define any number of
models, so these functions are written from a template for each run's model keys and compiled
with their source registered in :mod:`linecache` (KFP ships a component's source to the step's
container, read through :func:`inspect.getsource`). Each body is still one library call.
"""

from __future__ import annotations

import hashlib
import linecache
from collections.abc import Sequence
from typing import Any

from kfp import dsl

from components.images import CPU_IMAGE, GPU_IMAGE

_MODEL_TEMPLATE = '''
def {key}(
    params: dict,
    pipeline_run_id: str,
    checkpoint_volume: str,
    dataset: dsl.Input[dsl.Dataset],
    splits: dsl.Input[dsl.Dataset],{base_arg}
    model: dsl.Output[dsl.Model],
):
    """{key}: {description}

    Reads params train, models.{key}; the whole resolved configuration is logged. A retried
    attempt resumes from the checkpoints on checkpoint_volume (where mounted).
    """
    from cxrflow.steps import current_pipeline_run, run_train, step_params

    info = run_train(
        step_params(params),
        "{key}",
        dataset.path,
        splits.path,
        model.path,{base}
        pipeline_run_id=current_pipeline_run(pipeline_run_id),
        checkpoint_volume=checkpoint_volume or None,
    )
    model.metadata.update({{"mlflow_run_id": info["run_id"], "model_uri": info["model_uri"]}})
'''

_EVALUATE_TEMPLATE = '''
def evaluate(
    params: dict,
    pipeline_run_id: str,
    dataset: dsl.Input[dsl.Dataset],
    splits: dsl.Input[dsl.Dataset],
{model_args}
    evaluation: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
{confusion_args}
):
    """evaluate: metrics with patient-level 95 % CIs, calibration, ROC, Grad-CAM, McNemar.

    Reads params evaluate. Each model is scored on its own dataset's test split; the KFP UI
    shows the key metrics and one confusion matrix per model.
    """
    from cxrflow.steps import current_pipeline_run, run_evaluate, step_params

    dirs = {{{model_dirs}}}
    results = run_evaluate(
        step_params(params),
        dataset.path,
        splits.path,
        dirs,
        evaluation.path,
        current_pipeline_run(pipeline_run_id),
    )
    confusion = {{{confusion_map}}}
    for key, m in results.items():
        for name in ("accuracy", "f1_macro", "roc_auc_macro", "ece"):
            if m.get(name) is not None:
                metrics.log_metric(f"{{key}}_{{name}}", float(m[name]))
        ci = m.get("accuracy_ci") or {{}}
        if ci.get("ci_low") is not None:
            metrics.log_metric(f"{{key}}_accuracy_ci_low", float(ci["ci_low"]))
            metrics.log_metric(f"{{key}}_accuracy_ci_high", float(ci["ci_high"]))
        confusion[key].log_confusion_matrix(list(m["classes"]), m["confusion_matrix"])
'''

_AUDIT_TEMPLATE = '''
def audit(
    params: dict,
    pipeline_run_id: str,
    dataset: dsl.Input[dsl.Dataset],
    splits: dsl.Input[dsl.Dataset],
{model_args}
    audit_report: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
):
    """audit: the shortcut audit of every candidate (same-source controls, source probe,
    lung-field ablation) with 95 % CIs; its verdict can block promotion.

    Reads params audit, register.candidates.
    """
    from cxrflow.steps import current_pipeline_run, run_audit, step_params

    dirs = {{{model_dirs}}}
    results = run_audit(
        step_params(params),
        dataset.path,
        splits.path,
        dirs,
        audit_report.path,
        current_pipeline_run(pipeline_run_id),
    )
    for key, r in results.items():
        metrics.log_metric(f"{{key}}_audit_passed", 1.0 if r["passed"] else 0.0)
        for name, value in r.get("figures", {{}}).items():
            if value is not None:
                metrics.log_metric(f"{{key}}_{{name}}", float(value))
'''

_CACHE: dict[str, Any] = {}


def _compile(name: str, source: str, image: str) -> Any:
    digest = hashlib.sha256(f"{image}\n{source}".encode()).hexdigest()[:16]
    if digest not in _CACHE:
        filename = f"<cxrflow-component-{name}-{digest}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        namespace: dict[str, Any] = {"dsl": dsl}
        exec(compile(source, filename, "exec", dont_inherit=True), namespace)
        _CACHE[digest] = dsl.component(base_image=image, install_kfp_package=False)(namespace[name])
    return _CACHE[digest]


def model_component(key: str, description: str, transfer: bool) -> Any:
    """The training component of model ``key`` (task name = model key).

    Args:
        key: The model key (a Python identifier, checked by the params schema).
        description: One line for the KFP UI.
        transfer: Whether it takes the model it starts from as input ``base_model``.
    """
    if not key.isidentifier():
        raise ValueError(f"model key {key!r} is not an identifier")
    source = _MODEL_TEMPLATE.format(
        key=key,
        description=description.replace('"""', "'''"),
        base_arg="\n    base_model: dsl.Input[dsl.Model]," if transfer else "",
        base="\n        base_model.path," if transfer else "",
    )
    return _compile(key, source, GPU_IMAGE)


def evaluate_component(model_keys: Sequence[str]) -> Any:
    """The evaluate component with one model input per key (input name = model key)."""
    _check_keys(model_keys)
    source = _EVALUATE_TEMPLATE.format(
        model_args=_model_args(model_keys),
        model_dirs=_model_dirs(model_keys),
        confusion_args="\n".join(
            f"    confusion_{k}: dsl.Output[dsl.ClassificationMetrics]," for k in model_keys
        ),
        confusion_map=", ".join(f'"{k}": confusion_{k}' for k in model_keys),
    )
    return _compile("evaluate", source, CPU_IMAGE)


def audit_component(model_keys: Sequence[str]) -> Any:
    """The audit component with one model input per candidate key (input name = model key)."""
    _check_keys(model_keys)
    source = _AUDIT_TEMPLATE.format(
        model_args=_model_args(model_keys), model_dirs=_model_dirs(model_keys)
    )
    return _compile("audit", source, CPU_IMAGE)


def _check_keys(model_keys: Sequence[str]) -> None:
    for key in model_keys:
        if not key.isidentifier():
            raise ValueError(f"model key {key!r} is not an identifier")


def _model_args(model_keys: Sequence[str]) -> str:
    return "\n".join(f"    {k}: dsl.Input[dsl.Model]," for k in model_keys)


def _model_dirs(model_keys: Sequence[str]) -> str:
    return ", ".join(f'"{k}": {k}.path' for k in model_keys)
