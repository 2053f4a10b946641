"""``cxrflow pipeline ...``: compile the Kubeflow pipeline, run it locally, submit it, schedule
it and list its runs on a cluster.

The core CLI never imports this module: pyproject.toml declares it in the ``cxrflow.cli`` entry
point group (``pipeline = "pipelines.cli:pipeline_app"``), and ``cxrflow``'s ``main`` mounts it
as the ``pipeline`` command group. Importing it imports no kfp: each command imports what it
runs.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from cxrflow.cli.context import current_settings, given, print_json
from cxrflow.cli.errors import add_user_errors

# the environment variables pipelines.submit reads (spelled here too, since importing it imports
# kfp; tests/unit/test_cli.py checks that both agree)
HOST_ENV = "KFP_HOST"
NAMESPACE_ENV = "KFP_NAMESPACE"
SERVICE_ACCOUNT_ENV = "KFP_SERVICE_ACCOUNT"
KUBE_CONTEXT_ENV = "KFP_KUBE_CONTEXT"

add_user_errors("pipelines.progress:LocalStepError", "pipelines.submit:KfpApiError")
add_user_errors("pipelines.containers:ContainerError")

pipeline_app = typer.Typer(
    help="the Kubeflow pipeline: compile, run locally, submit, schedule, list runs",
    no_args_is_help=True,
)
schedule_app = typer.Typer(
    help="recurring runs on the cluster: create, list, enable, disable, delete",
    no_args_is_help=True,
)
pipeline_app.add_typer(schedule_app, name="schedule")


def _from_command_line(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    """The option's value when given on the command line, else None.

    The ``envvar=`` of the KFP options is there so that ``--help`` names the variables;
    ``pipelines.submit`` reads them itself, with its documented precedence (``--host``, else
    ``--kube-context``, else ``$KFP_HOST``, else ``$KFP_KUBE_CONTEXT``), which one value read
    here from the environment would upset (``--kube-context`` with ``KFP_HOST`` set).
    """
    source = ctx.get_parameter_source(param.name or "")
    return None if source is not None and source.name == "ENVIRONMENT" else value


@pipeline_app.command("compile")
def pipeline_compile(output: Annotated[Path, typer.Option(help="pipeline YAML to write")]) -> None:
    """Write the KFP v2 pipeline YAML; its `params` default is the resolved configuration."""
    from cxrflow.config import params_hash
    from pipelines.compile import compile_pipeline

    params = current_settings().params()
    path = compile_pipeline(params, output)
    print(f"compiled pipeline (profile {params.profile}, params {params_hash(params)}) -> {path}")


@pipeline_app.command("run")
def pipeline_run(
    local: Annotated[bool, typer.Option("--local", help="run through kfp.local")] = False,
    pipeline_root: Annotated[Path, typer.Option(help="local artifact root")] = Path("runs/kfp"),
    data_version: Annotated[
        str | None,
        typer.Option(help="pin a data registry version (same as --set data.version=...)"),
    ] = None,
    containers: Annotated[
        bool,
        typer.Option(
            "--containers",
            help="run every step in the built image (make image) with podman, as a pod would; "
            "needs an MLflow server (make stack)",
        ),
    ] = False,
    resume: Annotated[
        str | None,
        typer.Option(
            help="continue a cut run: its pipeline run id (printed when it started); with "
            "train.checkpoint_root set, training resumes from the last saved epoch and the "
            "MLflow runs are continued, not duplicated",
        ),
    ] = None,
) -> None:
    """Run the whole pipeline on this machine (kfp.local subprocesses, or the image's
    containers); one line per step, full logs in runs/<run>/<step>.log. Reads all params."""
    if not local:
        raise ValueError(
            "only --local runs here; on a cluster use `cxrflow pipeline submit` "
            "(or `cxrflow pipeline schedule create`)"
        )
    from cxrflow.config import params_hash
    from cxrflow.steps import (
        PIPELINE_RUN_ENV,
        format_promotion,
        format_summary,
        new_pipeline_run_id,
    )
    from cxrflow.tracking import tracking_uri
    from pipelines.local import find_metrics, find_registered, run_local

    settings = current_settings()
    params = settings.params([f"data.version={data_version}"] if data_version else None)
    uri = tracking_uri()
    run_id = resume or new_pipeline_run_id()
    print(
        f"cxrflow pipeline: profile {params.profile}, params {params_hash(params)}, "
        f"models {', '.join(params.model_keys)}; MLflow {uri}"
    )
    print(_resume_hint(run_id, resume is not None, params.train.checkpoint_root))
    with _container_session(containers, uri) as session:
        # imported here: the components take their images when first imported (the session
        # may name the local ones)
        from pipelines.cxrflow_pipeline import build_pipeline

        result = run_local(
            build_pipeline(params, retries=False),
            {},
            pipeline_root,
            verbose=settings.verbose,
            env={"MLFLOW_TRACKING_URI": uri, PIPELINE_RUN_ENV: run_id},
            containers=session,
        )
    if not settings.verbose:  # kfp.local logs its workspace clean-up at exit
        logging.getLogger().setLevel(logging.WARNING)
    results = find_metrics(result.run_dir)
    registered = find_registered(result.run_dir)
    print()
    print(f"cxrflow pipeline finished (profile {params.profile}); run dir: {result.run_dir}")
    print(format_summary(results), end="")
    print(format_promotion(registered), end="")
    print(_ui_hint(uri, _experiment_id(uri, params.tracking.experiment_name)))
    print(_next_steps(result.run_dir, registered))


def _resume_hint(run_id: str, resumed: bool, checkpoint_root: str | None) -> str:
    """The pipeline run id, and how to continue this run should it be cut."""
    if resumed:
        where = f"checkpoints in {checkpoint_root}" if checkpoint_root else "no checkpoint root"
        return f"pipeline run id {run_id} (resumed; {where})"
    if not checkpoint_root:
        return (
            f"pipeline run id {run_id} (train.checkpoint_root is not set: a cut run would "
            "start its training again)"
        )
    return f"pipeline run id {run_id}; if it is cut: cxrflow pipeline run --local --resume {run_id}"


def _container_session(containers: bool, uri: str) -> Any:
    """podman's service for ``--containers`` (:mod:`pipelines.containers`), else nothing."""
    if not containers:
        return contextlib.nullcontext()
    import sys

    from pipelines.containers import container_session

    return container_session(uri, out=sys.stdout)


