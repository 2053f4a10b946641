"""Submit the compiled cxrflow pipeline to a Kubeflow Pipelines cluster, or schedule it nightly.

An adapter around ``kfp.Client``: it reads a package compiled by ``cxrflow pipeline compile``
(``make compile`` writes ``build/cxrflow-pipeline.yaml``), checks the parameter overrides
against the package's own parameters, and calls ``create_run_from_pipeline_package`` or
``create_recurring_run``. The profile is applied at compile time, so compile with
``--profile`` to change it; ``--param`` overrides individual parameters of one run or schedule.

The cluster is never hard-coded: the host comes from ``--host`` or ``KFP_HOST``, the namespace
from ``--namespace`` or ``KFP_NAMESPACE``, and a bearer token, where the endpoint needs one,
from ``KFP_TOKEN`` only (a flag would leave it in shell history and ``ps``)::

    kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80 &
    export KFP_HOST=http://localhost:8080
    python -m pipelines.submit run --package build/cxrflow-pipeline.yaml \\
        --param 'train_params={"epochs": 50}'
    python -m pipelines.submit schedule --package build/cxrflow-pipeline.yaml

KFP cron expressions have six fields, seconds first: ``0 0 2 * * *`` is 02:00:00 every day.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kfp
import kfp_server_api
import urllib3
import yaml

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


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_arguments(
    package_path: str | Path, overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Check ``overrides`` against the package's parameters and complete partial sections.

    Each params section is one dict parameter (``train_params``, ...). A dict override is merged
    recursively into the compiled default, so ``{"train_params": {"epochs": 2}}`` changes one
    key and keeps the rest of the section. Parameters not overridden are not sent: the run uses
    the package's defaults.

    Args:
        package_path: The compiled pipeline package.
        overrides: ``{parameter name: value}``; ``None`` or empty for the defaults.

    Returns:
        The run arguments to send.

    Raises:
        ValueError: For an unknown parameter name, or a non-dict value for a dict parameter.
    """
    params = pipeline_parameters(package_path)
    arguments: dict[str, Any] = {}
    for name, value in (overrides or {}).items():
        if name not in params:
            known = ", ".join(sorted(params))
            raise ValueError(f"unknown pipeline parameter {name!r}; the package has: {known}")
        default = params[name]
        if isinstance(default, Mapping):
            if not isinstance(value, Mapping):
                raise ValueError(f"parameter {name!r} is a dict; got {type(value).__name__}")
            arguments[name] = _merge(default, value)
        else:
            arguments[name] = value
    return arguments


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
    params_overrides: Mapping[str, Any] | None = None,
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
        params_overrides: Parameter overrides (see :func:`resolve_arguments`).
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
    params_overrides: Mapping[str, Any] | None = None,
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
        params_overrides: Parameter overrides (see :func:`resolve_arguments`).
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


def parse_param(text: str) -> tuple[str, Any]:
    """Parse ``name=value``; the value is JSON when it parses as JSON, else a string.

    Args:
        text: E.g. ``'train_params={"epochs": 2}'`` or ``data_version=v3``.

    Returns:
        ``(name, value)``.

    Raises:
        argparse.ArgumentTypeError: Without ``=`` or with an empty name.
    """
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (``run`` and ``schedule`` subcommands)."""
    p = argparse.ArgumentParser(
        prog="python -m pipelines.submit",
        description="Submit the compiled cxrflow pipeline to Kubeflow Pipelines, or schedule it.",
    )
    p.add_argument("--host", default=None, help=f"KFP API endpoint (default: ${HOST_ENV})")
    p.add_argument(
        "--namespace", default=None, help=f"multi-user namespace (default: ${NAMESPACE_ENV})"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--package", default=DEFAULT_PACKAGE, help="compiled pipeline YAML")
        s.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="KFP experiment")
        s.add_argument(
            "--param",
            action="append",
            type=parse_param,
            default=[],
            metavar="NAME=VALUE",
            help="override a pipeline parameter (JSON value; dicts merge into the default)",
        )

    run = sub.add_parser("run", help="start one run now")
    common(run)
    run.add_argument("--run-name", default=None, help="display name (default: timestamped)")

    sch = sub.add_parser("schedule", help="create the nightly recurring run")
    common(sch)
    sch.add_argument(
        "--cron", default=NIGHTLY_CRON, help=f"6-field cron (default {NIGHTLY_CRON!r})"
    )
    sch.add_argument("--job-name", default=DEFAULT_JOB_NAME, help="recurring run name")
    sch.add_argument("--max-concurrency", type=int, default=1, help="runs at once (default 1)")
    sch.add_argument("--replace", action="store_true", help="replace a schedule of that name")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the run or recurring run id."""
    args = build_parser().parse_args(argv)
    overrides = dict(args.param)
    try:
        if args.command == "run":
            run_id = submit_run(
                args.host,
                args.package,
                overrides,
                experiment=args.experiment,
                run_name=args.run_name,
                namespace=args.namespace,
            )
            print(f"run id: {run_id}")
        else:
            job_id = schedule_nightly(
                args.host,
                args.package,
                cron=args.cron,
                experiment=args.experiment,
                job_name=args.job_name,
                max_concurrency=args.max_concurrency,
                params_overrides=overrides,
                namespace=args.namespace,
                replace=args.replace,
            )
            print(f"recurring run id: {job_id}")
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except urllib3.exceptions.HTTPError as exc:
        print(f"error: cannot reach Kubeflow Pipelines: {exc}", file=sys.stderr)
        return 1
    except kfp_server_api.ApiException as exc:
        print(f"error: Kubeflow Pipelines API: {exc.status} {exc.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
