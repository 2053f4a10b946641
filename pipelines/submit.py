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
"""

from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import kfp
import kfp_server_api
import urllib3
import yaml

from cxrflow.config import (
    Params,
    params_from_dict,
    params_from_kfp,
    params_to_dict,
    params_to_kfp,
)

HOST_ENV = "KFP_HOST"
NAMESPACE_ENV = "KFP_NAMESPACE"
TOKEN_ENV = "KFP_TOKEN"
SERVICE_ACCOUNT_ENV = "KFP_SERVICE_ACCOUNT"
KUBE_CONTEXT_ENV = "KFP_KUBE_CONTEXT"
DEFAULT_PACKAGE = "build/cxrflow-pipeline.yaml"
DEFAULT_EXPERIMENT = "cxrflow"
DEFAULT_JOB_NAME = "cxrflow-nightly"
# infra/k8s/pipeline-runs: reads exactly the ConfigMap and Secret the steps need
DEFAULT_SERVICE_ACCOUNT = "cxrflow-pipeline-runner"
NIGHTLY_CRON = "0 0 2 * * *"
# where kfp.Client itself reaches KFP through the API server (kfp.Client._KUBE_PROXY_PATH)
KUBE_PROXY_PATH = "api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy/"
_PAGE_SIZE = 100

P = ParamSpec("P")
R = TypeVar("R")


class KfpApiError(RuntimeError):
    """The KFP API refused a request or could not be reached (status and message, one line)."""


def _api_message(body: Any) -> str:
    """The ``message`` of a google.rpc.Status error body, else the body itself (shortened)."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        message = json.loads(text).get("message") or text
    except (ValueError, AttributeError):
        message = text
    return " ".join(str(message).split())[:300]


@contextmanager
def _api_errors() -> Iterator[None]:
    # urllib3 logs a warning per retry of a refused connection; the one error line says it
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    if not pool_log.isEnabledFor(logging.DEBUG):
        pool_log.setLevel(logging.ERROR)
    try:
        yield
    except kfp_server_api.ApiException as exc:
        raise KfpApiError(
            f"KFP API answered {exc.status} {exc.reason}: {_api_message(exc.body)}"
        ) from exc
    except (urllib3.exceptions.HTTPError, TimeoutError) as exc:
        raise KfpApiError(f"cannot reach the KFP API: {exc}") from exc
    finally:
        pool_log.setLevel(level)


