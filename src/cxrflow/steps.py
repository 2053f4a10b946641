"""The nine pipeline steps as plain functions over directories.

These are what the CLI, the DVC stages and the KFP components call: each reads its inputs
from directories, calls the pure library functions, writes its outputs to ``out_dir`` and
records what it did in MLflow. Step names are :data:`cxrflow.config.STEPS`.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from cxrflow.config import DATASETS, Params, flatten_params, params_hash

log = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"
MODEL_FILE = "model.keras"
MODEL_INFO_FILE = "model_info.json"
METRICS_FILE = "metrics.json"
REGISTERED_FILE = "registered.json"


@dataclass(frozen=True)
class Provenance:
    """Where a dataset directory came from; travels with it to every later step."""

    pipeline_run_id: str
    data_version: str
    manifest_hash: str
    origin: str
    profile: str
    sources: dict[str, Any]


def _to_jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if is_dataclass(obj) and not isinstance(obj, type):
        return json.loads(json.dumps(asdict(obj), default=str))
    return obj


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def read_provenance(dataset_dir: str | Path) -> Provenance:
    """Read ``provenance.json`` of a dataset directory."""
    path = Path(dataset_dir) / PROVENANCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {dataset_dir} an ingest output?")
    return Provenance(**json.loads(path.read_text()))


def _common_tags(params: Params, prov: Provenance) -> dict[str, str]:
    from cxrflow import tracking

    hashes = prov.sources.get("dvc_hashes") or {}
    extra = {"cxrflow.data.dvc_hashes": json.dumps(hashes, sort_keys=True)} if hashes else {}
    return {
        **extra,
        tracking.TAG_PROFILE: params.profile,
        tracking.TAG_MANIFEST_HASH: prov.manifest_hash,
        tracking.TAG_DATA_VERSION: prov.data_version,
        tracking.TAG_DATA_ORIGIN: prov.origin,
        tracking.TAG_GIT_COMMIT: tracking.git_commit(),
        "cxrflow.params_hash": params_hash(params),
    }


def _parent_run(params: Params, prov: Provenance) -> str:
    from cxrflow import tracking

    return tracking.get_or_create_parent_run(
        params.tracking.experiment_name,
        prov.pipeline_run_id,
        _common_tags(params, prov),
        flatten_params(params),
    )


def step_params(profile: str, **sections: Mapping[str, Any]) -> Params:
    """Params of one step from the section dicts a KFP component receives; sets up logging.

    Example: ``step_params(profile, validate=validate_params, tracking=tracking_params)``.
    Sections a step does not receive keep their defaults (the step does not read them).
    """
    from cxrflow.config import params_from_sections
    from cxrflow.logs import setup_logging

    setup_logging()
    return params_from_sections({**sections, "profile": profile})


# ------------------------------------------------------------------------------------ ingest


def run_ingest(
    params: Params,
    out_dir: str | Path,
    pipeline_run_id: str | None = None,
    data_version: str = "",
) -> dict[str, Any]:
    """Step ``ingest``: build the manifest from the configured sources (or phantom data).

    Reads params ``data``, ``ingest``. With no Kermany and no Cohen directory configured,
    generates phantom data first and labels everything ``origin=phantom``.
    """
    from cxrflow import tracking
    from cxrflow.data.ingest import ingest
    from cxrflow.data.manifest import manifest_hash, read_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_id = pipeline_run_id or f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    data = params.data
    dvc_hashes: dict[str, str] = {}
    commit = ""
    with tempfile.TemporaryDirectory(prefix="cxrflow-raw-") as tmp:
        if data.registry is not None:
            from cxrflow.data.versions import materialize

            rev = data_version or data.version
            log.info("reading %s at %s from its DVC remote", data.registry, rev or "HEAD")
            local, dv = materialize(data.registry, rev, data.source_paths, Path(tmp))
            kermany = local[data.kermany_dir] if data.kermany_dir else None
            cohen = tuple(local[c] for c in data.cohen_dirs)
            dvc_hashes = dict(dv.dvc_hashes)
            commit = dv.commit
            version = f"{dv.rev}@{dv.commit[:12]}" if dv.rev != dv.commit else dv.commit
        elif data.kermany_dir is None and not data.cohen_dirs:
            from cxrflow.data.synthetic import generate_phantom

            log.warning(
                "no data configured (data.kermany_dir / data.cohen_dirs): "
                "generating PHANTOM (synthetic) data; results say nothing clinical"
            )
            summary = generate_phantom(Path(tmp), data.synth)
            kermany = summary.kermany_dir
            cohen = (summary.cohen_dir,)
            version = data_version or f"phantom-seed{data.synth.seed}"
        else:
            kermany = Path(data.kermany_dir) if data.kermany_dir else None
            cohen = tuple(Path(c) for c in data.cohen_dirs)
            version = data_version or "unversioned"
        from cxrflow.data.synthetic import is_phantom

        roots = [r for r in (kermany, *cohen) if r is not None]
        origin = "phantom" if roots and all(is_phantom(r) for r in roots) else "real"
        if origin == "real" and any(is_phantom(r) for r in roots):
            raise ValueError(f"mixing phantom and real sources is not allowed: {roots}")
        report = ingest(out, params.ingest, kermany_dir=kermany, cohen_dirs=cohen, origin=origin)
    mhash = manifest_hash(read_manifest(out))
    prov = Provenance(
        pipeline_run_id=run_id,
        data_version=version,
        manifest_hash=mhash,
        origin=origin,
        profile=params.profile,
        sources={
            "kermany_dir": data.kermany_dir,
            "cohen_dirs": list(data.cohen_dirs),
            "registry": data.registry,
            "registry_commit": commit,
            "dvc_hashes": dvc_hashes,
            "phantom_seed": data.synth.seed if origin == "phantom" and not data.registry else None,
        },
    )
    _write_json(out / PROVENANCE_FILE, asdict(prov))
    report_dict = _to_jsonable(report)
    parent = _parent_run(params, prov)
    tags = {tracking.TAG_STEP + ".ingest": "done"}
    if data.registry:
        tags |= {"cxrflow.data.registry": data.registry, "cxrflow.data.commit": commit}
        tags |= {f"cxrflow.data.dvc_md5.{k}": v for k, v in dvc_hashes.items()}
    tracking.set_tags(parent, tags)
    for name in ("ingest_report.json", "quarantine.csv", "duplicates.csv", PROVENANCE_FILE):
        if (out / name).is_file():
            tracking.log_artifact(parent, out / name, "ingest")
    return {"provenance": asdict(prov), "report": report_dict, "parent_run_id": parent}


# ---------------------------------------------------------------------------------- validate


def run_validate(params: Params, dataset_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Step ``validate``: the Great Expectations gate over the manifest.

    Reads params ``validate``. Writes ``validation.json`` and Data Docs HTML to ``out_dir``,
    logs both to the parent MLflow run, and raises ``DataValidationError`` (naming each failed
    expectation with examples) when the suite fails, so nothing trains on bad data.
    """
    from cxrflow import tracking
    from cxrflow.data.manifest import read_manifest
    from cxrflow.data.validate import raise_on_failure, validate_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov = read_provenance(dataset_dir)
    df = read_manifest(dataset_dir)
    summary = validate_manifest(df, params.validate, docs_dir=out / "data_docs")
    _write_json(out / "validation.json", summary.to_dict())
    parent = _parent_run(params, prov)
    tracking.log_artifact(parent, out / "validation.json", "validate")
    if (out / "data_docs").is_dir():
        tracking.log_artifact(parent, out / "data_docs", "validate/data_docs")
    tracking.set_tags(parent, {"cxrflow.validate.success": str(summary.success)})
    raise_on_failure(summary)
    return summary.to_dict()


