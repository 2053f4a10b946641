"""Submit, schedule and list runs of the cxrflow pipeline on a Kubeflow Pipelines cluster.

An adapter around ``kfp.Client``, called by ``cxrflow pipeline submit``, ``cxrflow pipeline
schedule create|list|enable|disable|delete`` and ``cxrflow pipeline runs``. A package holds one
resolved configuration as its single ``params`` parameter (``cxrflow pipeline compile``);
overrides of one run or schedule (``--set train.epochs=20``) are applied to that configuration
and validated exactly like params.yaml (:func:`cxrflow.config.params_from_dict`) before anything
is sent, and the whole resolved configuration is always sent as the run's ``params``, so that
every run on the cluster says which configuration (and data version) it ran with.

The cluster is never hard-coded. Either the API endpoint comes from ``--host`` or ``KFP_HOST``
(with a bearer token, where the endpoint needs one, from ``KFP_TOKEN`` only: a flag would leave
it in shell history and ``ps``), or a kubeconfig context from ``--kube-context`` or
``KFP_KUBE_CONTEXT`` (``KUBECONFIG`` picks the file, as for kubectl) and ``kfp.Client`` reaches
the API through the Kubernetes API server's service proxy with the kubeconfig's credentials.
The namespace of a multi-user deployment comes from ``--namespace`` or ``KFP_NAMESPACE``::

    kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80 &
    export KFP_HOST=http://localhost:8080
    cxrflow --profile demo pipeline submit --set train.epochs=50
    cxrflow pipeline schedule create --package build/cxrflow-pipeline.yaml
    cxrflow pipeline schedule list
    cxrflow pipeline runs --limit 5

KFP cron expressions have six fields, seconds first: ``0 0 2 * * *`` is 02:00:00 every day.

Connecting (:mod:`pipelines.kfp_client`) and the records shown for schedules and runs
(:mod:`pipelines.run_records`) live in sibling modules; this module builds the arguments and
submits, schedules and lists.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kfp
import yaml

from cxrflow.config import Params, params_from_dict, params_from_kfp, params_to_dict, params_to_kfp
from cxrflow.weights import require_reachable_weights
from pipelines.kfp_client import (
    DEFAULT_SERVICE_ACCOUNT,
    HOST_ENV,
    KUBE_CONTEXT_ENV,
    KUBE_PROXY_PATH,
    NAMESPACE_ENV,
    SERVICE_ACCOUNT_ENV,
    TOKEN_ENV,
    KfpApiError,
    _talks_to_kfp,
    make_client,
    resolve_namespace,
    resolve_service_account,
)
from pipelines.run_records import DataVersion, RunInfo, ScheduleInfo

DEFAULT_PACKAGE = "build/cxrflow-pipeline.yaml"
DEFAULT_EXPERIMENT = "cxrflow"
DEFAULT_JOB_NAME = "cxrflow-nightly"


NIGHTLY_CRON = "0 0 2 * * *"


_PAGE_SIZE = 100


def pipeline_parameters(package_path: str | Path) -> dict[str, Any]:
    """The pipeline parameters of a compiled package and their compiled defaults.

    Args:
        package_path: A KFP v2 pipeline YAML written by the compiler.

    Returns:
        ``{parameter name: default value}`` (``None`` where the package has no default).

    Raises:
        FileNotFoundError: If the package does not exist.
        ValueError: If the file is not a compiled KFP pipeline.
    """
    path = Path(package_path)
    if not path.is_file():
        raise FileNotFoundError(f"pipeline package not found: {path} (run `make compile`)")
    with path.open() as fh:
        spec = next(iter(yaml.safe_load_all(fh)), None)
    if not isinstance(spec, dict) or "root" not in spec or "pipelineInfo" not in spec:
        raise ValueError(f"{path} is not a compiled KFP pipeline (no root / pipelineInfo)")
    params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return {name: decl.get("defaultValue") for name, decl in params.items()}


def package_params(package_path: str | Path) -> Params:
    """The resolved configuration a compiled package carries (its ``params`` default).

    Raises:
        ValueError: If the package has no ``params`` parameter (compiled by an older cxrflow).
    """
    defaults = pipeline_parameters(package_path)
    if not isinstance(defaults.get("params"), Mapping):
        raise ValueError(
            f"{package_path}: no `params` pipeline parameter; recompile it with "
            "`cxrflow pipeline compile`"
        )
    return params_from_kfp(defaults["params"])


def resolve_arguments(package_path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The run arguments: the package's configuration with ``overrides`` applied and validated.

    Args:
        package_path: The compiled pipeline package.
        overrides: ``KEY=VALUE`` strings (``train.epochs=20``), validated like params.yaml.

    Returns:
        ``{"params": <the whole resolved configuration>}``, also without overrides, so that
        the run records exactly what it ran with (the data version included).

    Raises:
        ParamsError: An unknown key or invalid value, naming the dotted key.
        ValueError: If an override changes what is fixed at compile time (the task graph,
            caching, retries, resources; see
            :func:`pipelines.cxrflow_pipeline.compile_time_changes`): recompile instead.
    """
    from pipelines.cxrflow_pipeline import compile_time_changes

    base = package_params(package_path)
    resolved = params_from_dict(params_to_dict(base), None, overrides) if overrides else base
    changes = compile_time_changes(base, resolved)
    if changes:
        given = " ".join(f"--set {o}" for o in overrides)
        raise ValueError(
            f"{package_path} was compiled for another configuration: "
            + "; ".join(changes)
            + f". Recompile with `cxrflow {given} pipeline compile` (or submit without "
            "--package, which compiles)"
        )
    return {"params": params_to_kfp(resolved)}


