"""The one Kubeflow Pipelines v2 definition of cxrflow.

The DAG is read from the step registry (:mod:`cxrflow.steps.registry`): one task per step in
its order, each input wired to the latest task that wrote an artifact of that name, model
inputs by model key, a step's ``after`` as an explicit dependency.
``build_pipeline(params)`` returns the ``@dsl.pipeline`` function for one *resolved*
configuration (params.yaml + profile + overrides, see :func:`cxrflow.config.load_params`): its
single parameter ``params`` defaults to that configuration, which every step receives whole, so
the compiled YAML carries exactly what it was resolved from. The model steps follow
``params.models`` (one task per model key, a transfer after the model it starts from). An exit
handler (``finalize``) ends the MLflow parent run whatever happens. Every step gets the MLflow /
S3 endpoint from a ConfigMap and credentials from a Secret. Locally (``kfp.local``) the
Kubernetes settings and caching are ignored; retries are not (kfp.local 2.17 applies them, with
their backoff), so local runs build the pipeline with ``retries=False`` and a failing step fails
at once.

On a cluster (``params.cluster``, compiled in, like the images):

- Resources: every task requests and is limited in CPU and memory by its kind of step
  (its spec's ``kind``: data, train, evaluate, record). The model steps also take one GPU, the
  GPU node selector and the toleration of the GPU nodes' taint. CPU steps never tolerate that
  taint, so they cannot land on a tainted GPU node; they also carry a required node affinity
  ``cxrflow.io/accelerator NotIn [nvidia-gpu]``, so a GPU node whose taint is missing (a pool
  set up by hand) still does not take them.
- Timeouts: every task's pod may run at most ``cluster.timeouts`` of its kind
  (``activeDeadlineSeconds``; training longest); each retry is a new pod with a new deadline.
- MLflow: every task gets the basic-auth credentials (``MLFLOW_AUTH_ENV``) from the Secret and
  the pod label ``MLFLOW_CLIENT_LABEL``, the only pods (with the MLflow namespace's own clients)
  the MLflow NetworkPolicy admits; the exit handler also gets the optional failure webhook
  (``ALERT_ENV``, :mod:`cxrflow.notify`).
- Retries: the model steps retry with ``cluster.retry.train`` (a preempted node) and resume:
  the checkpoint PVC ``cluster.checkpoints.pvc`` is mounted on them, and each checkpoints
  every epoch to ``<mount_path>/<pipeline run id>/<model key>``, which the retried pod finds.
  The I/O-bound CPU steps (their spec's ``io_retry``) retry with ``cluster.retry.io``
  (transient MLflow / S3 errors); the validate and split gates do not retry: same inputs,
  same verdict.
- Caching (``enableCache`` per task, :func:`cache_policy`, each spec's ``cache``): a task is
  reused only when its inputs pin its output. ingest when ``data`` is pinned (phantom data, or
  a registry at a full commit sha: :attr:`cxrflow.config.DataParams.is_pinned`); validate and
  split always (params and the dataset artifact pin them); the other steps never.
  KFP's cache key holds every input, so the data steps take no per-run input: the run they
  execute in reaches them as the environment variable ``CXRFLOW_PIPELINE_RUN_ID``, set from
  the pod's ``pipeline/runid`` label (which KFP's run-id placeholder also resolves to), and
  which the cache key does not hold. The uncached steps take the run id
  (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``) and log to that run's MLflow parent; on data made by
  an earlier run they record the reuse there (:mod:`cxrflow.steps`).
- Submit-time overrides (``--set data.version=...``) change the ``params`` argument, not the
  compiled caching: the submit code refuses an override that changes :func:`cache_policy`.
"""

from typing import Any

from kfp import dsl, kubernetes

