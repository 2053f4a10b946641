"""The one Kubeflow Pipelines v2 definition of cxrflow.

``build_pipeline(params)`` returns the ``@dsl.pipeline`` function for one *resolved*
configuration (params.yaml + profile + overrides, see :func:`cxrflow.config.load_params`): its
single parameter ``params`` defaults to that configuration, which every step receives whole, so
the compiled YAML carries exactly what it was resolved from. The model steps follow
``params.models`` (one task per model key, a transfer after the model it starts from). An exit
handler (``finalize``) ends the MLflow parent run whatever happens. On a cluster the model steps
request a GPU and carry a node selector and toleration; every step gets the MLflow / S3
endpoint from a ConfigMap and credentials from a Secret. Locally (``kfp.local``) the Kubernetes
settings are ignored.
"""

from typing import Any

from kfp import dsl, kubernetes

from components import (
    audit_component,
    evaluate_component,
    finalize,
    ingest,
    model_component,
    register,
    split,
    validate,
)
from cxrflow.config import Params, params_to_kfp

PIPELINE_NAME = "cxrflow"

# Cluster wiring: names of the Kubernetes objects in infra/k8s (kustomize).
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = ("cxrflow.io/accelerator", "nvidia-gpu")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SECRET_NAME = "cxrflow-credentials"
SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
}
CONFIG_MAP_NAME = "cxrflow-config"
CONFIG_MAP_ENV = {
    "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
}
MODEL_DESCRIPTIONS = {
    "scratch": "{arch} from scratch on {dataset}.",
    "imagenet": "ImageNet {arch} fine-tuned on {dataset} (head, then the last layers).",
    "transfer": "{init} transfer-fine-tuned on {dataset} (head first, then unfrozen layers).",
}


def pipeline_defaults(params: Params) -> dict[str, Any]:
    """The pipeline parameter defaults for ``params`` (what the compiled YAML must contain).

    KFP parameters cannot be null, so a null is passed as ``""``, which
    :func:`cxrflow.config.params_from_kfp` reads back as null where a field may be null.
    """
    return {"params": params_to_kfp(params)}


def _cluster_env(task: dsl.PipelineTask) -> None:
    kubernetes.use_secret_as_env(task, SECRET_NAME, SECRET_ENV, optional=True)
    kubernetes.use_config_map_as_env(task, CONFIG_MAP_NAME, CONFIG_MAP_ENV, optional=False)


def _gpu(task: dsl.PipelineTask) -> None:
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    task.set_memory_request("16G").set_cpu_request("4")
    kubernetes.add_node_selector(task, *GPU_NODE_SELECTOR)
    kubernetes.add_toleration(task, **GPU_TOLERATION)


def build_pipeline(params: Params) -> Any:
    """Build the pipeline function whose ``params`` default is the resolved ``params``."""
    defaults = pipeline_defaults(params)
    keys = params.model_keys
    trainers = {
        key: model_component(
            key,
            MODEL_DESCRIPTIONS[params.models[key].init_kind].format(
                arch=params.models[key].architecture,
                dataset=params.models[key].dataset,
                init=params.models[key].init,
            ),
            transfer=params.models[key].base_model_key is not None,
        )
        for key in keys
    }
    bases = {key: params.models[key].base_model_key for key in keys}
    evaluate = evaluate_component(keys)
    candidates = [k for k in params.register.candidates if k in params.models]
    audit = audit_component(candidates)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Katsamenis et al. 2020: ingest -> validate -> split -> "
            + ", ".join(keys)
            + " -> evaluate -> audit -> register (COVID-19 / bacterial / normal chest X-rays); "
            f"params profile {params.profile}"
        ),
    )
    def cxrflow(params: dict = defaults["params"]):
        exit_task = finalize(params=params, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        exit_task.set_display_name("finalize")
        tasks: list[dsl.PipelineTask] = [exit_task]
        with dsl.ExitHandler(exit_task, name="steps"):
            ing = ingest(params=params, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
            dataset = ing.outputs["dataset"]
            val = validate(params=params, dataset=dataset)
            spl = split(params=params, dataset=dataset).after(val)
            splits = spl.outputs["splits"]
            trained: dict[str, dsl.PipelineTask] = {}
            for key in keys:
                base = bases[key]
                inputs = {"params": params, "dataset": dataset, "splits": splits}
                if base is not None:
                    inputs["base_model"] = trained[base].outputs["model"]
                trained[key] = trainers[key](**inputs)
            ev = evaluate(
                params=params,
                dataset=dataset,
                splits=splits,
                **{k: t.outputs["model"] for k, t in trained.items()},
            )
            aud = audit(
                params=params,
                dataset=dataset,
                splits=splits,
                **{k: trained[k].outputs["model"] for k in candidates},
            ).after(ev)
            reg = register(
                params=params,
                evaluation=ev.outputs["evaluation"],
                audit_report=aud.outputs["audit_report"],
            )
            tasks += [ing, val, spl, *trained.values(), ev, aud, reg]
        for task in tasks:
            _cluster_env(task)
            task.set_caching_options(False)
        for task in trained.values():
            _gpu(task)
        # KFP returns no pipeline output from inside an exit handler: the champion is the
        # register step's output (and registered.json in its artifact).

    return cxrflow