def validate_cron(cron: str) -> str:
    """Check that ``cron`` is a six-field KFP cron expression (seconds first).

    Args:
        cron: E.g. ``"0 0 2 * * *"`` (02:00:00 daily).

    Returns:
        The expression, whitespace-normalised.

    Raises:
        ValueError: If it does not have six fields; a classic five-field expression gets a
            hint to prepend the seconds field.
    """
    fields = cron.split()
    if len(fields) == 5:
        raise ValueError(
            f"KFP cron needs 6 fields (seconds first); for {cron!r} use {'0 ' + ' '.join(fields)!r}"
        )
    if len(fields) != 6:
        raise ValueError(f"KFP cron needs 6 fields (sec min hour day month weekday): {cron!r}")
    return " ".join(fields)


def default_run_name(now: datetime | None = None) -> str:
    """``cxrflow-YYYYmmdd-HHMMSS`` in UTC."""
    return f"cxrflow-{(now or datetime.now(UTC)):%Y%m%d-%H%M%S}"


@_talks_to_kfp
def submit_run(
    host: str | None,
    package_path: str | Path,
    params_overrides: Sequence[str] = (),
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    *,
    namespace: str | None = None,
    kube_context: str | None = None,
    service_account: str | None = None,
    client: kfp.Client | None = None,
) -> str:
    """Start one run of the compiled pipeline.

    Args:
        host: KFP endpoint (see :func:`make_client`); unused when ``client`` is given.
        package_path: The compiled pipeline YAML, sent inline with the run.
        params_overrides: ``KEY=VALUE`` overrides (see :func:`resolve_arguments`).
        experiment: KFP experiment, created if missing.
        run_name: Display name; default ``cxrflow-<UTC timestamp>``.
        namespace: Namespace of a multi-user deployment (``None``: ``KFP_NAMESPACE``/default).
        kube_context: Kubeconfig context instead of ``host`` (see :func:`make_client`).
        service_account: ServiceAccount of the run's pods (see
            :func:`resolve_service_account`).
        client: A ``kfp.Client``; made from ``host``/``kube_context`` when ``None``.

    Returns:
        The KFP run id.

    Raises:
        UnreachableWeightsError: A model needs weights its pod cannot get
            (:func:`cxrflow.weights.unreachable_weights`); refused before any connection.
    """
    path = Path(package_path)
    arguments = resolve_arguments(path, params_overrides)  # before connecting: fail fast
    require_reachable_weights(params_from_kfp(arguments["params"]), "submit")
    namespace = resolve_namespace(namespace)
    kfp_client = client if client is not None else make_client(host, namespace, kube_context)
    result = kfp_client.create_run_from_pipeline_package(
        pipeline_file=str(path),
        arguments=arguments,
        run_name=run_name or default_run_name(),
        experiment_name=experiment,
        namespace=namespace,
        service_account=resolve_service_account(service_account),
    )
    return str(result.run_id)


def _experiment_id(client: kfp.Client, experiment: str, namespace: str | None) -> str | None:
    """The id of the experiment named ``experiment`` in the namespace, ``None`` if none.

    Raises:
        ValueError: If several experiments have that name.
    """
    predicate = {"operation": "EQUALS", "key": "display_name", "stringValue": experiment}
    page = client.list_experiments(
        page_size=2,
        filter=json.dumps({"predicates": [predicate]}),
        namespace=resolve_namespace(namespace),
    )
    found = page.experiments or []
    if len(found) > 1:
        raise ValueError(f"{len(found)} KFP experiments are named {experiment!r}")
    return str(found[0].experiment_id) if found else None


