"""Step ``finalize``: end the pipeline run's MLflow parent run, whatever happened."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cxrflow import names
from cxrflow.steps.frame import step_frame
from cxrflow.steps.spec import StepSpec

if TYPE_CHECKING:
    from cxrflow.config import Params


SUCCEEDED_STATES = ("SUCCEEDED", "SUCCESS", "COMPLETE")
KILLED_STATES = ("KILLED", "CANCELED", "CANCELLED")
"""States that end the parent run ``KILLED``: a local run stopped by a signal
(:func:`pipelines.local.run_local`), a run cancelled on the cluster."""


def run_finalize(
    params: Params, pipeline_run_id: str, state: str, error: str = "", *, stopped_step: str = ""
) -> dict[str, Any]:
    """finalize: end the MLflow parent run, FINISHED or FAILED naming the failed step.

    Runs as the pipeline's exit handler, after every other step, whatever happened (KFP's exit
    handler; the local runner). The failed step is the first of ``params.steps`` that did not
    mark itself done on the parent run. Nested runs a killed step left ``RUNNING`` are marked
    ``FAILED`` too. A run that was stopped (``state`` ``KILLED``, :data:`KILLED_STATES`) ends
    ``KILLED``, its running nested runs too: the local runner calls this itself when a signal
    stops a run, naming the step that was running.

    Args:
        params: The run's resolved configuration.
        pipeline_run_id: The pipeline run (KFP job id, or a local id).
        state: The pipeline's final state as KFP reports it (``SUCCEEDED``, ``FAILED``...).
        error: The error message KFP reports, if any.
        stopped_step: The step that was running when the run was stopped (the local runner
            knows it); default: the first step without a done mark.
    """
    try:
        return _finalize(params, pipeline_run_id, state, error, stopped_step)
    except Exception as exc:
        # MLflow unreachable (or any error ending the parent run): the alert of a failed run
        # matters most then, and must not depend on the tracking server
        if state.upper() not in (*SUCCEEDED_STATES, *KILLED_STATES):
            from cxrflow.notify import alert_failure

            line = error.strip().splitlines()[-1][:400] if error.strip() else state
            alert_failure(
                pipeline_run_id,
                stopped_step or "unknown",
                f"{line} (finalize could not end the MLflow run: {exc})",
                profile=params.profile,
            )
        raise


def _finalize(
    params: Params, pipeline_run_id: str, state: str, error: str, stopped_step: str
) -> dict[str, Any]:
    with step_frame("finalize", params, pipeline_run_id=pipeline_run_id) as ctx:
        from cxrflow.config import flatten_params, params_hash

        tracking, exp = ctx.tracking, params.tracking.experiment_name
        parent = tracking.find_parent_run(exp, pipeline_run_id)
        if parent is None:  # failed before ingest created it: record the failure anyway
            parent = tracking.get_or_create_parent_run(
                exp,
                pipeline_run_id,
                {
                    names.TAG_PROFILE: params.profile,
                    names.TAG_GIT_COMMIT: tracking.git_commit(),
                    names.TAG_PARAMS_HASH: params_hash(params),
                },
                flatten_params(params),
            )
        tags = tracking.run_tags(parent)
        done = {
            k.removeprefix(names.TAG_STEP_DONE_PREFIX)
            for k in tags
            if k.startswith(names.TAG_STEP_DONE_PREFIX)
        }
        missing = [step for step in params.steps if step not in done]
        succeeded = state.upper() in SUCCEEDED_STATES and not missing
        killed = state.upper() in KILLED_STATES
        status = "FINISHED" if succeeded else ("KILLED" if killed else "FAILED")
        failed_step = "" if succeeded else (stopped_step or (missing[0] if missing else "unknown"))
        if not succeeded:
            reason = error.strip().splitlines()[-1][:500] if error.strip() else state
            tracking.set_tags(parent, {names.TAG_FAILED_STEP: failed_step, names.TAG_ERROR: reason})
        stale = tracking.fail_running_children(
            exp, pipeline_run_id, "KILLED" if killed else "FAILED"
        )
        tracking.end_run(parent, status)
        if status == "FAILED":  # to $CXRFLOW_ALERT_WEBHOOK_URL, if set; never raises (a stop
            # by a person, KILLED, is no news to them)
            from cxrflow.notify import alert_failure

            alert_failure(pipeline_run_id, failed_step, reason, None, parent, params.profile)
        ctx.summary = f"MLflow parent run {parent} {status}" + (
            f" (failed step: {failed_step})" if failed_step else ""
        )
    return {"parent_run_id": parent, "status": status, "failed_step": failed_step, "stale": stale}


SPEC = StepSpec(
    name="finalize",
    run=run_finalize,
    kind="record",
    reads=("tracking",),
    io_retry=True,
    exit_handler=True,
    dvc=False,
)
