from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def finalize(params: dict, pipeline_run_id: str, status: dsl.PipelineTaskFinalStatus):
    """finalize: end the MLflow parent run, FINISHED or FAILED naming the failed step.

    Runs as the pipeline's exit handler, after every step, whatever happened.
    """
    from cxrflow.steps import current_pipeline_run, run_finalize, step_params

    run_id = current_pipeline_run(pipeline_run_id) or pipeline_run_id
    run_finalize(step_params(params), run_id, status.state, status.error_message or "")
