"""The four training components: model_0 .. model_3 (same body, different model key)."""

from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def model_0(
    train_params: dict,
    models_params: dict,
    tracking_params: dict,
    profile: str,
    dataset: dsl.Input[dsl.Dataset],
    splits: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
):
    """model_0: the small CNN from scratch on Dataset_0 (normal / bacterial / viral).

    Reads params train, models.model_0.
    """
    from cxrflow.steps import run_train, step_params

    params = step_params(
        profile, train=train_params, models=models_params, tracking=tracking_params
    )
    info = run_train(params, "model_0", dataset.path, splits.path, model.path)
    model.metadata.update({"mlflow_run_id": info["run_id"], "model_uri": info["model_uri"]})


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def model_1(
    train_params: dict,
    models_params: dict,
    tracking_params: dict,
    profile: str,
    dataset: dsl.Input[dsl.Dataset],
    splits: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
):
    """model_1: the same CNN from scratch on Dataset_1 (normal / bacterial / COVID-19).

    Reads params train, models.model_1.
    """
    from cxrflow.steps import run_train, step_params

    params = step_params(
        profile, train=train_params, models=models_params, tracking=tracking_params
    )
    info = run_train(params, "model_1", dataset.path, splits.path, model.path)
    model.metadata.update({"mlflow_run_id": info["run_id"], "model_uri": info["model_uri"]})


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def model_2(
    train_params: dict,
    models_params: dict,
    tracking_params: dict,
    profile: str,
    dataset: dsl.Input[dsl.Dataset],
    splits: dsl.Input[dsl.Dataset],
    base_model: dsl.Input[dsl.Model],
    model: dsl.Output[dsl.Model],
):
    """model_2: Model_0 transfer-fine-tuned on Dataset_1 (head first, then all layers).

    Reads params train, models.model_2.
    """
    from cxrflow.steps import run_train, step_params

    params = step_params(
        profile, train=train_params, models=models_params, tracking=tracking_params
    )
    info = run_train(params, "model_2", dataset.path, splits.path, model.path, base_model.path)
    model.metadata.update({"mlflow_run_id": info["run_id"], "model_uri": info["model_uri"]})


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def model_3(
    train_params: dict,
    models_params: dict,
    tracking_params: dict,
    profile: str,
    dataset: dsl.Input[dsl.Dataset],
    splits: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
):
    """model_3: ImageNet ResNet-50 fine-tuned on Dataset_1 (head, then last 11 layers).

    Reads params train, models.model_3 (weights_path: the ImageNet weights file).
    """
    from cxrflow.steps import run_train, step_params

    params = step_params(
        profile, train=train_params, models=models_params, tracking=tracking_params
    )
    info = run_train(params, "model_3", dataset.path, splits.path, model.path)
    model.metadata.update({"mlflow_run_id": info["run_id"], "model_uri": info["model_uri"]})
