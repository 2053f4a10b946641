from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(
    evaluate_params: dict,
    tracking_params: dict,
    profile: str,
    dataset: dsl.Input[dsl.Dataset],
    splits: dsl.Input[dsl.Dataset],
    model_0: dsl.Input[dsl.Model],
    model_1: dsl.Input[dsl.Model],
    model_2: dsl.Input[dsl.Model],
    model_3: dsl.Input[dsl.Model],
    evaluation: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
):
    """evaluate: accuracy, macro precision/recall/F1, per-class metrics, confusion matrix, ms/image.

    Reads params evaluate. Each model is scored on its own dataset's test split.
    """
    from cxrflow.steps import run_evaluate, step_params

    params = step_params(profile, evaluate=evaluate_params, tracking=tracking_params)
    dirs = {
        "model_0": model_0.path,
        "model_1": model_1.path,
        "model_2": model_2.path,
        "model_3": model_3.path,
    }
    results = run_evaluate(params, dataset.path, splits.path, dirs, evaluation.path)
    for key, m in results.items():
        for name in ("accuracy", "f1_macro"):
            metrics.log_metric(f"{key}_{name}", float(m[name]))