from components import finalize, make_component
from cxrflow.config import Params, ResourceParams, RetryParams, params_to_kfp
from cxrflow.steps.lineage import PIPELINE_RUN_ENV
from cxrflow.steps.registry import STEPS, pipeline_steps, spec_of
from cxrflow.steps.spec import BASE_MODEL, CANDIDATES, MODELS, StepSpec
from cxrflow.steps.train import describe_model

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
MLFLOW_AUTH_ENV = {
    "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
}
"""MLflow basic-auth credentials of every task (required: the server refuses anonymous calls)."""
PATIENT_SALT_ENV = {"CXRFLOW_PATIENT_SALT": "CXRFLOW_PATIENT_SALT"}
"""The site's salt for hashing DICOM patient ids (:mod:`cxrflow.data.dicom`), for the data steps
only (optional key: absent, a public default salt is used and ingest warns)."""
ALERT_ENV = {"CXRFLOW_ALERT_WEBHOOK_URL": "CXRFLOW_ALERT_WEBHOOK_URL"}
"""The failure webhook of the exit handler (optional key: absent, no alert is posted)."""
MLFLOW_CLIENT_LABEL = ("cxrflow.io/mlflow-client", "true")
"""The pod label of every task, which the MLflow NetworkPolicy (infra/k8s/base) admits."""
CONFIG_MAP_NAME = "cxrflow-config"
CONFIG_MAP_ENV = {
    "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
}
GPU_LIMIT = 1
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"
"""The pod field holding the KFP run id (KFP's API server labels every pod of a run with it)."""
IO_RETRY_STEPS = tuple(s.name for s in STEPS if s.io_retry and s.kind != "train")
"""The CPU steps retried with ``cluster.retry.io``: their failures are mostly transient (the
DVC remote, the MLflow server, S3 artifact uploads)."""


def pipeline_defaults(params: Params) -> dict[str, Any]:
    """The pipeline parameter defaults for ``params`` (what the compiled YAML must contain).

    KFP parameters cannot be null, so a null is passed as ``""``, which
    :func:`cxrflow.config.params_from_kfp` reads back as null where a field may be null.
    """
    return {"params": params_to_kfp(params)}


def cache_policy(params: Params) -> dict[str, bool]:
    """Which tasks KFP may reuse from an earlier run (compiled as each task's ``enableCache``).

    Pure: the submit code compares this for the compiled and the overridden configuration and
    refuses an override that changes it (it would need a recompile).
    """
    steps = [*pipeline_steps(params), *(s.name for s in STEPS if s.exit_handler)]
    return {step: spec_of(params, step).cache(params) for step in steps}


def cache_policy_changes(compiled: Params, submitted: Params) -> dict[str, tuple[bool, bool]]:
    """The tasks whose caching ``submitted`` would change from ``compiled``: task ->
    (compiled, wanted). Empty when the compiled pipeline fits the submitted configuration."""
    before, after = cache_policy(compiled), cache_policy(submitted)
    return {
        step: (before.get(step, False), after.get(step, False))
        for step in sorted(set(before) | set(after))
        if before.get(step, False) != after.get(step, False)
    }


def compile_time_changes(compiled: Params, submitted: Params) -> list[str]:
    """What ``submitted`` would change that is fixed when the pipeline is compiled.

    The task graph (model keys, what each starts from, the audited candidates), the ``cluster``
    section (retries, resources, the checkpoint volume) and each task's caching live in the
    compiled YAML, not in its ``params`` parameter, so a submit-time override of any of them
    would be silently ignored. Empty when ``submitted`` fits the compiled pipeline.
    """
    changes = [
        f"caching of {step}: compiled {was}, this configuration needs {now}"
        for step, (was, now) in cache_policy_changes(compiled, submitted).items()
    ]

    def graph(p: Params) -> list[tuple[str, str | None]]:
        return [(k, p.models[k].base_model_key) for k in p.model_keys]

    if graph(compiled) != graph(submitted):
        changes.append(f"models: compiled {graph(compiled)}, now {graph(submitted)}")
    if compiled.register.candidates != submitted.register.candidates:
        changes.append("register.candidates (the audit task's inputs)")
    if compiled.cluster != submitted.cluster:
        changes.append("cluster (retries, resources, checkpoint volume)")
    return changes


