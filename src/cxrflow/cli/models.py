"""Commands on trained models: ``cxrflow predict``, ``export``, ``report`` and ``compare``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxrflow.cli.context import current_settings
from cxrflow.cli.errors import EXIT_FAILED

if TYPE_CHECKING:
    from cxrflow.config import Params

app = typer.Typer()

DEFAULT_PARAMS = Path("params.yaml")


def _same_command(ctx: typer.Context, option: str, value: str) -> str:
    """The running command as typed (its given options), with ``option`` set to ``value``."""
    import shlex

    settings = current_settings()
    words = ["cxrflow"]
    if settings.params_path != DEFAULT_PARAMS:
        words += ["--params", str(settings.params_path)]
    if settings.profile:
        words += ["--profile", settings.profile]
    for item in settings.overrides:
        words += ["--set", item]
    words.append(ctx.info_name or "")
    args: list[str] = []
    for param in ctx.command.params:
        got = ctx.params.get(param.name or "")
        if param.param_type_name == "argument":
            args += [str(v) for v in got] if isinstance(got, list | tuple) else [str(got)]
            continue
        flag = param.opts[0]
        if flag == option:
            words += [flag, value]
        elif got is None or got is False or got == param.default:
            continue
        elif got is True:
            words.append(flag)
        else:
            words += [flag, str(got)]
    return shlex.join([*words, *args])


def _champion_uri(params: Params, ctx: typer.Context, option: str) -> str:
    """The champion's model URI, once the registry is known to hold it.

    Raises:
        ModelNotFoundError: There is no champion; the message says why (the reason recorded
            on the challenger) and gives the same command with the challenger's URI.
    """
    from cxrflow.predict import explain_missing_champion
    from cxrflow.tracking import ModelNotFoundError

    rp = params.register
    why = explain_missing_champion(
        rp.model_name, rp.alias, rp.challenger_alias, lambda uri: _same_command(ctx, option, uri)
    )
    if why is not None:
        raise ModelNotFoundError(why)
    return f"models:/{rp.model_name}@{rp.alias}"


@app.command()
def predict(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="image files or directories")],
    model_uri: Annotated[
        str | None, typer.Option(help="e.g. runs:/<id>/model (default: the registered champion)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
    onnx: Annotated[
        Path | None,
        typer.Option(
            help="serve an exported model with ONNX Runtime instead (no TensorFlow): a .onnx "
            "file, or a `cxrflow export` directory for its int8 model"
        ),
    ] = None,
) -> None:
    """Classify images with the registered champion (or --model-uri, or an --onnx export).
    Exits with status 1 when any file failed (one `cxrflow: error:` line each; with --json
    the failures are in the list too, with their error). Reads params: register (model name and
    alias), ingest.max_pixels (decompression-bomb limit); with --model-uri or --onnx and no
    ./params.yaml, the defaults."""
    from cxrflow.predict import (
        audit_warning,
        format_errors,
        format_json,
        format_table,
        load_predictor,
        predict_paths,
    )

    settings = current_settings()
    given = model_uri is not None or onnx is not None
    if given and settings.params_path == DEFAULT_PARAMS and not DEFAULT_PARAMS.is_file():
        # a model named outright needs no project: the ingest pixel limit's default
        champion, max_pixels = "", None
    else:
        params = settings.params()
        champion = "" if given else _champion_uri(params, ctx, "--model-uri")
        max_pixels = params.ingest.max_pixels
    model, classes, size = load_predictor(model_uri, onnx, champion)
    warning = audit_warning(model_uri) if model_uri else None
    if warning:
        print(warning, file=sys.stderr)
    preds = predict_paths(model, [str(p) for p in paths], classes, size, max_pixels=max_pixels)
    ok = [p for p in preds if not p.error]
    if as_json:
        print(format_json(preds))
    elif ok:
        print(format_table(ok, classes))
    for line in format_errors(preds):
        print(line, file=sys.stderr)
    if len(ok) < len(preds):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def export(
    ctx: typer.Context,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            help="a kfp.local run directory whose data to use (default: the newest under "
            "runs/kfp, unless --dataset and --splits are given)"
        ),
    ] = None,
    dataset: Annotated[Path | None, typer.Option(help="an ingest output directory")] = None,
    splits: Annotated[Path | None, typer.Option(help="a split output directory")] = None,
    out: Annotated[
        Path, typer.Option(help="directory for model.onnx, model.int8.onnx and export.json")
    ] = Path("reports/export"),
    model: Annotated[
        str | None,
        typer.Option(
            help="a `cxrflow train` output directory or an MLflow model URI "
            "(default: the registered champion)"
        ),
    ] = None,
    calibration_images: Annotated[
        int | None,
        typer.Option(
            help="training-split images the int8 ranges are calibrated on (export.calibration_images)"
        ),
    ] = None,
    check_images: Annotated[
        int | None,
        typer.Option(
            help="validation images int8 is compared with fp32 on (export.check_images; 0: none)"
        ),
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(
            help="fail if int8 loses more accuracy points than this (export.max_drop_points)"
        ),
    ] = None,
    log_to_run: Annotated[
        bool, typer.Option("--log-to-run", help="log the files to the model's MLflow run (onnx/)")
    ] = False,
    registered: Annotated[
        Path | None,
        typer.Option(
            help="a `register` output directory: export the model registered there and log the "
            "files to its run, as the pipeline's export step does"
        ),
    ] = None,
    pipeline_run_id: Annotated[
        str | None, typer.Option(help="with --registered: the pipeline run (default: the data's)")
    ] = None,
) -> None:
    """Export a trained model to ONNX (fp32) and static int8 (ONNX Runtime, calibrated on its
    training split, checked against fp32 on its validation split) for `cxrflow predict --onnx`:
    the pipeline's export step with --registered, else any model (--model, default the
    champion). Reads params: export, register (default model), models, train.seed, tracking."""
    from cxrflow.export import run_export
    from cxrflow.report import data_of_run

    dataset, splits, newest = data_of_run(run_dir, dataset, splits)
    if newest is not None:
        print(f"using the data of the newest local run: {newest}", file=sys.stderr)
    flags = {
        "calibration_images": calibration_images,
        "check_images": check_images,
        "max_drop_points": max_drop,
    }
    overrides = [f"export.{k}={v}" for k, v in flags.items() if v is not None]
    params = current_settings().params(overrides or None)
    if registered is not None:
        if model is not None:
            raise ValueError("give --model or --registered, not both")
        from cxrflow.steps import run_export as run_export_step

        info = run_export_step(params, dataset, splits, registered, out, pipeline_run_id)
        if info.get("skipped"):
            print("export.enabled is false: nothing exported")
            return
    else:
        ep = params.export
        ref = model or _champion_uri(params, ctx, "--model")
        info = run_export(
            params,
            ref,
            dataset,
            splits,
            out,
            ep.calibration_images,
            log_to_run=log_to_run,
            check_images=ep.check_images,
            max_drop_points=ep.max_drop_points,
        )
    files = info["files"]
    print(
        f"exported {info['model_key']} -> {out}: {files['fp32']['file']} "
        f"({files['fp32']['bytes'] / 1e6:.1f} MB), {files['int8']['file']} "
        f"({files['int8']['bytes'] / 1e6:.1f} MB), calibrated on "
        f"{info['calibration']['n_images']} {info['calibration']['split']} images"
        + (f"; logged to MLflow run {info['logged_to_run']}" if info["logged_to_run"] else "")
    )
    if "check" in info:
        c = info["check"]
        print(
            f"on {c['n']} validation images: accuracy fp32 {c['fp32']['accuracy']:.4f}, "
            f"int8 {c['int8']['accuracy']:.4f} (macro-F1 {c['fp32']['f1_macro']:.4f} -> "
            f"{c['int8']['f1_macro']:.4f}); same class for {100 * c['agreement']:.1f} %"
        )


@app.command()
def report(
    run_dir: Annotated[
        Path | None,
        typer.Option(help="a kfp.local run directory (default: the newest under runs/kfp)"),
    ] = None,
    dataset: Annotated[Path | None, typer.Option(help="or: an ingest output")] = None,
    splits: Annotated[Path | None, typer.Option(help="a split output")] = None,
    evaluation: Annotated[Path | None, typer.Option(help="an evaluate output")] = None,
    audit_dir: Annotated[Path | None, typer.Option("--audit", help="an audit output")] = None,
    registered: Annotated[Path | None, typer.Option(help="a register output")] = None,
    out: Annotated[Path, typer.Option(help="where reproduction.md/.html go")] = Path("reports"),
    elapsed: Annotated[str, typer.Option(help="the run's wall time, for the report")] = "",
    note: Annotated[
        list[str] | None, typer.Option(help="a sentence about how the run was made (repeat)")
    ] = None,
    patient_images: Annotated[
        bool,
        typer.Option(help="include figures showing patients' X-rays (Grad-CAM, the mask)"),
    ] = True,
) -> None:
    """Write reports/reproduction.md and a self-contained reproduction.html: the paper's
    numbers beside ours with CIs and McNemar p-values, the data, the audit, Grad-CAM, and what
    differs from the paper; logged to the run's MLflow parent run. Reads all params."""
    from cxrflow.report import RunOutputs, build_report
    from cxrflow.steps import log_report, run_commit
    from cxrflow.tracking import git_commit

    if run_dir is not None:
        outputs = RunOutputs.from_kfp_run(run_dir)
    elif dataset and splits and evaluation:
        outputs = RunOutputs(dataset, splits, evaluation, audit_dir, registered)
    elif dataset or splits or evaluation:
        raise ValueError("give --dataset, --splits and --evaluation together (or --run-dir)")
    else:
        run_dir, outputs = RunOutputs.latest()
        print(f"reporting the newest local run: {run_dir}", file=sys.stderr)
    params = current_settings().params()
    md, html = build_report(
        outputs,
        params,
        out,
        elapsed=elapsed,
        notes=tuple(note or ()),
        patient_images=patient_images,
        commit=run_commit(params, outputs.dataset),
        rendered_at=git_commit(),
    )
    logged = log_report(params, outputs.dataset, [md, html])
    print(f"report -> {md} and {html}" + (f" (MLflow run {logged})" if logged else ""))


