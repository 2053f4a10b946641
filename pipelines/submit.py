"""Submit the cxrflow pipeline to a Kubeflow Pipelines cluster, or schedule it nightly.

An adapter around ``kfp.Client``, called by ``cxrflow pipeline submit`` and ``cxrflow pipeline
schedule``. A package holds one resolved configuration as its single ``params`` parameter
(``cxrflow pipeline compile``); overrides of one run or schedule (``--set train.epochs=20``) are
applied to that configuration and validated exactly like params.yaml
(:func:`cxrflow.config.params_from_dict`) before anything is sent, and the whole resolved
configuration is sent as the run's ``params``.

The cluster is never hard-coded: the host comes from ``--host`` or ``KFP_HOST``, the namespace
from ``--namespace`` or ``KFP_NAMESPACE``, and a bearer token, where the endpoint needs one,
from ``KFP_TOKEN`` only (a flag would leave it in shell history and ``ps``)::

    kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80 &
    export KFP_HOST=http://localhost:8080
    cxrflow --profile demo pipeline submit --set train.epochs=50
    cxrflow pipeline schedule --package build/cxrflow-pipeline.yaml

KFP cron expressions have six fields, seconds first: ``0 0 2 * * *`` is 02:00:00 every day.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kfp
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
DEFAULT_PACKAGE = "build/cxrflow-pipeline.yaml"
DEFAULT_EXPERIMENT = "cxrflow"
DEFAULT_JOB_NAME = "cxrflow-nightly"
NIGHTLY_CRON = "0 0 2 * * *"


def make_client(host: str | None = None, namespace: str | None = None) -> kfp.Client:
    """A ``kfp.Client`` for ``host`` (or ``$KFP_HOST``), with ``$KFP_TOKEN`` if set.

    Args:
        host: KFP API endpoint, e.g. ``http://localhost:8080``; ``None`` reads ``KFP_HOST``.
        namespace: Kubernetes namespace of a multi-user deployment; ``None`` reads
            ``KFP_NAMESPACE`` and otherwise keeps the client's default.

    Returns:
        The connected client.

    Raises:
        ValueError: If neither ``host`` nor ``KFP_HOST`` is given.
    """
    host = host or os.environ.get(HOST_ENV, "").strip()
    if not host:
        raise ValueError(f"no Kubeflow Pipelines host: pass --host or set {HOST_ENV}")
    kwargs: dict[str, Any] = {"host": host}
    namespace = namespace or os.environ.get(NAMESPACE_ENV, "").strip() or None
    if namespace:
        kwargs["namespace"] = namespace
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        kwargs["existing_token"] = token
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
        ``{}`` without overrides (the run uses the package's configuration), else
        ``{"params": <the whole resolved configuration>}``.

    Raises:
        ParamsError: An unknown key or invalid value, naming the dotted key.
    """
    base = package_params(package_path)
    if not overrides:
        return {}
    resolved = params_from_dict(params_to_dict(base), None, overrides)
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


def submit_run(
    host: str | None,
    package_path: str | Path,
    params_overrides: Sequence[str] = (),
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    *,
    namespace: str | None = None,
    client: Any | None = None,
) -> str:
    """Start one run of the compiled pipeline.

    Args:
        host: KFP endpoint (``None``: ``KFP_HOST``); unused when ``client`` is given.
        package_path: The compiled pipeline YAML.
        params_overrides: ``KEY=VALUE`` overrides (see :func:`resolve_arguments`).
        experiment: KFP experiment, created if missing.
        run_name: Display name; default ``cxrflow-<UTC timestamp>``.
        namespace: Namespace of a multi-user deployment (``None``: ``KFP_NAMESPACE``/default).
        client: A ``kfp.Client`` (or a stand-in in tests); made from ``host`` when ``None``.

    Returns:
        The KFP run id.
    """
    path = Path(package_path)
    arguments = resolve_arguments(path, params_overrides)
    kfp_client = client if client is not None else make_client(host, namespace)
    result = kfp_client.create_run_from_pipeline_package(
        pipeline_file=str(path),
        arguments=arguments,
        run_name=run_name or default_run_name(),
        experiment_name=experiment,
        namespace=namespace,
    )
    return str(result.run_id)


def _recurring_run_ids(client: Any, experiment_id: str, job_name: str) -> list[str]:
    """Ids of the recurring runs named ``job_name`` in the experiment (all pages)."""
    ids: list[str] = []
    token = ""
    while True:
        page = client.list_recurring_runs(
            page_token=token, page_size=100, experiment_id=experiment_id
        )
        for job in getattr(page, "recurring_runs", None) or []:
            if job.display_name == job_name:
                ids.append(str(job.recurring_run_id))
        token = getattr(page, "next_page_token", None) or ""
        if not token:
            return ids


def schedule_nightly(
    host: str | None,
    package_path: str | Path,
    cron: str = NIGHTLY_CRON,
    experiment: str = DEFAULT_EXPERIMENT,
    job_name: str = DEFAULT_JOB_NAME,
    max_concurrency: int = 1,
    *,
    params_overrides: Sequence[str] = (),
    namespace: str | None = None,
    replace: bool = False,
    client: Any | None = None,
) -> str:
    """Create the recurring (nightly) run of the compiled pipeline.

    Missed intervals are not back-filled (``no_catchup``) and at most ``max_concurrency`` runs
    overlap, so a paused schedule never starts a burst of GPU jobs. A second schedule with the
    same name would train twice a night, so an existing one is an error unless ``replace``,
    which creates the new schedule and then deletes the old ones.

    Args:
        host: KFP endpoint (``None``: ``KFP_HOST``); unused when ``client`` is given.
        package_path: The compiled pipeline YAML (uploaded with the schedule).
        cron: Six-field KFP cron expression, seconds first; default 02:00:00 daily.
        experiment: KFP experiment, created if missing.
        job_name: Display name of the recurring run.
        max_concurrency: Most runs of this schedule at once.
        params_overrides: ``KEY=VALUE`` overrides (see :func:`resolve_arguments`).
        namespace: Namespace of a multi-user deployment (``None``: ``KFP_NAMESPACE``/default).
        replace: Replace an existing recurring run of the same name instead of failing.
        client: A ``kfp.Client`` (or a stand-in in tests); made from ``host`` when ``None``.

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
    kfp_client = client if client is not None else make_client(host, namespace)
    exp = kfp_client.create_experiment(name=experiment, namespace=namespace)
    existing = _recurring_run_ids(kfp_client, exp.experiment_id, job_name)
    if existing and not replace:
        raise RuntimeError(
            f"recurring run {job_name!r} already exists in experiment {experiment!r} "
            f"({', '.join(existing)}); pass replace=True (--replace) to replace it"
        )
    job = kfp_client.create_recurring_run(
        experiment_id=exp.experiment_id,
        job_name=job_name,
        description=f"cxrflow nightly: {path.name}, cron {cron!r}",
        cron_expression=cron,
        max_concurrency=max_concurrency,
        no_catchup=True,
        params=arguments,
        pipeline_package_path=str(path),
        enabled=True,
    )
    for old in existing:
        kfp_client.delete_recurring_run(old)
    return str(job.recurring_run_id)