def step_kind(params: Params, step: str) -> str:
    """The kind of ``step`` (a key of ``params.cluster.resources``): its requests and limits."""
    try:
        return spec_of(params, step).kind
    except KeyError:
        raise KeyError(f"unknown step {step!r}; steps: {[*params.steps, 'finalize']}") from None


def _configure(tasks: dict[str, dsl.PipelineTask], params: Params, retries: bool) -> None:
    """Caching, resources, timeouts, placement, retries and environment of every task (module
    doc)."""
    caching, cluster = cache_policy(params), params.cluster
    for step, task in tasks.items():
        spec = spec_of(params, step)
        _cluster_env(task, spec)
        task.set_caching_options(caching[step])
        _resources(task, getattr(cluster.resources, spec.kind))
        kubernetes.set_timeout(task, getattr(cluster.timeouts, spec.kind))
        if spec.kind == "train":
            _gpu(task, params)
            if retries:
                _retry(task, cluster.retry.train)
        else:
            _cpu_only(task)
            if retries and spec.io_retry:
                _retry(task, cluster.retry.io)
        if spec.kind == "data":  # their run id may not be an input: see the module doc
            kubernetes.use_field_path_as_env(task, PIPELINE_RUN_ENV, RUN_ID_FIELD)


def _cluster_env(task: dsl.PipelineTask, spec: StepSpec) -> None:
    # S3 keys optional: with IRSA / Workload Identity the pod has a cloud identity instead
    kubernetes.use_secret_as_env(task, SECRET_NAME, SECRET_ENV, optional=True)
    kubernetes.use_secret_as_env(task, SECRET_NAME, MLFLOW_AUTH_ENV, optional=False)
    if spec.exit_handler:
        kubernetes.use_secret_as_env(task, SECRET_NAME, ALERT_ENV, optional=True)
    if spec.kind == "data":
        kubernetes.use_secret_as_env(task, SECRET_NAME, PATIENT_SALT_ENV, optional=True)
    kubernetes.use_config_map_as_env(task, CONFIG_MAP_NAME, CONFIG_MAP_ENV, optional=False)
    kubernetes.add_pod_label(task, *MLFLOW_CLIENT_LABEL)


def _resources(task: dsl.PipelineTask, res: ResourceParams) -> None:
    task.set_cpu_request(res.cpu_request).set_cpu_limit(res.cpu_limit)
    task.set_memory_request(res.memory_request).set_memory_limit(res.memory_limit)


def _retry(task: dsl.PipelineTask, retry: RetryParams) -> None:
    task.set_retry(
        num_retries=retry.num_retries,
        backoff_duration=f"{retry.backoff_seconds}s",
        backoff_factor=retry.backoff_factor,
        backoff_max_duration=f"{retry.backoff_max_seconds}s",
    )


def _gpu(task: dsl.PipelineTask, params: Params) -> None:
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(GPU_LIMIT)
    kubernetes.add_node_selector(task, *GPU_NODE_SELECTOR)
    kubernetes.add_toleration(task, **GPU_TOLERATION)
    volume = params.cluster.checkpoints
    if volume.pvc:
        kubernetes.mount_pvc(task, volume.pvc, volume.mount_path)


def _cpu_only(task: dsl.PipelineTask) -> None:
    key, value = GPU_NODE_SELECTOR
    kubernetes.add_node_affinity(
        task, match_expressions=[{"key": key, "operator": "NotIn", "values": [value]}]
    )


def _model_keys(params: Params, name: str) -> tuple[str, ...]:
    """The models behind a models input (every model, or the audited candidates)."""
    if name == CANDIDATES:
        return tuple(k for k in params.register.candidates if k in params.models)
    return params.model_keys