def _recurring_runs(client: kfp.Client, experiment_id: str) -> list[Any]:
    """Every recurring run of the experiment (all pages), oldest first."""
    jobs: list[Any] = []
    token = ""
    while True:
        page = client.list_recurring_runs(
            page_token=token,
            page_size=_PAGE_SIZE,
            sort_by="created_at",
            experiment_id=experiment_id,
        )
        jobs.extend(page.recurring_runs or [])
        token = page.next_page_token or ""
        if not token:
            return jobs


@_talks_to_kfp
def schedule_nightly(
    host: str | None,
    package_path: str | Path,
    cron: str = NIGHTLY_CRON,
    experiment: str = DEFAULT_EXPERIMENT,
    job_name: str = DEFAULT_JOB_NAME,
    max_concurrency: int = 1,
    *,
    params_overrides: Sequence[str] = (),
    catchup: bool = False,
    namespace: str | None = None,
    kube_context: str | None = None,
    service_account: str | None = None,
    replace: bool = False,
    client: kfp.Client | None = None,
) -> str:
    """Create the recurring (nightly) run of the compiled pipeline.

    Missed intervals are not back-filled unless ``catchup`` (KFP's ``no_catchup``), and at
    most ``max_concurrency`` runs overlap, so re-enabling a paused schedule never starts a
    burst of GPU jobs. A second schedule with the same name would train twice a night, so an
    existing one is an error unless ``replace``, which creates the new schedule and then
    deletes the old ones.

    Args:
        host: KFP endpoint (see :func:`make_client`); unused when ``client`` is given.
        package_path: The compiled pipeline YAML, sent inline with the recurring run.
        cron: Six-field KFP cron expression, seconds first; default 02:00:00 daily.
        experiment: KFP experiment, created if missing.
        job_name: Display name of the recurring run.
        max_concurrency: Most runs of this schedule at once.
        params_overrides: ``KEY=VALUE`` overrides (see :func:`resolve_arguments`).
        catchup: Back-fill every interval missed while the schedule was disabled or behind.
        namespace: Namespace of a multi-user deployment (``None``: ``KFP_NAMESPACE``/default).
        kube_context: Kubeconfig context instead of ``host`` (see :func:`make_client`).
        service_account: ServiceAccount of the runs' pods (see
            :func:`resolve_service_account`).
        replace: Replace an existing recurring run of the same name instead of failing.
        client: A ``kfp.Client``; made from ``host``/``kube_context`` when ``None``.

    Returns:
        The recurring run id.

    Raises:
        ValueError: For a bad cron expression, ``max_concurrency < 1`` or bad overrides.
        RuntimeError: If a recurring run named ``job_name`` exists and ``replace`` is false.
        UnreachableWeightsError: A model needs weights its pod cannot get
            (:func:`cxrflow.weights.unreachable_weights`); refused before any connection.
    """
    cron = validate_cron(cron)
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    path = Path(package_path)
    arguments = resolve_arguments(path, params_overrides)
    require_reachable_weights(params_from_kfp(arguments["params"]), "schedule create")
    namespace = resolve_namespace(namespace)
    kfp_client = client if client is not None else make_client(host, namespace, kube_context)
    exp = kfp_client.create_experiment(name=experiment, namespace=namespace)
    existing = [
        str(job.recurring_run_id)
        for job in _recurring_runs(kfp_client, exp.experiment_id)
        if job.display_name == job_name
    ]
    if existing and not replace:
        raise RuntimeError(
            f"recurring run {job_name!r} already exists in experiment {experiment!r} "
            f"({', '.join(existing)}); pass replace=True (--replace) to replace it"
        )
    job = kfp_client.create_recurring_run(
        experiment_id=exp.experiment_id,
        job_name=job_name,
        description=f"cxrflow: {path.name}, cron {cron!r}",
        cron_expression=cron,
        max_concurrency=max_concurrency,
        no_catchup=not catchup,
        params=arguments,
        pipeline_package_path=str(path),
        enabled=True,
        service_account=resolve_service_account(service_account),
    )
    for old in existing:
        kfp_client.delete_recurring_run(old)
    return str(job.recurring_run_id)


@_talks_to_kfp
def list_schedules(
    client: kfp.Client, experiment: str = DEFAULT_EXPERIMENT, *, namespace: str | None = None
) -> list[ScheduleInfo]:
    """The recurring runs of the experiment, oldest first (none if it does not exist).

    Args:
        client: A ``kfp.Client`` (:func:`make_client`).
        experiment: KFP experiment name.
        namespace: Namespace of a multi-user deployment (``None``: ``KFP_NAMESPACE``/default).
    """
    experiment_id = _experiment_id(client, experiment, namespace)
    if experiment_id is None:
        return []
    return [ScheduleInfo.of(job) for job in _recurring_runs(client, experiment_id)]


