"""The steps of cxrflow, described once, in pipeline order.

Adding a step is its module (its function and ``SPEC``) and one line here. Every list of
steps is derived from :data:`STEPS`: the KFP DAG and components, the DVC stages, the CLI's step
commands, the warm-start preload, finalize's list of steps, the cluster policy and the drift
tests. Model steps (``per_model``) expand to one step per key of ``params.models``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrflow.steps import (
    audit,
    evaluate,
    export,
    finalize,
    ingest,
    register,
    split,
    train,
    validate,
)
from cxrflow.steps.spec import StepSpec

if TYPE_CHECKING:
    from cxrflow.config import Params

STEPS: tuple[StepSpec, ...] = (
    ingest.SPEC,
    validate.SPEC,
    split.SPEC,
    train.SPEC,
    evaluate.SPEC,
    audit.SPEC,
    register.SPEC,
    export.SPEC,
    finalize.SPEC,
)
BY_NAME = {spec.name: spec for spec in STEPS}


def get_step(name: str) -> StepSpec:
    """The spec of step ``name`` (``train`` for any model key's step)."""
    if name not in BY_NAME:
        raise KeyError(f"unknown step {name!r}; steps: {list(BY_NAME)}")
    return BY_NAME[name]


def step_names() -> tuple[str, ...]:
    """Every step's name, in order (``train`` stands for the model steps)."""
    return tuple(BY_NAME)


def data_steps() -> tuple[str, ...]:
    """The data steps in order (ingest, validate, split): their run id is no task input."""
    return tuple(s.name for s in STEPS if s.kind == "data")


def pipeline_steps(params: Params) -> tuple[str, ...]:
    """A run's steps in order, model steps by key, without the exit handler."""
    names: list[str] = []
    for spec in STEPS:
        if spec.exit_handler:
            continue
        names += list(params.model_keys) if spec.per_model else [spec.name]
    return tuple(names)


def spec_of(params: Params, step: str) -> StepSpec:
    """The spec behind one of a run's step names (a model key is a ``train`` step)."""
    if step in params.models:
        return BY_NAME["train"]
    return get_step(step)


def reserved_names() -> frozenset[str]:
    """Names a model key may not take (every step name but the model steps' own)."""
    return frozenset(s.name for s in STEPS if not s.per_model) | {"train"}


BASE_PRELOAD = ("numpy", "PIL.Image", "mlflow", "cxrflow.steps")
"""What every step imports. Not preloaded: Great Expectations and ONNX Runtime (the warm
server refuses to fork once a Python thread exists, and they are one step's each)."""


def preload_modules() -> tuple[str, ...]:
    """What the warm-start server imports once for every step (their heavy libraries)."""
    seen: dict[str, None] = dict.fromkeys(BASE_PRELOAD)
    for spec in STEPS:
        seen |= dict.fromkeys(spec.preload)
    return tuple(seen)
