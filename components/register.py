from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(
    params: dict, evaluation: dsl.Input[dsl.Artifact], registered: dsl.Output[dsl.Artifact]
) -> str:
    """register: register the best candidate in the MLflow registry under the alias champion.

    Reads params register. Returns the champion's model key.
    """
    from cxrflow.steps import run_register, step_params

    info = run_register(step_params(params), evaluation.path, registered.path)
    registered.metadata.update({"model_uri": info["model_uri"], "version": info["version"]})
    return info["champion"]
