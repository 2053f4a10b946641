from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate(params: dict, dataset: dsl.Input[dsl.Dataset], report: dsl.Output[dsl.HTML]):
    """validate: Great Expectations gate over the manifest; fails the run on any violation.

    Reads params validate. Writes validation.json and Data Docs HTML (also logged to MLflow).
    """
    from cxrflow.steps import run_validate, step_params

    run_validate(step_params(params), dataset.path, report.path)
