from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(
    params: dict,
    pipeline_run_id: str,
    evaluation: dsl.Input[dsl.Artifact],
    audit_report: dsl.Input[dsl.Artifact],
    registered: dsl.Output[dsl.Artifact],
) -> str:
    """register: the best candidate that passed the audit becomes champion if it beats the
    current one by the margin; otherwise it is registered as challenger, with the reason.

    Reads params register, audit. Returns "<model key> -> <alias>".
    """
    from cxrflow.steps import current_pipeline_run, run_register, step_params

    info = run_register(
        step_params(params),
        evaluation.path,
        registered.path,
        audit_report.path,
        current_pipeline_run(pipeline_run_id),
    )
    registered.metadata.update(
        {k: info[k] for k in ("model_uri", "version", "role", "reason", "model_key")}
    )
    return f"{info['model_key']} -> {info['alias']}"