@app.command()
def compare(
    experiment: Annotated[
        str | None,
        typer.Option(help="MLflow experiment (default: params tracking.experiment_name)"),
    ] = None,
    runs: Annotated[
        list[str] | None,
        typer.Option(
            "--runs",
            metavar="ID",
            help="a pipeline run id or an MLflow run id (repeat, or comma-separated); a "
            "pipeline's parent run stands for its model runs",
        ),
    ] = None,
    data_versions: Annotated[
        tuple[str, str] | None,
        typer.Option(
            metavar="V1 V2",
            help="compare the latest run of each model on V2 against V1 (a tag, tag@commit or "
            "commit prefix)",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="where compare.md, compare_files/ and compare.html go")
    ] = Path("reports/compare"),
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else mlruns.db)"),
    ] = None,
    ui_url: Annotated[
        str | None,
        typer.Option(help="MLflow UI address for the row links (default: an http(s) tracking URI)"),
    ] = None,
) -> None:
    """Models x metrics with CIs across an MLflow experiment, pipeline runs or two data
    versions: what changed, by how much, and whether beyond the uncertainty. Writes compare.md
    and a self-contained compare.html with plots; each row links to its MLflow run. Reads
    params: tracking.experiment_name (without --experiment)."""
    from tqdm import tqdm

    from cxrflow.compare import (
        build_comparison,
        format_terminal,
        row_from_record,
        select_runs,
        write_comparison,
    )
    from cxrflow.tracking import RunStore

    store = RunStore(tracking_uri)
    refs = [ref for item in runs or [] for ref in item.split(",") if ref.strip()]
    name = experiment or current_settings().params().tracking.experiment_name
    with tqdm(desc="MLflow runs", unit="run", disable=None, leave=False) as bar:
        sel = select_runs(
            store,
            experiment=name,
            run_refs=refs,
            data_versions=data_versions or (),
            on_page=bar.update,
        )
    rows = [row_from_record(r, store.uri, ui_url) for r in sel.records]
    comp = build_comparison(
        rows, description=sel.description, source=store.uri, version_pair=sel.versions,
        notes=sel.notes,
    )  # fmt: skip
    md, html = write_comparison(comp, out)
    print(format_terminal(comp), end="")
    print(f"compare -> {md} and {html}")