def _components(params: Params) -> dict[str, Any]:
    """One component per task of the run (a model step's per model key)."""
    made: dict[str, Any] = {}
    for spec in STEPS:
        if spec.exit_handler:
            continue
        if spec.per_model:
            for key in params.model_keys:
                made[key] = make_component(
                    spec,
                    model_key=key,
                    transfer=params.models[key].base_model_key is not None,
                    description=describe_model(params, key),
                )
            continue
        keys = next((_model_keys(params, i) for i in spec.inputs if i in (MODELS, CANDIDATES)), ())
        per_model_out = any(p.per_model for p in spec.ui_outputs)
        made[spec.name] = make_component(
            spec, model_keys=keys or (params.model_keys if per_model_out else ())
        )
    return made


def _task_inputs(
    spec: StepSpec,
    params: Params,
    key: str | None,
    produced: dict[str, Any],
    models: dict[str, dsl.PipelineTask],
) -> dict[str, Any]:
    """The artifacts a task takes: the latest of each name, the models by key."""
    inputs: dict[str, Any] = {}
    for name in spec.inputs:
        if name in (MODELS, CANDIDATES):
            inputs |= {k: models[k].outputs["model"] for k in _model_keys(params, name)}
        elif name == BASE_MODEL:
            base = params.models[key].base_model_key if key else None
            if base is not None:
                inputs[name] = models[base].outputs["model"]
        else:
            inputs[name] = produced[name]
    return inputs


def _add_tasks(
    params: Any, resolved: Params, components: dict[str, Any], checkpoint_volume: str
) -> dict[str, dsl.PipelineTask]:
    """Every step's task, in registry order, wired by artifact name."""
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    produced: dict[str, Any] = {}
    tasks: dict[str, dsl.PipelineTask] = {}
    models: dict[str, dsl.PipelineTask] = {}
    for spec in STEPS:
        if spec.exit_handler:
            continue
        for key in resolved.model_keys if spec.per_model else (None,):
            name = key or spec.name
            args: dict[str, Any] = {"params": params}
            if spec.kind != "data":
                args["pipeline_run_id"] = run_id
            if spec.per_model:
                args["checkpoint_volume"] = checkpoint_volume
            args |= _task_inputs(spec, resolved, key, produced, models)
            task = components[name](**args)
            for step in spec.after:
                task.after(tasks[step])
            tasks[name] = task
            if spec.per_model and key is not None:
                models[key] = task
            else:
                produced |= {port.name: task.outputs[port.name] for port in spec.outputs}
    return tasks


def build_pipeline(params: Params, *, retries: bool = True) -> Any:
    """Build the pipeline function whose ``params`` default is the resolved ``params``.

    Args:
        params: The resolved configuration.
        retries: Compile ``params.cluster.retry`` into the tasks (the cluster); ``False`` for
            kfp.local, which would otherwise wait out every backoff of a failing step.
    """
    defaults = pipeline_defaults(params)
    components = _components(params)
    resolved = params  # the pipeline function's own `params` is its KFP parameter
    volume = params.cluster.checkpoints
    checkpoint_volume = volume.mount_path if volume.pvc else ""
    steps = pipeline_steps(params)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Katsamenis et al. 2020: "
            + " -> ".join(steps)
            + " (COVID-19 / bacterial / normal chest X-rays); "
            f"params profile {params.profile}"
        ),
    )
    def cxrflow(params: dict = defaults["params"]):
        exit_task = finalize(params=params, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        exit_task.set_display_name("finalize")
        with dsl.ExitHandler(exit_task, name="steps"):
            tasks = _add_tasks(params, resolved, components, checkpoint_volume)
        _configure({"finalize": exit_task, **tasks}, resolved, retries)
        # KFP returns no pipeline output from inside an exit handler: the champion is the
        # register step's output (registered.json in its artifact).

    return cxrflow
