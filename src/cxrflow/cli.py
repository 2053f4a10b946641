"""``cxrflow``: the one command-line program: every step, data, params, pipeline and predict.

What DVC stages and people call. Built with Typer; heavy libraries (TensorFlow, MLflow, Great
Expectations, kfp) are imported only by the commands that need them, so ``cxrflow --help`` is
instant. The configuration is resolved once per invocation (``--params``, ``--profile``,
``--set``) and passed whole to the step. A failure a user can cause ends with one line on
stderr, ``cxrflow: error: ...``, and a non-zero exit; ``--debug`` shows the traceback. This is
the only module of the core that imports the adapters (``pipelines``), and only inside the
``pipeline`` commands.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

log = logging.getLogger("cxrflow")

EXIT_USER_ERROR = 2
EXIT_FAILED = 1

app = typer.Typer(
    name="cxrflow",
    help=(
        "cxrflow: COVID-19 chest X-ray transfer learning (Katsamenis et al. 2020) as a "
        "Kubeflow / MLflow / DVC workflow. Steps: ingest -> validate -> split -> model_0.. -> "
        "evaluate -> register. Every step takes the whole configuration resolved from "
        "params.yaml, --profile and --set."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(
    help="data tools: phantom generator, DVC data registry", no_args_is_help=True
)
pipeline_app = typer.Typer(
    help="the Kubeflow pipeline: compile, run locally, submit, schedule, list runs",
    no_args_is_help=True,
)
schedule_app = typer.Typer(
    help="recurring runs on the cluster: create, list, enable, disable, delete",
    no_args_is_help=True,
)
params_app = typer.Typer(help="the resolved configuration and its schema", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(pipeline_app, name="pipeline")
pipeline_app.add_typer(schedule_app, name="schedule")
app.add_typer(params_app, name="params")


@dataclass
class Settings:
    """The global options, and the configuration resolved from them (once)."""

    params_path: Path = Path("params.yaml")
    profile: str | None = None
    overrides: list[str] = field(default_factory=list)
    verbose: bool = False
    debug: bool = False
    _params: Any = None

    def params(self, extra: list[str] | None = None) -> Any:
        """The resolved :class:`cxrflow.config.Params` (``extra`` overrides appended)."""
        from cxrflow.config import load_params

        if extra:
            return load_params(self.params_path, self.profile, [*self.overrides, *extra])
        if self._params is None:
            self._params = load_params(self.params_path, self.profile, self.overrides)
        return self._params


_SETTINGS = Settings()


@app.callback()
def main_options(
    params: Annotated[
        Path, typer.Option("--params", help="params file (default params.yaml)")
    ] = Path("params.yaml"),
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile", help="params profile: paper, demo, smoke (default: the file's `profile`)"
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="override one param for this run (YAML value), e.g. --set train.epochs=20",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="debug logging; stream every step's output")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
) -> None:
    """Global options (before the command)."""
    from cxrflow.logs import setup_logging

    _SETTINGS.params_path = params
    _SETTINGS.profile = profile
    _SETTINGS.overrides = list(set_ or [])
    _SETTINGS.verbose = verbose
    _SETTINGS.debug = debug
    _SETTINGS._params = None
    setup_logging(verbose)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# ---------------------------------------------------------------------------------- steps


@app.command()
def ingest(
    out: Annotated[Path, typer.Option(help="dataset directory to write")],
    pipeline_run_id: Annotated[
        str | None, typer.Option(help="group the MLflow runs (default: a new id)")
    ] = None,
) -> None:
    """Build the manifest from the configured sources (or phantom data). Reads params: data,
    ingest."""
    from cxrflow.data.ingest import summarize_report
    from cxrflow.steps import run_ingest

    result = run_ingest(_SETTINGS.params(), out, pipeline_run_id)
    print(summarize_report(result["report"]))
    print(f"manifest hash: {result['provenance']['manifest_hash']}")


@app.command()
def validate(
    dataset: Annotated[Path, typer.Option(help="an ingest output directory")],
    out: Annotated[Path, typer.Option(help="validation report + Data Docs directory")],
) -> None:
    """Great Expectations gate over the manifest (fails on violation). Reads params: validate."""
    from cxrflow.steps import run_validate

    summary = run_validate(_SETTINGS.params(), dataset, out)
    print(f"validation passed: {summary.get('evaluated')} expectations")


@app.command()
def split(
    dataset: Annotated[Path, typer.Option(help="an ingest output directory")],
    out: Annotated[Path, typer.Option(help="splits directory to write")],
) -> None:
    """Undersample and split train/val/test by patient. Reads params: split, validate."""
    from cxrflow.steps import run_split

    result = run_split(_SETTINGS.params(), dataset, out)
    _print_json(result["report"]["counts"])
    for ds, warns in result["report"]["confounds"].items():
        for w in warns:
            print(f"WARNING {ds}: {w}", file=sys.stderr)


@app.command()
def train(
    model_key: Annotated[str, typer.Argument(help="a key of params `models` (model_0 ...)")],
    dataset: Annotated[Path, typer.Option(help="an ingest output directory")],
    splits: Annotated[Path, typer.Option(help="a split output directory")],
    out: Annotated[Path, typer.Option(help="model directory to write")],
    base_model: Annotated[
        Path | None, typer.Option(help="output directory of the model this one starts from")
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(help="directory of model outputs: the base model is <dir>/<init key>"),
    ] = None,
) -> None:
    """Train one model. Reads params: train, models.<model_key>."""
    from cxrflow.config import check_model_key
    from cxrflow.steps import run_train

    params = _SETTINGS.params()
    spec = check_model_key(params, model_key)
    if base_model is None and models_dir is not None and spec.base_model_key is not None:
        base_model = models_dir / spec.base_model_key
    info = run_train(
        params,
        model_key,
        dataset,
        splits,
        out,
        base_model,
        verbose=1 if sys.stderr.isatty() else 2,
    )
    _print_json({k: info[k] for k in ("model_key", "run_id", "model_uri", "train_seconds")})


@app.command()
def start(
    kind: Annotated[str, typer.Argument(help="scratch or imagenet")],
    out: Annotated[Path, typer.Option(help="directory for START.json")],
) -> None:
    """Describe a starting point of training (the seed, or the ImageNet weights with their
    sha256): what DVC's model stages depend on besides the data. Reads params: train.seed,
    models."""
    from cxrflow.steps import write_start_point

    _print_json(write_start_point(_SETTINGS.params(), kind, out))


@app.command()
def evaluate(
    dataset: Annotated[Path, typer.Option(help="an ingest output directory")],
    splits: Annotated[Path, typer.Option(help="a split output directory")],
    out: Annotated[Path, typer.Option(help="evaluation directory to write")],
    model: Annotated[
        list[str] | None,
        typer.Option(metavar="KEY=DIR", help="a model's output directory (repeat)"),
    ] = None,
    models_dir: Annotated[
        Path | None, typer.Option(help="directory holding <key>/ for every model in params")
    ] = None,
) -> None:
    """Test metrics, confusion matrices and latency of the models. Reads params: evaluate."""
    from cxrflow.steps import format_summary, run_evaluate

    params = _SETTINGS.params()
    dirs: dict[str, Path] = {}
    if models_dir is not None:
        dirs = {k: models_dir / k for k in params.model_keys}
    for item in model or []:
        key, _, path = item.partition("=")
        if key not in params.models or not path:
            raise ValueError(
                f"--model expects KEY=DIR with KEY in {list(params.model_keys)}, got {item!r}"
            )
        dirs[key] = Path(path)
    if not dirs:
        raise ValueError("give --models-dir or at least one --model KEY=DIR")
    print(format_summary(run_evaluate(params, dataset, splits, dirs, out)))


@app.command()
def audit(
    dataset: Annotated[Path, typer.Option(help="an ingest output directory")],
    splits: Annotated[Path, typer.Option(help="a split output directory")],
    out: Annotated[Path, typer.Option(help="audit directory to write")],
    models_dir: Annotated[
        Path, typer.Option(help="directory holding <key>/ for every candidate model")
    ],
) -> None:
    """The shortcut audit of every candidate: same-source controls, source probe, lung-field
    ablation, each with a 95 % CI. Reads params: audit, register.candidates, evaluate."""
    from cxrflow.steps import run_audit

    params = _SETTINGS.params()
    dirs = {k: models_dir / k for k in params.register.candidates if k in params.models}
    results = run_audit(params, dataset, splits, dirs, out)
    for key, r in results.items():
        verdict = "passed" if r["passed"] else "FAILED"
        print(f"{key}: {verdict}" + "".join(f"\n  - {x}" for x in r.get("reasons", [])))


@app.command()
def register(
    evaluation: Annotated[Path, typer.Option(help="an evaluate output directory")],
    out: Annotated[Path, typer.Option(help="directory for registered.json")],
    audit_dir: Annotated[
        Path | None, typer.Option("--audit", help="an audit output directory")
    ] = None,
) -> None:
    """Register the best candidate: champion if it passed the audit and beats the current
    champion by the margin, else challenger. Reads params: register, audit."""
    from cxrflow.steps import run_register

    _print_json(run_register(_SETTINGS.params(), evaluation, out, audit_dir))


@app.command()
def predict(
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
    Reads params: register (model name and alias), ingest.max_pixels (decompression-bomb
    limit)."""
    from cxrflow.predict import (
        format_errors,
        format_json,
        format_table,
        load_predictor,
        predict_paths,
    )

    params = _SETTINGS.params()
    champion = f"models:/{params.register.model_name}@{params.register.alias}"
    model, classes, size = load_predictor(model_uri, onnx, champion)
    preds = predict_paths(
        model, [str(p) for p in paths], classes, size, max_pixels=params.ingest.max_pixels
    )
    ok = [p for p in preds if not p.error]
    if ok:
        print(format_json(ok) if as_json else format_table(ok, classes))
    for line in format_errors(preds):
        print(f"cxrflow: error: {line}", file=sys.stderr)
    if not ok:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def export(
    dataset: Annotated[Path, typer.Option(help="an ingest output directory")],
    splits: Annotated[Path, typer.Option(help="a split output directory")],
    out: Annotated[
        Path, typer.Option(help="directory for model.onnx, model.int8.onnx and export.json")
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="a `cxrflow train` output directory or an MLflow model URI "
            "(default: the registered champion)"
        ),
    ] = None,
    calibration_images: Annotated[
        int | None,
        typer.Option(help="training-split images the int8 ranges are calibrated on (default 200)"),
    ] = None,
    check_images: Annotated[
        int | None,
        typer.Option(help="validation images int8 is compared with fp32 on (default 300; 0: none)"),
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(help="fail if int8 loses more accuracy points than this (default 1.0)"),
    ] = None,
    log_to_run: Annotated[
        bool, typer.Option("--log-to-run", help="log the files to the model's MLflow run (onnx/)")
    ] = False,
) -> None:
    """Export a trained model to ONNX (fp32) and static int8 (ONNX Runtime, calibrated on its
    training split, checked against fp32 on its validation split) for `cxrflow predict --onnx`.
    Reads params: register (default model), models, train.seed, tracking (--log-to-run)."""
    from cxrflow.export import (
        DEFAULT_CALIBRATION_IMAGES,
        DEFAULT_CHECK_IMAGES,
        MAX_DROP_POINTS,
        run_export,
    )

    params = _SETTINGS.params()
    ref = model or f"models:/{params.register.model_name}@{params.register.alias}"
    info = run_export(
        params,
        ref,
        dataset,
        splits,
        out,
        DEFAULT_CALIBRATION_IMAGES if calibration_images is None else calibration_images,
        log_to_run=log_to_run,
        check_images=DEFAULT_CHECK_IMAGES if check_images is None else check_images,
        max_drop_points=MAX_DROP_POINTS if max_drop is None else max_drop,
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
        Path | None, typer.Option(help="a kfp.local run directory (runs/kfp/<run>)")
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
    from cxrflow.steps import log_report

    if run_dir is not None:
        outputs = RunOutputs.from_kfp_run(run_dir)
    elif dataset and splits and evaluation:
        outputs = RunOutputs(dataset, splits, evaluation, audit_dir, registered)
    else:
        raise ValueError("give --run-dir, or --dataset, --splits and --evaluation")
    params = _SETTINGS.params()
    md, html = build_report(
        outputs,
        params,
        out,
        elapsed=elapsed,
        notes=tuple(note or ()),
        patient_images=patient_images,
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
    name = experiment or _SETTINGS.params().tracking.experiment_name
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


# ----------------------------------------------------------------------------------- data


@data_app.command("synth")
def data_synth(out: Annotated[Path, typer.Option(help="output directory")]) -> None:
    """Write PHANTOM (synthetic) CXRs in the real Kermany and Cohen layouts. Reads params:
    data.synth."""
    from cxrflow.data.synthetic import generate_phantom

    summary = generate_phantom(out, _SETTINGS.params().data.synth)
    print(f"PHANTOM data written: kermany={summary.kermany_dir} cohen={summary.cohen_dir}")
    _print_json(summary.counts)


RegistryOption = Annotated[
    str | None,
    typer.Option(help="data registry repo (default: params data.registry, else .)"),
]


def _registry(registry: str | None) -> tuple[Any, str, list[str]]:
    params = _SETTINGS.params()
    repo = registry or params.data.registry or "."
    if not params.data.source_paths:
        raise ValueError(
            "params data.sources names no tracked data paths; set e.g. "
            "data.sources.kermany: [raw/chest_xray] (paths inside the data registry)"
        )
    return params, repo, params.data.source_paths


@data_app.command("versions")
def data_versions(
    registry: RegistryOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
) -> None:
    """List the data registry's versions with class counts from DVC listings (no image
    download). Reads params: data, ingest."""
    from cxrflow.config import ALL_LABELS
    from cxrflow.data.versions import list_versions

    params, repo, _ = _registry(registry)
    versions = list_versions(repo, params.data.sources, params.ingest)
    if as_json:
        _print_json([v.__dict__ for v in versions])
        return
    header = f"{'rev':<16} {'commit':<12} {'date':<25} " + " ".join(f"{x:>9}" for x in ALL_LABELS)
    print(header)
    for v in versions:
        counts = v.label_totals()
        print(
            f"{v.rev:<16} {v.commit[:12]:<12} {v.date:<25} "
            + " ".join(f"{counts.get(x, 0):>9}" for x in ALL_LABELS)
        )


@data_app.command("rollback")
def data_rollback(
    rev: Annotated[str, typer.Argument(help="git tag or commit of the data registry")],
    registry: RegistryOption = None,
) -> None:
    """Restore the working copy of the tracked data to REV (`dvc checkout`, pulling from the
    remote as needed). Reads params: data."""
    from cxrflow.data.versions import rollback

    _, repo, paths = _registry(registry)
    v = rollback(repo, rev, paths)
    print(
        f"working copy of {paths} restored to {rev} ({v.commit[:12]}); "
        "commit the .dvc files to make it the new current version"
    )


@data_app.command("snapshot")
def data_snapshot(
    message: Annotated[str, typer.Option("--message", "-m", help="commit message")],
    tag: Annotated[str | None, typer.Option(help="tag the new version")] = None,
    no_push: Annotated[bool, typer.Option("--no-push", help="do not dvc push")] = False,
    registry: RegistryOption = None,
) -> None:
    """dvc add + git commit (+ tag) + dvc push of the tracked data: a new data version. Reads
    params: data."""
    from cxrflow.data.versions import snapshot

    _, repo, paths = _registry(registry)
    v = snapshot(repo, paths, message, tag=tag, push=not no_push)
    print(f"data version {v.rev} ({v.commit[:12]}): {v.dvc_hashes}")


# --------------------------------------------------------------------------------- params


@params_app.command("show")
def params_show(
    fmt: Annotated[str, typer.Option("--format", help="json or yaml")] = "json",
) -> None:
    """Print the resolved configuration (params.yaml + profile + --set)."""
    from cxrflow.config import params_hash, params_to_dict, params_to_yaml

    params = _SETTINGS.params()
    if fmt == "yaml":
        print(params_to_yaml(params), end="")
    elif fmt == "json":
        _print_json({**params_to_dict(params), "_hash": params_hash(params)})
    else:
        raise ValueError(f"--format must be json or yaml, got {fmt!r}")


@params_app.command("schema")
def params_schema(
    output: Annotated[
        Path | None, typer.Option(help="write the JSON Schema here (default: stdout)")
    ] = None,
) -> None:
    """The JSON Schema of params.yaml, for editors (e.g. yaml-language-server)."""
    from cxrflow.config import params_json_schema

    text = json.dumps(params_json_schema(), indent=2, sort_keys=True) + "\n"
    if output is None:
        print(text, end="")
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"JSON Schema of params.yaml -> {output}")


@params_app.command("resolve")
def params_resolve(out: Annotated[Path, typer.Option(help="resolved params file")]) -> None:
    """Write the resolved configuration as a params file (what DVC stages read)."""
    from cxrflow.config import params_hash, params_to_yaml

    params = _SETTINGS.params()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(params_to_yaml(params))
    print(f"params (profile {params.profile}, hash {params_hash(params)}) -> {out}")


# ------------------------------------------------------------------------------- pipeline


@pipeline_app.command("compile")
def pipeline_compile(output: Annotated[Path, typer.Option(help="pipeline YAML to write")]) -> None:
    """Write the KFP v2 pipeline YAML; its `params` default is the resolved configuration."""
    from cxrflow.config import params_hash
    from pipelines.compile import compile_pipeline

    params = _SETTINGS.params()
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
) -> None:
    """Run the whole pipeline on this machine (kfp.local subprocesses); one line per step,
    full logs in runs/<run>/<step>.log. Reads all params."""
    if not local:
        raise ValueError(
            "only --local runs here; on a cluster use `cxrflow pipeline submit` "
            "(or `cxrflow pipeline schedule create`)"
        )
    from cxrflow.config import params_hash
    from cxrflow.steps import format_promotion, format_summary
    from cxrflow.tracking import tracking_uri
    from pipelines.cxrflow_pipeline import build_pipeline
    from pipelines.local import find_metrics, find_registered, run_local

    params = _SETTINGS.params([f"data.version={data_version}"] if data_version else None)
    uri = tracking_uri()
    print(
        f"cxrflow pipeline: profile {params.profile}, params {params_hash(params)}, "
        f"models {', '.join(params.model_keys)}; MLflow {uri}"
    )
    result = run_local(
        build_pipeline(params, retries=False),
        {},
        pipeline_root,
        verbose=_SETTINGS.verbose,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    if not _SETTINGS.verbose:  # kfp.local logs its workspace clean-up at exit
        logging.getLogger().setLevel(logging.WARNING)
    results = find_metrics(result.run_dir)
    registered = find_registered(result.run_dir)
    print()
    print(f"cxrflow pipeline finished (profile {params.profile}); run dir: {result.run_dir}")
    print(format_summary(results), end="")
    print(format_promotion(registered), end="")
    print(_ui_hint(uri))


def _ui_hint(uri: str) -> str:
    """Where to look at the run: a tracking server is its own UI; a local store needs one."""
    if uri.startswith(("http://", "https://")):
        return f"MLflow UI: {uri}"
    return (
        f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} "
        f"--host 127.0.0.1 --port 5000   (then open http://127.0.0.1:5000)"
    )


