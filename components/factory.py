"""KFP components written from the step registry: one per step (one per model key).

KFP names a task after its component's function and reads its signature for the inputs and
outputs, so each component is written as source from the step's
:class:`~cxrflow.steps.spec.StepSpec` (its ports, per-model expansion, KFP-only outputs) and
compiled with the source registered in :mod:`linecache` (KFP ships a component's source to the
step's container, read through :func:`inspect.getsource`). Every body is the same one call,
:func:`cxrflow.steps.component.run_component`. Images are chosen at compile time
(:mod:`components.images`); train steps run on the GPU image.
"""

from __future__ import annotations

import hashlib
import linecache
from collections.abc import Sequence
from typing import Any

from kfp import dsl

from components.images import CPU_IMAGE, GPU_IMAGE
from cxrflow.steps.spec import BASE_MODEL, MODEL_INPUTS, StepSpec

_TEMPLATE = '''
def {fn}(
{args}
):
    """{doc}"""
    from cxrflow.steps.component import run_component

    run_component(
        "{step}",
        params,
        {{{inputs}}},
        {{{outputs}}},{call_extra}
    )
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


def _artifact(name: str) -> str:
    """The artifact class of the output ``name`` of an earlier step."""
    from cxrflow.steps.registry import STEPS

    for spec in STEPS:
        for port in spec.outputs:
            if port.name == name:
                return port.artifact
    raise KeyError(f"no step writes {name!r}")


def _check(*keys: str) -> None:
    for key in keys:
        if not key.isidentifier():
            raise ValueError(f"model key {key!r} is not an identifier")


def make_component(
    spec: StepSpec,
    *,
    model_key: str | None = None,
    model_keys: Sequence[str] = (),
    transfer: bool = False,
    description: str = "",
) -> Any:
    """The component of one step (of one model, for a per-model step).

    Args:
        spec: The step.
        model_key: The model a per-model step trains (the function and task name).
        model_keys: The models behind a :data:`~cxrflow.steps.spec.MODELS` or
            :data:`~cxrflow.steps.spec.CANDIDATES` input, and per-model outputs.
        transfer: Whether the model step takes the model it starts from (``base_model``).
        description: The first docstring line (default: the step's).
    """
    fn = model_key or spec.name
    _check(fn, *model_keys)
    args = ["    params: dict,"]
    call_extra = ""
    if spec.kind != "data":  # data steps keep the run id out of KFP's cache key
        args.append("    pipeline_run_id: str,")
        call_extra += "\n        pipeline_run_id=pipeline_run_id,"
    if spec.per_model:
        args.append("    checkpoint_volume: str,")
        call_extra += f'\n        model_key="{model_key}",'
        call_extra += "\n        checkpoint_volume=checkpoint_volume or None,"
    inputs: list[str] = []
    for name in spec.inputs:
        if name in MODEL_INPUTS:
            args += [f"    {k}: dsl.Input[dsl.Model]," for k in model_keys]
            inputs.append(f'"{name}": {{' + ", ".join(f'"{k}": {k}' for k in model_keys) + "}")
        elif name == BASE_MODEL:
            if transfer:
                args.append(f"    {name}: dsl.Input[dsl.Model],")
                inputs.append(f'"{name}": {name}')
        else:
            args.append(f"    {name}: dsl.Input[dsl.{_artifact(name)}],")
            inputs.append(f'"{name}": {name}')
    outputs: list[str] = []
    for port in (*spec.outputs, *spec.ui_outputs):
        names = [f"{port.name}_{k}" for k in model_keys] if port.per_model else [port.name]
        for name in names:
            args.append(f"    {name}: dsl.Output[dsl.{port.artifact}],")
            outputs.append(f'"{name}": {name}')
    doc = spec.doc if not description else f"{fn}: {description}\n\n{spec.doc}"
    source = _TEMPLATE.format(
        fn=fn,
        args="\n".join(args),
        doc=doc.replace('"""', "'''").replace("\\", "\\\\"),
        step=spec.name,
        inputs=", ".join(inputs),
        outputs=", ".join(outputs),
        call_extra=call_extra,
    )
    return _compile(fn, source, GPU_IMAGE if spec.kind == "train" else CPU_IMAGE)