def _find_schedule(client: kfp.Client, ref: str, experiment: str, namespace: str | None) -> Any:
    """The recurring run with id ``ref``, else the one named ``ref``, in the experiment.

    Raises:
        LookupError: If there is none.
        ValueError: If the name is ambiguous (the message lists the ids to choose from).
    """
    experiment_id = _experiment_id(client, experiment, namespace)
    if experiment_id is None:
        raise LookupError(f"no KFP experiment named {experiment!r}, so no recurring run {ref!r}")
    jobs = _recurring_runs(client, experiment_id)
    by_id = [job for job in jobs if job.recurring_run_id == ref]
    named = by_id or [job for job in jobs if job.display_name == ref]
    if len(named) == 1:
        return named[0]
    if not named:
        names = sorted({str(job.display_name) for job in jobs})
        raise LookupError(
            f"no recurring run named {ref!r} (nor with that id) in experiment {experiment!r}; "
            f"there: {', '.join(names) or 'none'}"
        )
    ids = ", ".join(str(job.recurring_run_id) for job in named)
    raise ValueError(f"{len(named)} recurring runs are named {ref!r}; give one id: {ids}")


SCHEDULE_ACTIONS = ("enable", "disable", "delete")


@_talks_to_kfp
def change_schedule(
    client: kfp.Client,
    action: str,
    ref: str,
    experiment: str = DEFAULT_EXPERIMENT,
    *,
    namespace: str | None = None,
) -> ScheduleInfo:
    """Enable, disable (pause) or delete the recurring run named (or with id) ``ref``.

    Deleting leaves the runs it started.

    Args:
        client: A ``kfp.Client`` (:func:`make_client`).
        action: One of :data:`SCHEDULE_ACTIONS`.
        ref: The recurring run's id or name.
        experiment: KFP experiment name.
        namespace: Namespace of a multi-user deployment (``None``: ``KFP_NAMESPACE``/default).

    Returns:
        The recurring run as the API reports it afterwards (deleted: as it was).

    Raises:
        LookupError: No such recurring run. ValueError: an ambiguous name or unknown action.
    """
    if action not in SCHEDULE_ACTIONS:
        raise ValueError(f"unknown schedule action {action!r}; one of {SCHEDULE_ACTIONS}")
    job = _find_schedule(client, ref, experiment, namespace)
    getattr(client, f"{action}_recurring_run")(job.recurring_run_id)
    if action == "delete":
        return ScheduleInfo.of(job)
    return ScheduleInfo.of(client.get_recurring_run(job.recurring_run_id))


@_talks_to_kfp
def list_runs(
    client: kfp.Client,
    experiment: str = DEFAULT_EXPERIMENT,
    limit: int = 20,
    *,
    namespace: str | None = None,
) -> list[RunInfo]:
    """The most recent runs of the experiment, newest first (none if it does not exist).

    Args:
        client: A ``kfp.Client`` (:func:`make_client`).
        experiment: KFP experiment name.
        limit: At most this many runs (fetched page by page).
        namespace: Namespace of a multi-user deployment (``None``: ``KFP_NAMESPACE``/default).

    Raises:
        ValueError: If ``limit < 1``.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    experiment_id = _experiment_id(client, experiment, namespace)
    if experiment_id is None:
        return []
    runs: list[RunInfo] = []
    token = ""
    while len(runs) < limit:
        page = client.list_runs(
            page_token=token,
            page_size=min(limit - len(runs), _PAGE_SIZE),
            sort_by="created_at desc",
            experiment_id=experiment_id,
        )
        runs.extend(RunInfo.of(run) for run in page.runs or [])
        token = page.next_page_token or ""
        if not token:
            break
    return runs[:limit]


__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_JOB_NAME",
    "DEFAULT_PACKAGE",
    "DEFAULT_SERVICE_ACCOUNT",
    "HOST_ENV",
    "KUBE_CONTEXT_ENV",
    "KUBE_PROXY_PATH",
    "NAMESPACE_ENV",
    "NIGHTLY_CRON",
    "SCHEDULE_ACTIONS",
    "SERVICE_ACCOUNT_ENV",
    "TOKEN_ENV",
    "DataVersion",
    "KfpApiError",
    "RunInfo",
    "ScheduleInfo",
    "change_schedule",
    "default_run_name",
    "list_runs",
    "list_schedules",
    "make_client",
    "package_params",
    "pipeline_parameters",
    "resolve_arguments",
    "resolve_namespace",
    "resolve_service_account",
    "schedule_nightly",
    "submit_run",
    "validate_cron",
]