# ------------------------------------------------------------------------------------- split


def run_split(params: Params, dataset_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Step ``split``: undersample (Dataset_1 counts) and split by patient; GX-check the result.

    Reads params ``split``, ``validate``. Fails if a patient lands in two splits or classes
    are out of balance tolerance.
    """
    from cxrflow import tracking
    from cxrflow.data.manifest import read_manifest
    from cxrflow.data.split import split_manifest, write_splits
    from cxrflow.data.validate import raise_on_failure, validate_splits

    out = Path(out_dir)
    prov = read_provenance(dataset_dir)
    report_path = Path(dataset_dir) / "ingest_report.json"
    links = (
        json.loads(report_path.read_text()).get("patient_links", [])
        if report_path.is_file()
        else []
    )
    tables, report = split_manifest(read_manifest(dataset_dir), params.split, links)
    write_splits(tables, report, out)
    parent = _parent_run(params, prov)
    tracking.log_artifact(parent, out / "split_report.json", "split")
    summaries = {}
    for name, table in tables.items():
        # Dataset_1 is checked against its undersampling targets; a capped Dataset_0 against
        # its mean class count; an uncapped Dataset_0 keeps the paper's natural imbalance.
        targets = dict(params.split.dataset_1_counts) if name == "dataset_1" else None
        summary = validate_splits(
            table,
            params.validate,
            docs_dir=out / f"data_docs_{name}",
            class_counts_expected=targets,
            # the paper keeps Dataset_0's natural imbalance unless it is capped
            check_balance=name == "dataset_1" or params.split.dataset_0_max_per_class is not None,
        )
        summaries[name] = summary.to_dict()
        _write_json(out / f"validation_{name}.json", summaries[name])
        tracking.log_artifact(parent, out / f"validation_{name}.json", "split")
        raise_on_failure(summary)
    if report.confounds:
        tracking.set_tags(
            parent,
            {
                f"cxrflow.confound.{k}": "; ".join(v)[:4900]
                for k, v in report.confounds.items()
                if v
            },
        )
    return {"report": report.to_dict(), "validation": summaries}


# ------------------------------------------------------------------------------------- train


def run_train(
    params: Params,
    model_key: str,
    dataset_dir: str | Path,
    splits_dir: str | Path,
    out_dir: str | Path,
    base_model_dir: str | Path | None = None,
    verbose: int = 2,
) -> dict[str, Any]:
    """Step ``model_N``: train one of the paper's models and log it to MLflow.

    Reads params ``train``, ``models.<model_key>``. Writes ``model.keras``, ``history.json``
    and ``model_info.json`` (incl. the MLflow model URI) to ``out_dir``.
    """
    import keras
    import numpy as np

    from cxrflow import tracking
    from cxrflow.data.split import read_split_table
    from cxrflow.datasets import load_arrays
    from cxrflow.train import train_model

    spec = params.models[model_key]
    classes = DATASETS[spec.dataset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov = read_provenance(dataset_dir)
    table = read_split_table(splits_dir, spec.dataset)
    size = params.train.image_size
    x_tr, y_tr = load_arrays(dataset_dir, table, "train", classes, size)
    x_va, y_va = load_arrays(dataset_dir, table, "val", classes, size)
    log.info("%s: %d train / %d val images of %s", model_key, len(x_tr), len(x_va), spec.dataset)
    base = None
    if spec.init == "model_0":
        if base_model_dir is None:
            raise ValueError(f"{model_key}: init=model_0 needs --base-model (Model_0's output)")
        base = keras.models.load_model(Path(base_model_dir) / MODEL_FILE)

    parent = _parent_run(params, prov)
    tags = {
        **_common_tags(params, prov),
        "cxrflow.dataset": spec.dataset,
        "cxrflow.architecture": spec.architecture,
        "cxrflow.init": spec.init,
        tracking.TAG_PRETRAINED: (spec.weights_path or "NONE (random init)")
        if spec.init == "imagenet"
        else spec.init,
    }
    with tracking.model_run(
        params.tracking.experiment_name,
        parent,
        prov.pipeline_run_id,
        model_key,
        tags,
        flatten_params({"train": params.train, "model": spec}),
    ) as run_id:
        if spec.init == "imagenet" and not spec.weights_path:
            tracking.set_tags(
                run_id,
                {
                    "cxrflow.warning": "ResNet-50 trained WITHOUT ImageNet "
                    "weights (models.model_3.weights_path is null)"
                },
            )
        if spec.weights_path:
            from cxrflow.data.manifest import file_sha256

            tracking.set_tags(
                run_id, {"cxrflow.pretrained_weights_sha256": file_sha256(spec.weights_path)}
            )

        def cb(phase: str, offset: int) -> list[Any]:
            return [tracking.make_epoch_logger(run_id, phase, offset)]

        t0 = time.perf_counter()
        result = train_model(
            spec, params.train, classes, (x_tr, y_tr, x_va, y_va), base, cb, verbose
        )
        train_s = time.perf_counter() - t0
        result.model.save(out / MODEL_FILE)
        _write_json(out / "history.json", {"history": result.history, "phases": result.phases})
        tracking.log_metrics(
            run_id,
            {
                "train_seconds": train_s,
                "epochs_total": float(len(result.history.get("loss", []))),
                "n_train": float(len(x_tr)),
                "n_val": float(len(x_va)),
            },
        )
        tracking.log_artifact(run_id, out / "history.json")
        model_uri = tracking.log_keras_model(
            result.model,
            "model",
            x_tr[:2].astype(np.float32),
            {
                "classes": list(classes),
                "image_size": size,
                "model_key": model_key,
                "preprocessing": "cxrflow.datasets.preprocess_image (8-bit grey, bilinear resize)",
            },
        )
    info = {
        "model_key": model_key,
        "classes": list(classes),
        "image_size": size,
        "dataset": spec.dataset,
        "run_id": run_id,
        "model_uri": model_uri,
        "pipeline_run_id": prov.pipeline_run_id,
        "pretrained": result.pretrained,
        "phases": result.phases,
        "train_seconds": train_s,
    }
    _write_json(out / MODEL_INFO_FILE, info)
    return info


# ---------------------------------------------------------------------------------- evaluate


def run_evaluate(
    params: Params,
    dataset_dir: str | Path,
    splits_dir: str | Path,
    model_dirs: Mapping[str, str | Path],
    out_dir: str | Path,
) -> dict[str, Any]:
    """Step ``evaluate``: test-split metrics, confusion matrices and latency for each model.

    Reads params ``evaluate``, ``train.image_size``. Writes ``metrics.json`` (per model, with
    its MLflow run and model URI), ``confusion_<model>.png`` and ``summary.md``; logs metrics
    and plots to each model's nested run.
    """
    import keras

    from cxrflow import tracking
    from cxrflow.data.split import read_split_table
    from cxrflow.datasets import load_arrays
    from cxrflow.evaluate import evaluate_model, flat_metrics, plot_confusion

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov = read_provenance(dataset_dir)
    parent = _parent_run(params, prov)
    results: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    for key in sorted(model_dirs):
        mdir = Path(model_dirs[key])
        info = json.loads((mdir / MODEL_INFO_FILE).read_text())
        classes = info["classes"]
        dataset = info["dataset"]
        if dataset not in cache:
            table = read_split_table(splits_dir, dataset)
            cache[dataset] = load_arrays(dataset_dir, table, "test", classes, info["image_size"])
        x, y = cache[dataset]
        model = keras.models.load_model(mdir / MODEL_FILE)
        metrics, _ = evaluate_model(
            model, x, y, classes, params.evaluate.latency_samples, params.evaluate.latency_warmup
        )
        png = plot_confusion(
            metrics["confusion_matrix"],
            classes,
            f"{key} on {dataset} test (n={metrics['n_test']})",
            out / f"confusion_{key}.png",
        )
        metrics.update(
            model_key=key, dataset=dataset, run_id=info["run_id"], model_uri=info["model_uri"]
        )
        results[key] = metrics
        tracking.log_metrics(info["run_id"], flat_metrics(metrics))
        tracking.log_artifact(info["run_id"], png, "evaluation")
        log.info(
            "%s: accuracy %.4f, macro F1 %.4f, %.2f ms/image",
            key,
            metrics["accuracy"],
            metrics["f1_macro"],
            metrics["latency_ms_per_image"],
        )
    _write_json(out / METRICS_FILE, results)
    (out / "summary.md").write_text(format_summary(results))
    tracking.log_artifact(parent, out / METRICS_FILE, "evaluate")
    tracking.log_artifact(parent, out / "summary.md", "evaluate")
    for key, m in results.items():
        tracking.log_metrics(parent, {f"{key}.{k}": v for k, v in flat_metrics(m).items()})
    return results


def format_summary(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of the models' test metrics."""
    lines = [
        "| model | dataset | n_test | accuracy | precision | recall | F1 | ms/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(results):
        m = results[key]
        lines.append(
            f"| {key} | {m['dataset']} | {m['n_test']} | {m['accuracy']:.4f} | "
            f"{m['precision_macro']:.4f} | {m['recall_macro']:.4f} | {m['f1_macro']:.4f} | "
            f"{m['latency_ms_per_image']:.2f} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- register


def run_register(params: Params, evaluation_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Step ``register``: register the best candidate and point the alias at it.

    Reads params ``register``. Uses :func:`cxrflow.register.select_champion`; sets the alias
    (``champion``), never a stage.
    """
    from cxrflow import tracking
    from cxrflow.register import select_champion

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((Path(evaluation_dir) / METRICS_FILE).read_text())
    rp = params.register
    champion = select_champion(results, rp.metric, rp.candidates)
    m = results[champion]
    tracking.configure(params.tracking.experiment_name)
    version = tracking.register_model(
        m["model_uri"],
        rp.model_name,
        rp.alias,
        tags={
            "cxrflow.model_key": champion,
            f"cxrflow.{rp.metric}": f"{m[rp.metric]:.6f}",
            "cxrflow.run_id": m["run_id"],
            "cxrflow.dataset": m["dataset"],
        },
        description=f"{champion}: {rp.metric}={m[rp.metric]:.4f} on {m['n_test']} test images",
    )
    info = {
        "champion": champion,
        "metric": rp.metric,
        "value": m[rp.metric],
        "model_name": rp.model_name,
        "alias": rp.alias,
        "version": version,
        "model_uri": f"models:/{rp.model_name}@{rp.alias}",
        "source_model_uri": m["model_uri"],
        "candidates": {k: results[k][rp.metric] for k in rp.candidates if k in results},
    }
    _write_json(out / REGISTERED_FILE, info)
    tracking.set_tags(m["run_id"], {"cxrflow.champion": "true"})
    return info
