"""The one Kubeflow Pipelines v2 definition of cxrflow.

``build_pipeline(params)`` returns the ``@dsl.pipeline`` function whose parameter defaults are
the loaded ``params.yaml`` sections (one dict parameter per section), so the compiled YAML
carries exactly the configuration it was compiled from. On a cluster the four training steps
request a GPU and carry a node selector and toleration; every step gets the MLflow / S3
endpoint and credentials from a Kubernetes Secret and ConfigMap. Locally (``kfp.local``) the
Kubernetes settings are ignored.
"""

from typing import Any

from kfp import dsl, kubernetes

from components import (
    evaluate,
    ingest,
    model_0,
    model_1,
    model_2,
    model_3,
    register,
    split,
    validate,
)
from cxrflow.config import MODEL_KEYS, Params, nulls_to_empty, params_to_dict

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


def pipeline_defaults(params: Params) -> dict[str, Any]:
    """The pipeline parameter defaults for ``params`` (what the compiled YAML must contain).

    KFP parameters cannot be null, so a null in params.yaml is passed as ``""``, which the
    config loader reads back as null for fields that may be null.
    """
    plain = nulls_to_empty(params_to_dict(params))
    return {
        "data_params": plain["data"],
        "ingest_params": plain["ingest"],
        "validate_params": plain["validate"],
        "split_params": plain["split"],
        "train_params": plain["train"],
        "models_params": plain["models"],
        "evaluate_params": plain["evaluate"],
        "register_params": plain["register"],
        "tracking_params": plain["tracking"],
        "profile": params.profile,
        "data_version": "",
    }


def _cluster_env(task: dsl.PipelineTask) -> None:
    kubernetes.use_secret_as_env(task, SECRET_NAME, SECRET_ENV, optional=True)
    kubernetes.use_config_map_as_env(task, CONFIG_MAP_NAME, CONFIG_MAP_ENV, optional=False)


def _gpu(task: dsl.PipelineTask) -> None:
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    task.set_memory_request("16G").set_cpu_request("4")
    kubernetes.add_node_selector(task, *GPU_NODE_SELECTOR)
    kubernetes.add_toleration(task, **GPU_TOLERATION)


def build_pipeline(params: Params) -> Any:
    """Build the pipeline function with defaults from ``params``."""
    d = pipeline_defaults(params)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Katsamenis et al. 2020: ingest -> validate -> split -> model_0..model_3 -> "
            "evaluate -> register (COVID-19 / bacterial / normal chest X-rays)"
        ),
    )
    def cxrflow(
        data_params: dict = d["data_params"],
        ingest_params: dict = d["ingest_params"],
        validate_params: dict = d["validate_params"],
        split_params: dict = d["split_params"],
        train_params: dict = d["train_params"],
        models_params: dict = d["models_params"],
        evaluate_params: dict = d["evaluate_params"],
        register_params: dict = d["register_params"],
        tracking_params: dict = d["tracking_params"],
        profile: str = d["profile"],
        data_version: str = d["data_version"],
    ) -> str:
        common = {"tracking_params": tracking_params, "profile": profile}
        ing = ingest(
            data_params=data_params,
            ingest_params=ingest_params,
            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            data_version=data_version,
            **common,
        ).set_display_name("ingest")
        dataset = ing.outputs["dataset"]
        val = validate(validate_params=validate_params, dataset=dataset, **common)
        val.set_display_name("validate")
        spl = split(
            split_params=split_params, validate_params=validate_params, dataset=dataset, **common
        ).after(val)
        spl.set_display_name("split")
        splits = spl.outputs["splits"]
        train_kw = {"train_params": train_params, "models_params": models_params, **common}
        m0 = model_0(dataset=dataset, splits=splits, **train_kw).set_display_name("model_0")
        m1 = model_1(dataset=dataset, splits=splits, **train_kw).set_display_name("model_1")
        m2 = model_2(
            dataset=dataset, splits=splits, base_model=m0.outputs["model"], **train_kw
        ).set_display_name("model_2")
        m3 = model_3(dataset=dataset, splits=splits, **train_kw).set_display_name("model_3")
        trained = {"model_0": m0, "model_1": m1, "model_2": m2, "model_3": m3}
        assert tuple(trained) == MODEL_KEYS
        ev = evaluate(
            evaluate_params=evaluate_params,
            dataset=dataset,
            splits=splits,
            **{k: t.outputs["model"] for k, t in trained.items()},
            **common,
        ).set_display_name("evaluate")
        reg = register(
            register_params=register_params, evaluation=ev.outputs["evaluation"], **common
        ).set_display_name("register")
        for task in (ing, val, spl, *trained.values(), ev, reg):
            _cluster_env(task)
            task.set_caching_options(False)
        for task in trained.values():
            _gpu(task)
        return reg.outputs["Output"]

    return cxrflow