def _experiment_id(uri: str, name: str) -> str | None:
    from cxrflow.tracking import RunStore

    try:
        return RunStore(uri).experiment_id(name)
    except Exception:  # only a hint: never fail a finished run over it
        return None


RUNS_PAGE = "#/experiments/{id}/runs?workflowType=machine_learning"
"""The experiment's runs table. MLflow 3.17's UI opens an experiment on its GenAI traces
overview unless the URL asks for the machine-learning view (the experiment's kind tag alone
does not decide it)."""


def _ui_hint(uri: str, experiment_id: str | None = None) -> str:
    """Where to look at the run: a tracking server is its own UI; a local store needs one.
    With the experiment's id, the address of its runs table."""
    page = "" if experiment_id is None else RUNS_PAGE.format(id=experiment_id)
    if uri.startswith(("http://", "https://")):
        return f"MLflow UI: {uri.rstrip('/')}/{page}" if page else f"MLflow UI: {uri}"
    return (
        f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} "
        f"--host 127.0.0.1 --port 5000   (then open http://127.0.0.1:5000/{page})"
    )


def _next_steps(run_dir: Path, registered: dict[str, Any]) -> str:
    """What a newcomer does next, as commands to copy: predict with the model just registered
    (champion or challenger), compare the runs, write the report."""
    import shlex

    images = run_dir / "ingest" / "dataset" / "images"
    some = sorted(p for p in images.glob("*") if p.is_dir())[:1]
    target = shlex.quote(str(some[0])) if some else "<image files or folders>"
    uri = f"models:/{registered['model_name']}@{registered['alias']}"
    return (
        "next (cxrflow is .venv/bin/cxrflow):\n"
        f"  cxrflow predict --model-uri {uri} {target}\n"
        "  cxrflow compare   # models x metrics with intervals -> reports/compare/compare.html\n"
        "  cxrflow report    # this run's reproduction report -> reports/reproduction.html"
    )


