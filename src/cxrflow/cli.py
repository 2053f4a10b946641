"""``cxrflow``: one subcommand per pipeline step, plus data, pipeline and predict tools.

What DVC stages and people call. Heavy libraries (TensorFlow, MLflow, Great Expectations, kfp)
are imported only by the subcommands that need them, so ``cxrflow --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from cxrflow.config import ALL_LABELS, MODEL_KEYS, PROFILES

log = logging.getLogger("cxrflow")

READS = {
    "ingest": "data, ingest",
    "validate": "validate",
    "split": "split, validate",
    "train": "train, models.<model_key>",
    "evaluate": "evaluate",
    "register": "register",
    "synth": "data.synth",
}


def _params(args: argparse.Namespace) -> Any:
    from cxrflow.config import load_params

    return load_params(args.params, args.profile)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def cmd_synth(args: argparse.Namespace) -> int:
    from cxrflow.data.synthetic import generate_phantom

    summary = generate_phantom(Path(args.out), _params(args).data.synth)
    print(f"PHANTOM data written: kermany={summary.kermany_dir} cohen={summary.cohen_dir}")
    _print_json(summary.counts)
    return 0


def _registry(args: argparse.Namespace) -> tuple[Any, str, list[str]]:
    params = _params(args)
    data = params.data
    repo = args.registry or data.registry or "."
    paths = data.source_paths
    if not paths:
        raise SystemExit("params data.kermany_dir / data.cohen_dirs name no tracked data paths")
    return params, repo, paths


def cmd_data_versions(args: argparse.Namespace) -> int:
    from cxrflow.data.versions import list_versions

    params, repo, _ = _registry(args)
    versions = list_versions(
        repo, params.data.kermany_dir, list(params.data.cohen_dirs), params.ingest.cohen
    )
    if args.json:
        _print_json([v.__dict__ for v in versions])
        return 0
    labels = ALL_LABELS
    print(f"{'rev':<16} {'commit':<12} {'date':<25} " + " ".join(f"{x:>9}" for x in labels))
    for v in versions:
        counts = v.label_totals()
        print(
            f"{v.rev:<16} {v.commit[:12]:<12} {v.date:<25} "
            + " ".join(f"{counts[x]:>9}" for x in labels)
        )
    return 0


def cmd_data_rollback(args: argparse.Namespace) -> int:
    from cxrflow.data.versions import rollback

    _, repo, paths = _registry(args)
    v = rollback(repo, args.rev, paths)
    print(
        f"working copy of {paths} restored to {args.rev} ({v.commit[:12]}); "
        "commit the .dvc files to make it the new current version"
    )
    return 0


def cmd_data_snapshot(args: argparse.Namespace) -> int:
    from cxrflow.data.versions import snapshot

    _, repo, paths = _registry(args)
    v = snapshot(repo, paths, args.message, tag=args.tag, push=not args.no_push)
    print(f"data version {v.rev} ({v.commit[:12]}): {v.dvc_hashes}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from cxrflow.steps import run_ingest

    out = run_ingest(_params(args), args.out, args.pipeline_run_id, args.data_version or "")
    from cxrflow.data.ingest import summarize_report

    print(summarize_report(out["report"]))
    print(f"manifest hash: {out['provenance']['manifest_hash']}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from cxrflow.steps import run_validate

    summary = run_validate(_params(args), args.dataset, args.out)
    print(f"validation passed: {summary.get('evaluated')} expectations")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from cxrflow.steps import run_split

    out = run_split(_params(args), args.dataset, args.out)
    _print_json(out["report"]["counts"])
    for ds, warns in out["report"]["confounds"].items():
        for w in warns:
            print(f"WARNING {ds}: {w}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cxrflow.steps import run_train

    info = run_train(
        _params(args),
        args.model_key,
        args.dataset,
        args.splits,
        args.out,
        args.base_model,
        verbose=1 if sys.stderr.isatty() else 2,
    )
    _print_json({k: info[k] for k in ("model_key", "run_id", "model_uri", "train_seconds")})
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxrflow.steps import format_summary, run_evaluate

    dirs = {}
    for item in args.model:
        key, _, path = item.partition("=")
        if key not in MODEL_KEYS or not path:
            raise SystemExit(f"--model expects KEY=DIR with KEY in {MODEL_KEYS}, got {item!r}")
        dirs[key] = path
    results = run_evaluate(_params(args), args.dataset, args.splits, dirs, args.out)
    print(format_summary(results))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from cxrflow.steps import run_register

    _print_json(run_register(_params(args), args.evaluation, args.out))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cxrflow import tracking
    from cxrflow.predict import format_json, format_table, predict_paths

    uri = args.model_uri
    if uri is None:
        rp = _params(args).register
        uri = f"models:/{rp.model_name}@{rp.alias}"
    model, meta = tracking.load_model(uri)
    classes = meta.get("classes")
    size = meta.get("image_size")
    if not classes or not size:
        raise SystemExit(f"{uri}: model has no cxrflow metadata (classes, image_size)")
    preds = predict_paths(model, args.paths, classes, int(size))
    print(format_json(preds) if args.json else format_table(preds, classes))
    return 1 if all(p.error for p in preds) else 0


def cmd_pipeline_compile(args: argparse.Namespace) -> int:
    _add_project_root()
    from pipelines.compile import compile_pipeline

    out = compile_pipeline(_params(args), args.output)
    print(f"compiled pipeline -> {out}")
    return 0


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    if not args.local:
        raise SystemExit(
            "only --local is supported here; on a cluster, upload the compiled YAML "
            "(`cxrflow pipeline compile`) or use pipelines/submit.py"
        )
    _add_project_root()
    from cxrflow.steps import format_summary
    from cxrflow.tracking import tracking_uri
    from pipelines.local import find_metrics, run_local

    params = _params(args)
    out = run_local(params, args.pipeline_root, args.data_version or "")
    results = find_metrics(out["run_dir"])
    print()
    print(f"cxrflow pipeline finished (profile {params.profile}); run dir: {out['run_dir']}")
    print(format_summary(results))
    print(
        f"champion: {out['champion']} -> models:/{params.register.model_name}"
        f"@{params.register.alias}"
    )
    uri = tracking_uri()
    print(
        f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} "
        f"--host 127.0.0.1 --port 5000   (then open http://127.0.0.1:5000)"
    )
    return 0


def cmd_params_show(args: argparse.Namespace) -> int:
    from cxrflow.config import params_to_dict

    _print_json(params_to_dict(_params(args)))
    return 0


def _add_project_root() -> None:
    """Make the project's ``pipelines/`` and ``components/`` importable."""
    here = Path.cwd()
    for cand in (here, *here.parents, Path(__file__).resolve().parents[2]):
        if (cand / "pipelines" / "cxrflow_pipeline.py").is_file():
            if str(cand) not in sys.path:
                sys.path.insert(0, str(cand))
            return
    raise SystemExit("cannot find the project's pipelines/ folder (run from the project root)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(
        prog="cxrflow",
        description=(
            "cxrflow: COVID-19 chest X-ray transfer learning (Katsamenis et al. 2020) as a "
            "Kubeflow / MLflow / DVC workflow. Steps: ingest -> validate -> split -> "
            "model_0..model_3 -> evaluate -> register."
        ),
    )
    p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    p.add_argument(
        "--profile",
        default=os.environ.get("CXRFLOW_PROFILE", "paper"),
        choices=PROFILES,
        help="params profile (default: $CXRFLOW_PROFILE or paper)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="data tools (phantom generator)")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    s = dsub.add_parser(
        "synth",
        help="write PHANTOM (synthetic) CXRs in the real Kermany and Cohen layouts",
        description=f"Write phantom data. Reads params: {READS['synth']}.",
    )
    s.add_argument("--out", required=True, help="output directory")
    s.set_defaults(func=cmd_synth)

    reg_help = "data registry repo (default: params data.registry, else .)"
    s = dsub.add_parser(
        "versions",
        help="list data versions (registry tags) with class counts",
        description="List the data registry's versions with class counts computed from DVC "
        "listings (no image download). Reads params: data, ingest.cohen.",
    )
    s.add_argument("--registry", default=None, help=reg_help)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data_versions)
    s = dsub.add_parser(
        "rollback",
        help="restore the working copy of the tracked data to REV",
        description="Check out the .dvc files of REV and `dvc checkout` (pulling from the "
        "remote as needed). Reads params: data.",
    )
    s.add_argument("rev", help="git tag or commit of the data registry")
    s.add_argument("--registry", default=None, help=reg_help)
    s.set_defaults(func=cmd_data_rollback)
    s = dsub.add_parser(
        "snapshot",
        help="dvc add + git commit (+ tag) + dvc push the tracked data: a new data version",
        description="Record the tracked data dirs as a new version. Reads params: data.",
    )
    s.add_argument("--message", "-m", required=True)
    s.add_argument("--tag", default=None)
    s.add_argument("--no-push", action="store_true")
    s.add_argument("--registry", default=None, help=reg_help)
    s.set_defaults(func=cmd_data_snapshot)

    s = sub.add_parser(
        "ingest",
        help="build the manifest from Kermany + Cohen (or phantom data)",
        description=f"Ingest raw data into a dataset directory. Reads params: {READS['ingest']}.",
    )
    s.add_argument("--out", required=True, help="dataset directory to write")
    s.add_argument("--pipeline-run-id", default=None, help="group MLflow runs (default: new id)")
    s.add_argument("--data-version", default="", help="data version recorded in MLflow")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser(
        "validate",
        help="Great Expectations gate over the manifest (fails on violation)",
        description=f"Validate a dataset directory. Reads params: {READS['validate']}.",
    )
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", required=True, help="validation report + Data Docs directory")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser(
        "split",
        help="undersample and split train/val/test by patient",
        description=f"Build Dataset_0 and Dataset_1 splits. Reads params: {READS['split']}.",
    )
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_split)

    s = sub.add_parser(
        "train",
        help="train one model: model_0 | model_1 | model_2 | model_3",
        description=f"Train a model. Reads params: {READS['train']}.",
    )
    s.add_argument("model_key", choices=MODEL_KEYS)
    s.add_argument("--dataset", required=True)
    s.add_argument("--splits", required=True)
    s.add_argument("--out", required=True, help="model directory to write")
    s.add_argument("--base-model", default=None, help="model_0's directory (for model_2)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "evaluate",
        help="test metrics, confusion matrices and latency of the models",
        description=f"Evaluate models. Reads params: {READS['evaluate']}.",
    )
    s.add_argument("--dataset", required=True)
    s.add_argument("--splits", required=True)
    s.add_argument("--model", action="append", required=True, metavar="KEY=DIR")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser(
        "register",
        help="register the best model with the alias champion",
        description=f"Register the champion. Reads params: {READS['register']}.",
    )
    s.add_argument("--evaluation", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_register)

    s = sub.add_parser(
        "predict",
        help="classify images with the registered champion (or --model-uri)",
        description=(
            "Print class probabilities per image, applying the training preprocessing. "
            "Reads params: register (model name and alias) unless --model-uri is given."
        ),
    )
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--model-uri", default=None, help="e.g. runs:/<id>/model or models:/m-...")
    s.add_argument("--json", action="store_true", help="JSON instead of a table")
    s.set_defaults(func=cmd_predict)

    pipe = sub.add_parser("pipeline", help="compile or run the Kubeflow pipeline")
    psub = pipe.add_subparsers(dest="pipeline_command", required=True, metavar="PIPELINE_COMMAND")
    s = psub.add_parser(
        "compile",
        help="write the KFP v2 pipeline YAML (defaults = params + profile)",
        description="Compile the pipeline. Reads all params sections (as parameter defaults).",
    )
    s.add_argument("--output", required=True)
    s.set_defaults(func=cmd_pipeline_compile)
    s = psub.add_parser(
        "run",
        help="run the pipeline (--local: kfp.local subprocesses on this machine)",
        description="Run the whole pipeline. Reads all params sections.",
    )
    s.add_argument("--local", action="store_true", help="run through kfp.local")
    s.add_argument("--pipeline-root", default="runs/kfp", help="local artifact root")
    s.add_argument("--data-version", default="", help="data version to record / pin")
    s.set_defaults(func=cmd_pipeline_run)

    prm = sub.add_parser("params", help="show the resolved params")
    prsub = prm.add_subparsers(dest="params_command", required=True, metavar="PARAMS_COMMAND")
    s = prsub.add_parser("show", help="print params (with the profile applied) as JSON")
    s.set_defaults(func=cmd_params_show)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    from cxrflow.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from cxrflow.config import ParamsError

        known: tuple[type[BaseException], ...] = (ParamsError, FileNotFoundError, ValueError)
        try:
            from cxrflow.data.validate import DataValidationError

            known = (*known, DataValidationError)
        except ImportError:  # pragma: no cover
            pass
        if isinstance(exc, known) and not args.verbose:
            print(f"cxrflow: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
