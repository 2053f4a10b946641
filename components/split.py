from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def split(params: dict, dataset: dsl.Input[dsl.Dataset], splits: dsl.Output[dsl.Dataset]):
    """split: undersample to the Dataset_1 counts and split train/val/test by patient.

    Reads params split, validate. Fails if a patient is in two splits or classes are
    unbalanced beyond validate.balance_tolerance. Cached: params and the dataset pin it.
    """
    from cxrflow.steps import current_pipeline_run, run_split, step_params

    run_split(step_params(params), dataset.path, splits.path, current_pipeline_run())