def _talks_to_kfp(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the client's HTTP errors into one-line :class:`KfpApiError` errors."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _api_errors():
            return func(*args, **kwargs)

    return wrapper


def resolve_namespace(namespace: str | None = None) -> str | None:
    """``namespace``, else ``$KFP_NAMESPACE``, else ``None`` (the client's default)."""
    return namespace or os.environ.get(NAMESPACE_ENV, "").strip() or None


def resolve_service_account(service_account: str | None = None) -> str | None:
    """The ServiceAccount runs execute as.

    ``service_account``, else ``$KFP_SERVICE_ACCOUNT``, else ``cxrflow-pipeline-runner`` (the
    one ``infra/k8s/pipeline-runs`` creates). An empty string (``--service-account ""``) names
    none, so KFP uses its own ``pipeline-runner``.
    """
    if service_account is None:
        service_account = os.environ.get(SERVICE_ACCOUNT_ENV, DEFAULT_SERVICE_ACCOUNT)
    return service_account.strip() or None


def _kube_endpoint(context: str) -> dict[str, Any]:
    """``kfp.Client`` arguments that reach KFP through the kubeconfig ``context``.

    The API server proxies the ``ml-pipeline`` service of namespace ``kubeflow`` (the path
    ``kfp.Client`` itself uses). Not ``kfp.Client(kube_context=...)`` for token users (OIDC,
    exec plugins, service-account tokens): the kubernetes client's token refresh hook resets
    the configuration's host before every request, so kfp's proxy path is lost and every call
    goes to the bare API server (kubeflow/pipelines#8313). Users with client certificates have
    no such hook, and ``kfp.Client`` has no certificate options, so they keep kfp's own path.

    Raises:
        ValueError: If there is no kubeconfig or no such context in it (``kfp.Client`` would
            only print "Failed to load kube config." and then talk to localhost).
    """
    from kubernetes import config as k8s_config

    try:
        contexts, _ = k8s_config.list_kube_config_contexts()
    except (k8s_config.ConfigException, OSError) as exc:
        raise ValueError(f"kube context {context!r}: no usable kubeconfig ({exc})") from exc
    names = [c["name"] for c in contexts or []]
    if context not in names:
        raise ValueError(
            f"kube context {context!r} is not in the kubeconfig (contexts: {', '.join(names)})"
        )
    k8s = kfp_server_api.Configuration()
    k8s_config.load_kube_config(client_configuration=k8s, context=context, persist_config=False)
    token = (k8s.get_api_key_with_prefix("authorization") or "").removeprefix("Bearer ").strip()
    if not token:
        return {"kube_context": context}
    return {
        "host": f"{k8s.host.rstrip('/')}/{KUBE_PROXY_PATH}",
        "existing_token": token,
        "ssl_ca_cert": k8s.ssl_ca_cert,
        "verify_ssl": k8s.verify_ssl,
    }


@_talks_to_kfp
def make_client(
    host: str | None = None, namespace: str | None = None, kube_context: str | None = None
) -> kfp.Client:
    """A ``kfp.Client`` for an API endpoint (with ``$KFP_TOKEN``) or a kubeconfig context.

    Arguments win over the environment: ``host``, else ``kube_context``, else ``$KFP_HOST``,
    else ``$KFP_KUBE_CONTEXT``. Through a kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``),
    the client reaches the ``ml-pipeline`` service of namespace ``kubeflow`` through the
    Kubernetes API server's proxy with the context's credentials; ``KFP_TOKEN`` is then not
    used.

    Args:
        host: KFP API endpoint, e.g. ``http://localhost:8080``.
        namespace: Kubernetes namespace of a multi-user deployment; ``None`` reads
            ``KFP_NAMESPACE`` and otherwise keeps the client's default.
        kube_context: A context of the kubeconfig.

    Returns:
        The connected client.

    Raises:
        ValueError: If no endpoint is given, both ``host`` and ``kube_context`` are, or the
            context is not in the kubeconfig.
    """
    if host and kube_context:
        raise ValueError("give --host or --kube-context, not both")
    if not host and not kube_context:
        host = os.environ.get(HOST_ENV, "").strip() or None
        kube_context = None if host else os.environ.get(KUBE_CONTEXT_ENV, "").strip() or None
    kwargs: dict[str, Any]
    if host:
        kwargs = {"host": host}
        token = os.environ.get(TOKEN_ENV, "").strip()
        if token:
            kwargs["existing_token"] = token
    elif kube_context:
        kwargs = _kube_endpoint(kube_context)
    else:
        raise ValueError(
            f"no Kubeflow Pipelines host: pass --host or set {HOST_ENV} "
            f"(or --kube-context / {KUBE_CONTEXT_ENV} to go through a kubeconfig)"
        )
    namespace = resolve_namespace(namespace)
    if namespace and "host" in kwargs:
        # Not with kfp's own kubeconfig path: it would build the proxy path from it. The
        # functions below pass the namespace with every call anyway.
        kwargs["namespace"] = namespace
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This client only works", FutureWarning)
        return kfp.Client(**kwargs)


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
    """
    path = Path(package_path)
    arguments = resolve_arguments(path, params_overrides)  # before connecting: fail fast
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
    """
    cron = validate_cron(cron)
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    path = Path(package_path)
    arguments = resolve_arguments(path, params_overrides)
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


# ------------------------------------------------------------------- what is on the cluster


@dataclass(frozen=True)
class DataVersion:
    """Which data a run read, from its ``params`` (``data.registry`` / ``data.version``)."""

    version: str  # a registry tag/commit, "HEAD" (unpinned), "local", "phantom" or "?"
    registry: str | None = None

    @classmethod
    def of(cls, params: Mapping[str, Any] | None) -> DataVersion:
        """Read leniently (runs of older packages must still list); KFP's ``""`` is null."""
        if not isinstance(params, Mapping):
            return cls("?")
        data = params.get("data")
        data = data if isinstance(data, Mapping) else {}
        registry = data.get("registry") or None
        if registry:
            return cls(str(data.get("version") or "HEAD"), str(registry))
        return cls("local" if data.get("sources") else "phantom")


def _run_params(runtime_config: Any, pipeline_spec: Any) -> Mapping[str, Any] | None:
    """The ``params`` a run or schedule was given, else its inline package's default."""
    given = getattr(runtime_config, "parameters", None) or {}
    if isinstance(given.get("params"), Mapping):
        return dict(given["params"])
    spec = pipeline_spec or {}
    spec = spec.get("pipeline_spec", spec)  # {pipeline_spec, platform_spec} with a platform spec
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    default = declared.get("params", {}).get("defaultValue")
    return default if isinstance(default, Mapping) else None


def _time(value: Any) -> datetime | None:
    """A timestamp in UTC; the API's Unix epoch means "not set"."""
    if not isinstance(value, datetime) or value.timestamp() <= 0:
        return None
    return value.astimezone(UTC)


@dataclass(frozen=True)
class ScheduleInfo:
    """A recurring run, as ``cxrflow pipeline schedule list`` shows it."""

    recurring_run_id: str
    name: str
    enabled: bool
    cron: str
    max_concurrency: int
    catchup: bool
    data: DataVersion
    created_at: datetime | None

    @classmethod
    def of(cls, job: Any) -> ScheduleInfo:
        """From a ``V2beta1RecurringRun``."""
        trigger = job.trigger
        if trigger is not None and trigger.cron_schedule is not None:
            cron = str(trigger.cron_schedule.cron)
        elif trigger is not None and trigger.periodic_schedule is not None:
            cron = f"every {trigger.periodic_schedule.interval_second}s"
        else:
            cron = "?"
        status = job.status or ("ENABLED" if job.mode == "ENABLE" else "DISABLED")
        return cls(
            recurring_run_id=str(job.recurring_run_id),
            name=str(job.display_name),
            enabled=status == "ENABLED",
            cron=cron,
            max_concurrency=int(job.max_concurrency or 1),  # int64: a string in JSON
            catchup=not job.no_catchup,
            data=DataVersion.of(_run_params(job.runtime_config, job.pipeline_spec)),
            created_at=_time(job.created_at),
        )


@dataclass(frozen=True)
class RunInfo:
    """A run, as ``cxrflow pipeline runs`` shows it."""

    run_id: str
    name: str
    state: str
    created_at: datetime | None
    finished_at: datetime | None
    data: DataVersion
    recurring_run_id: str | None

    @classmethod
    def of(cls, run: Any) -> RunInfo:
        """From a ``V2beta1Run``."""
        return cls(
            run_id=str(run.run_id),
            name=str(run.display_name),
            state=str(run.state or "RUNTIME_STATE_UNSPECIFIED"),
            created_at=_time(run.created_at),
            finished_at=_time(run.finished_at),
            data=DataVersion.of(_run_params(run.runtime_config, run.pipeline_spec)),
            recurring_run_id=run.recurring_run_id or None,
        )


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
