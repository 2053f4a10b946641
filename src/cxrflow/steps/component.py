"""The body of every generated KFP component: one call, whatever the step.

``components/`` writes one component per step from its :class:`~cxrflow.steps.spec.StepSpec`;
each body is a call of :func:`run_component` with the component's artifacts. This module
knows nothing of kfp: an artifact is anything with a ``path`` (and, for what the KFP UI shows,
``metadata``, ``log_metric``, ``log_confusion_matrix``), which the step's ``publish`` fills.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cxrflow.steps.frame import step_params
from cxrflow.steps.lineage import current_pipeline_run
from cxrflow.steps.registry import get_step
from cxrflow.steps.spec import MODEL_INPUTS

log = logging.getLogger(__name__)


def step_arguments(
    step: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any]
) -> dict[str, Any]:
    """The step function's keyword arguments: each port's path, by port name."""
    spec = get_step(step)
    kwargs: dict[str, Any] = {}
    for name in spec.inputs:
        if name in MODEL_INPUTS:
            kwargs[name] = {k: a.path for k, a in inputs[name].items()}
        elif inputs.get(name) is not None:
            kwargs[name] = inputs[name].path
    for port in spec.outputs:
        kwargs[port.name] = outputs[port.name].path
    return kwargs


def run_component(
    step: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    *,
    model_key: str | None = None,
    pipeline_run_id: str = "",
    **extra: Any,
) -> Any:
    """Run step ``step`` from a KFP component and publish its result to the KFP UI.

    Args:
        step: The step's name (``train`` for a model step, with ``model_key``).
        params: The whole resolved configuration (the pipeline's ``params`` parameter).
        inputs: Input name -> artifact; :data:`~cxrflow.steps.spec.MODELS` and
            :data:`~cxrflow.steps.spec.CANDIDATES` map model keys to artifacts.
        outputs: Output name -> artifact (the step's ports and its KFP-only outputs).
        model_key: The model a per-model step trains.
        pipeline_run_id: KFP's run id placeholder (the data steps get none: see
            :data:`~cxrflow.steps.lineage.PIPELINE_RUN_ENV`).
        extra: Further keyword arguments of the step function (e.g. ``checkpoint_volume``).
    """
    spec = get_step(step)
    resolved = step_params(params)
    args = (resolved, model_key) if spec.per_model else (resolved,)
    kwargs = step_arguments(step, inputs, outputs)
    result = None
    try:
        result = spec.run(
            *args, **kwargs, pipeline_run_id=current_pipeline_run(pipeline_run_id), **extra
        )
    finally:
        if spec.publish is not None:
            if result is None:  # failed: publish what must be shown anyway, never mask the error
                try:
                    spec.publish(None, outputs)
                except Exception:
                    log.exception("%s: publishing the failed step's outputs failed", step)
            else:
                spec.publish(result, outputs)
    return result