PackageOption = Annotated[
    Path | None,
    typer.Option(help="a compiled package (default: compile the resolved params now)"),
]
HostOption = Annotated[
    str | None, typer.Option(envvar=HOST_ENV, callback=_from_command_line, help="KFP API endpoint")
]
NamespaceOption = Annotated[
    str | None,
    typer.Option(envvar=NAMESPACE_ENV, callback=_from_command_line, help="multi-user namespace"),
]
ServiceAccountOption = Annotated[
    str | None,
    typer.Option(
        envvar=SERVICE_ACCOUNT_ENV,
        callback=_from_command_line,
        help="ServiceAccount the run's pods use (default: cxrflow-pipeline-runner from "
        'infra/k8s/pipeline-runs; "" for KFP\'s own)',
    ),
]
KubeContextOption = Annotated[
    str | None,
    typer.Option(
        envvar=KUBE_CONTEXT_ENV,
        callback=_from_command_line,
        help="reach KFP through this kubeconfig context instead of --host",
    ),
]
ExperimentOption = Annotated[str | None, typer.Option(help="KFP experiment (default: cxrflow)")]
AsJsonOption = Annotated[bool, typer.Option("--json", help="JSON instead of a table")]
ScheduleRef = Annotated[str, typer.Argument(help="recurring run name or id")]


def _package(package: Path | None, action: str) -> tuple[Path, list[str]]:
    """The package to submit and the overrides still to apply to it.

    Without --package the resolved params (profile and --set included) are compiled now; with
    one, its own configuration is used and --set applies on top of it (a profile is a choice
    made at compile time, so --profile with --package is refused). A configuration whose pods
    could not get a model's weights is refused for ``action`` before it is compiled
    (``pipelines.submit`` checks a given package).
    """
    settings = current_settings()
    if package is not None:
        if settings.profile is not None:
            raise ValueError(
                "--profile applies when compiling; with --package use the package's "
                "configuration and --set KEY=VALUE"
            )
        return package, list(settings.overrides)
    from cxrflow.weights import require_reachable_weights
    from pipelines.compile import compile_pipeline

    params = settings.params()
    require_reachable_weights(params, action)
    path = compile_pipeline(params, Path("build") / "cxrflow-pipeline-submit.yaml")
    return path, []


@pipeline_app.command("submit")
def pipeline_submit(
    package: PackageOption = None,
    host: HostOption = None,
    namespace: NamespaceOption = None,
    kube_context: KubeContextOption = None,
    service_account: ServiceAccountOption = None,
    experiment: ExperimentOption = None,
    run_name: Annotated[
        str | None, typer.Option(help="display name (default: timestamped)")
    ] = None,
) -> None:
    """Start one run on a Kubeflow Pipelines cluster with the resolved configuration."""
    from pipelines.submit import submit_run

    path, overrides = _package(package, "submit")
    # unset options are left out, so the defaults live once, in pipelines.submit
    run_id = submit_run(
        host,
        path,
        overrides,
        run_name=run_name,
        namespace=namespace,
        kube_context=kube_context,
        service_account=service_account,
        **given(experiment=experiment),
    )
    print(f"run id: {run_id}")