PackageOption = Annotated[
    Path | None,
    typer.Option(help="a compiled package (default: compile the resolved params now)"),
]
HostOption = Annotated[str | None, typer.Option(help="KFP API endpoint (default: $KFP_HOST)")]
NamespaceOption = Annotated[
    str | None, typer.Option(help="multi-user namespace (default: $KFP_NAMESPACE)")
]
ServiceAccountOption = Annotated[
    str | None,
    typer.Option(
        help="ServiceAccount the run's pods use (default: $KFP_SERVICE_ACCOUNT, else "
        'cxrflow-pipeline-runner from infra/k8s/pipeline-runs; "" for KFP\'s own)'
    ),
]
KubeContextOption = Annotated[
    str | None,
    typer.Option(
        help="reach KFP through this kubeconfig context instead of --host "
        "(default: $KFP_KUBE_CONTEXT)"
    ),
]
ExperimentOption = Annotated[str | None, typer.Option(help="KFP experiment (default: cxrflow)")]
AsJsonOption = Annotated[bool, typer.Option("--json", help="JSON instead of a table")]
ScheduleRef = Annotated[str, typer.Argument(help="recurring run name or id")]


def _package(package: Path | None) -> tuple[Path, list[str]]:
    """The package to submit and the overrides still to apply to it.

    Without --package the resolved params (profile and --set included) are compiled now; with
    one, its own configuration is used and --set applies on top of it (a profile is a choice
    made at compile time, so --profile with --package is refused).
    """
    if package is not None:
        if _SETTINGS.profile is not None:
            raise ValueError(
                "--profile applies when compiling; with --package use the package's "
                "configuration and --set KEY=VALUE"
            )
        return package, list(_SETTINGS.overrides)
    from pipelines.compile import compile_pipeline

    path = compile_pipeline(_SETTINGS.params(), Path("build") / "cxrflow-pipeline-submit.yaml")
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

    path, overrides = _package(package)
    # unset options are left out, so the defaults live once, in pipelines.submit
    run_id = submit_run(
        host,
        path,
        overrides,
        run_name=run_name,
        namespace=namespace,
        kube_context=kube_context,
        service_account=service_account,
        **_given(experiment=experiment),
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

    path, overrides = _package(package)
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
        **_given(cron=cron, experiment=experiment, job_name=job_name),
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
    jobs = list_schedules(client, namespace=namespace, **_given(experiment=experiment))
    if as_json:
        _print_json([asdict(j) for j in jobs])
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
            client, action, ref, namespace=namespace, **_given(experiment=experiment)
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
    runs = list_runs(client, limit=limit, namespace=namespace, **_given(experiment=experiment))
    if as_json:
        _print_json([asdict(r) for r in runs])
        return
    if not runs:
        print("no runs")
        return
    print(f"{'run':<32} {'state':<10} {'created (UTC)':<16} {'data':<16}")
    for r in runs:
        print(f"{r.name:<32} {r.state:<10} {_when(r.created_at):<16} {r.data.version:<16}")


def _given(**options: Any) -> dict[str, Any]:
    """The options the user set (None = not given, take the library's default)."""
    return {k: v for k, v in options.items() if v is not None}


# ------------------------------------------------------------------------------- errors


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types a user can cause (bad params, paths, data, a failed step...)."""
    from cxrflow.config import ParamsError

    known: list[type[BaseException]] = [ParamsError, FileNotFoundError, ValueError, LookupError]
    for module, name in (
        ("cxrflow.data.validate", "DataValidationError"),
        ("cxrflow.data.versions", "DataRegistryError"),
        ("cxrflow.tracking", "ModelNotFoundError"),
        ("pipelines.progress", "LocalStepError"),
        ("pipelines.submit", "KfpApiError"),
    ):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, name):
            known.append(getattr(mod, name))
    return tuple(known)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command; a failure ends with one ``cxrflow: error:`` line."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="cxrflow", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except (KeyboardInterrupt, typer.Abort):
        print("cxrflow: interrupted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # usage errors: click's own message and usage line
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        return int(getattr(exc, "exit_code", EXIT_USER_ERROR))
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, _user_errors()):
            print(f"cxrflow: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USER_ERROR
        print(
            f"cxrflow: error: {type(exc).__name__}: {_one_line(exc)} "
            "(unexpected; rerun with --debug for the traceback and please report it)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
