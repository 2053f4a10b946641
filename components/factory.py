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
    dataset: dsl.Input[dsl.Dataset],
    splits: dsl.Input[dsl.Dataset],{base_arg}
    model: dsl.Output[dsl.Model],
):
    """{key}: {description}

    Reads params train, models.{key}; the whole resolved configuration is logged.
    """
    from cxrflow.steps import run_train, step_params

    info = run_train(step_params(params), "{key}", dataset.path, splits.path, model.path{base})
    model.metadata.update({{"mlflow_run_id": info["run_id"], "model_uri": info["model_uri"]}})
'''

_EVALUATE_TEMPLATE = '''
def evaluate(
    params: dict,
    dataset: dsl.Input[dsl.Dataset],
    splits: dsl.Input[dsl.Dataset],
{model_args}
    evaluation: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
):
    """evaluate: accuracy, macro and per-class precision/recall/F1, confusion matrix, ms/image.

    Reads params evaluate. Each model is scored on its own dataset's test split.
    """
    from cxrflow.steps import run_evaluate, step_params

    dirs = {{{model_dirs}}}
    results = run_evaluate(step_params(params), dataset.path, splits.path, dirs, evaluation.path)
    for key, m in results.items():
        for name in ("accuracy", "f1_macro"):
            metrics.log_metric(f"{{key}}_{{name}}", float(m[name]))
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
        base=", base_model.path" if transfer else "",
    )
    return _compile(key, source, GPU_IMAGE)


def evaluate_component(model_keys: Sequence[str]) -> Any:
    """The evaluate component with one model input per key (input name = model key)."""
    for key in model_keys:
        if not key.isidentifier():
            raise ValueError(f"model key {key!r} is not an identifier")
    source = _EVALUATE_TEMPLATE.format(
        model_args="\n".join(f"    {k}: dsl.Input[dsl.Model]," for k in model_keys),
        model_dirs=", ".join(f'"{k}": {k}.path' for k in model_keys),
    )
    return _compile("evaluate", source, CPU_IMAGE)