@schedule_app.command("create")
def pipeline_schedule_create(
    package: PackageOption = None,
    host: HostOption = None,
    namespace: NamespaceOption = None,
    kube_context: KubeContextOption = None,
    service_account: ServiceAccountOption = None,
    experiment: ExperimentOption = None,
    cron: Annotated[
        str | None, typer.Option(help="6-field KFP cron, seconds first (default 02:00 daily)")
    ] = None,
    job_name: Annotated[
        str | None, typer.Option(help="recurring run name (default: cxrflow-nightly)")
    ] = None,
    max_concurrency: Annotated[int, typer.Option(help="runs at once")] = 1,
    catchup: Annotated[
        bool, typer.Option(help="back-fill the intervals missed while disabled or behind")
    ] = False,
    replace: Annotated[bool, typer.Option(help="replace a schedule of that name")] = False,
) -> None:
    """Create the recurring (nightly) run with the resolved configuration; no catch-up unless
    --catchup."""
    from pipelines.submit import schedule_nightly

    path, overrides = _package(package, "schedule create")
    job_id = schedule_nightly(
        host,
        path,
        max_concurrency=max_concurrency,
        params_overrides=overrides,
        catchup=catchup,
        namespace=namespace,
        kube_context=kube_context,
        service_account=service_account,
        replace=replace,
        **given(cron=cron, experiment=experiment, job_name=job_name),
    )
    print(f"recurring run id: {job_id}")


def _kfp_client(host: str | None, namespace: str | None, kube_context: str | None) -> Any:
    from pipelines.submit import make_client

    return make_client(host, namespace, kube_context)


def _when(value: Any) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M}"


@schedule_app.command("list")
def pipeline_schedule_list(
    host: HostOption = None,
    namespace: NamespaceOption = None,
    kube_context: KubeContextOption = None,
    experiment: ExperimentOption = None,
    as_json: AsJsonOption = False,
) -> None:
    """List the recurring runs of the experiment: status, cron, concurrency, data version."""
    from dataclasses import asdict

    from pipelines.submit import list_schedules

    client = _kfp_client(host, namespace, kube_context)
    jobs = list_schedules(client, namespace=namespace, **given(experiment=experiment))
    if as_json:
        print_json([asdict(j) for j in jobs])
        return
    if not jobs:
        print("no recurring runs")
        return
    print(f"{'name':<24} {'status':<8} {'cron':<16} {'max':>3} {'catchup':<7} {'data':<16} id")
    for j in jobs:
        print(
            f"{j.name:<24} {'enabled' if j.enabled else 'disabled':<8} {j.cron:<16} "
            f"{j.max_concurrency:>3} {'yes' if j.catchup else 'no':<7} {j.data.version:<16} "
            f"{j.recurring_run_id}"
        )


def _schedule_command(action: str, doc: str) -> None:
    """Register ``cxrflow pipeline schedule <action> REF`` (enable, disable or delete)."""

    def command(
        ref: ScheduleRef,
        host: HostOption = None,
        namespace: NamespaceOption = None,
        kube_context: KubeContextOption = None,
        experiment: ExperimentOption = None,
    ) -> None:
        from pipelines.submit import change_schedule

        client = _kfp_client(host, namespace, kube_context)
        job = change_schedule(
            client, action, ref, namespace=namespace, **given(experiment=experiment)
        )
        state = "deleted" if action == "delete" else ("enabled" if job.enabled else "disabled")
        print(f"recurring run {job.name} ({job.recurring_run_id}): {state}")

    command.__doc__ = doc
    schedule_app.command(action)(command)


for _action, _doc in (
    ("enable", "Enable (resume) a recurring run."),
    ("disable", "Disable (pause) a recurring run; its runs and settings stay."),
    ("delete", "Delete a recurring run (the runs it started stay)."),
):
    _schedule_command(_action, _doc)


@pipeline_app.command("runs")
def pipeline_runs(
    host: HostOption = None,
    namespace: NamespaceOption = None,
    kube_context: KubeContextOption = None,
    experiment: ExperimentOption = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 10,
    as_json: AsJsonOption = False,
) -> None:
    """List the recent runs of the experiment on the cluster: state and data version."""
    from dataclasses import asdict

    from pipelines.submit import list_runs

    client = _kfp_client(host, namespace, kube_context)
    runs = list_runs(client, limit=limit, namespace=namespace, **given(experiment=experiment))
    if as_json:
        print_json([asdict(r) for r in runs])
        return
    if not runs:
        print("no runs")
        return
    print(f"{'run':<32} {'state':<10} {'created (UTC)':<16} {'data':<16}")
    for r in runs:
        print(f"{r.name:<32} {r.state:<10} {_when(r.created_at):<16} {r.data.version:<16}")
