from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate(
    params: dict,
    dataset: dsl.Input[dsl.Dataset],
    validation: dsl.Output[dsl.Artifact],
    data_docs: dsl.Output[dsl.HTML],
):
    """validate: Great Expectations gate over the manifest; fails the run on any violation.

    Reads params validate. Writes validation.json and the Data Docs site (also logged to
    MLflow); the Data Docs validation page is the HTML artifact the KFP UI shows. Cached:
    params and the dataset pin its verdict.
    """
    import shutil
    from pathlib import Path

    from cxrflow.steps import DATA_DOCS_PAGE, current_pipeline_run, run_validate, step_params

    try:
        run_validate(step_params(params), dataset.path, validation.path, current_pipeline_run())
    finally:  # the page matters most when the gate fails (MLflow has it too)
        page = Path(validation.path) / DATA_DOCS_PAGE
        if page.is_file():
            shutil.copyfile(page, data_docs.path)
