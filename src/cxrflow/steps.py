"""The pipeline steps as plain functions over directories.

These are what the CLI, the DVC stages and the KFP components call: each takes the whole
resolved :class:`~cxrflow.config.Params`, reads its inputs from directories, calls the pure
library functions, writes its outputs to ``out_dir`` and records what it did in MLflow. Every
MLflow run of one pipeline run (the parent and each model's nested run) logs the same flattened
params and the same params hash. Step names are ``Params.steps``.
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
from cxrflow.jsonio import write_json_atomic
from cxrflow.logs import emit_progress, emit_summary

log = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"
MODEL_FILE = "model.keras"
MODEL_INFO_FILE = "model_info.json"
METRICS_FILE = "metrics.json"
REGISTERED_FILE = "registered.json"
TAG_STEP_DONE = "cxrflow.step_done."
TAG_FAILED_STEP = "cxrflow.failed_step"


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


def _step_done(parent: str, step: str) -> None:
    from cxrflow import tracking

    tracking.set_tags(parent, {TAG_STEP_DONE + step: "true"})


def _data_source(prov: Provenance) -> dict[str, Any]:
    return {
        "data_version": prov.data_version,
        "registry": prov.sources.get("registry"),
        "registry_commit": prov.sources.get("registry_commit"),
        "roots": prov.sources.get("roots"),
        "origin": prov.origin,
        "pipeline_run_id": prov.pipeline_run_id,
    }


def step_params(params: Mapping[str, Any]) -> Params:
    """The resolved configuration a KFP component receives, as :class:`Params`; sets up logging.

    Every component receives the whole configuration resolved when the pipeline was compiled or
    submitted (one ``params`` parameter): no step sees defaults for sections it does not read.
    """
    from cxrflow.config import params_from_kfp
    from cxrflow.logs import setup_logging

    setup_logging()
    return params_from_kfp(params)


def new_pipeline_run_id() -> str:
    """A fresh id grouping the MLflow runs of one local (non-KFP) pipeline run."""
    return f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------ ingest


def run_ingest(
    params: Params, out_dir: str | Path, pipeline_run_id: str | None = None
) -> dict[str, Any]:
    """Step ``ingest``: build the manifest from the configured sources (or phantom data).

    Reads params ``data``, ``ingest``. With no source configured, generates phantom data first
    and labels everything ``origin=phantom``. With ``data.registry`` the sources are read at
    ``data.version`` from the registry's DVC remote.
    """
    from cxrflow import tracking
    from cxrflow.data.ingest import ingest
    from cxrflow.data.manifest import manifest_hash, read_manifest
    from cxrflow.data.synthetic import is_phantom

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_id = pipeline_run_id or new_pipeline_run_id()
    data = params.data
    dvc_hashes: dict[str, str] = {}
    commit = ""
    with tempfile.TemporaryDirectory(prefix="cxrflow-raw-") as tmp:
        roots: dict[str, list[Path]]
        if data.registry is not None:
            from cxrflow.data.versions import materialize

            log.info("reading %s at %s from its DVC remote", data.registry, data.version or "HEAD")
            local, dv = materialize(data.registry, data.version, data.source_paths, Path(tmp))
            roots = {name: [local[r] for r in rs] for name, rs in data.sources.items()}
            dvc_hashes = dict(dv.dvc_hashes)
            commit = dv.commit
            version = f"{dv.rev}@{dv.commit[:12]}" if dv.rev != dv.commit else dv.commit
        elif data.is_phantom:
            from cxrflow.data.synthetic import generate_phantom

            log.warning(
                "no data configured (data.sources): generating PHANTOM (synthetic) data; "
                "results say nothing clinical"
            )
            roots = {
                k: [Path(r) for r in v]
                for k, v in generate_phantom(Path(tmp), data.synth).sources.items()
            }
            version = f"phantom-seed{data.synth.seed}"
        else:
            roots = {name: [Path(r) for r in rs] for name, rs in data.sources.items()}
            version = "unversioned"
        flat = [r for rs in roots.values() for r in rs]
        origin = "phantom" if flat and all(is_phantom(r) for r in flat) else "real"
        if origin == "real" and any(is_phantom(r) for r in flat):
            raise ValueError(f"mixing phantom and real sources is not allowed: {flat}")
        pairs = [(name, r) for name, rs in roots.items() for r in rs]
        report = ingest(out, params.ingest, sources=pairs, origin=origin)
    manifest = read_manifest(out)
    mhash = manifest_hash(manifest)
    prov = Provenance(
        pipeline_run_id=run_id,
        data_version=version,
        manifest_hash=mhash,
        origin=origin,
        profile=params.profile,
        sources={
            "roots": {k: list(v) for k, v in data.sources.items()},
            "registry": data.registry,
            "registry_commit": commit,
            "dvc_hashes": dvc_hashes,
            "phantom_seed": data.synth.seed if origin == "phantom" and not data.registry else None,
        },
    )
    write_json_atomic(out / PROVENANCE_FILE, asdict(prov))
    report_dict = _to_jsonable(report)
    parent = _parent_run(params, prov)
    tags: dict[str, str] = {}
    if data.registry:
        tags |= {"cxrflow.data.registry": data.registry, "cxrflow.data.commit": commit}
        tags |= {f"cxrflow.data.dvc_md5.{k}": v for k, v in dvc_hashes.items()}
    if tags:
        tracking.set_tags(parent, tags)
    tracking.log_dataset(
        parent,
        "manifest",
        mhash,
        _data_source(prov),
        {"rows": len(manifest), "labels": manifest["label"].value_counts().to_dict()},
        "ingest",
        list(manifest.columns),
    )
    for name in (
        "ingest_report.json",
        "quarantine.csv",
        "excluded.csv",
        "duplicates.csv",
        PROVENANCE_FILE,
    ):
        if (out / name).is_file():
            tracking.log_artifact(parent, out / name, "ingest")
    _step_done(parent, "ingest")
    emit_summary(
        "ingest",
        f"{report_dict['kept']} images kept of {report_dict['considered']} "
        f"({report_dict['quarantined']} quarantined, {report_dict['excluded_by_filter']} "
        f"excluded, {report_dict['duplicates_collapsed']} duplicates); data {version}",
    )
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
    write_json_atomic(out / "validation.json", summary.to_dict())
    parent = _parent_run(params, prov)
    tracking.log_artifact(parent, out / "validation.json", "validate")
    if (out / "data_docs").is_dir():
        tracking.log_artifact(parent, out / "data_docs", "validate/data_docs")
    tracking.set_tags(parent, {"cxrflow.validate.success": str(summary.success)})
    raise_on_failure(summary)
    _step_done(parent, "validate")
    emit_summary("validate", f"{summary.evaluated} expectations passed on {len(df)} images")
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
        write_json_atomic(out / f"validation_{name}.json", summaries[name])
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
    _step_done(parent, "split")
    figures = []
    for ds, per_split in report.counts.items():
        sizes = " / ".join(f"{sp} {sum(c.values())}" for sp, c in per_split.items())
        figures.append(f"{ds}: {sizes}")
    confounds = sum(len(v) for v in report.confounds.values())
    emit_summary(
        "split", "; ".join(figures) + (f"; {confounds} confound warning(s)" if confounds else "")
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
    """Step ``<model_key>``: train one model of ``params.models`` and log it to MLflow.

    Reads params ``train``, ``models.<model_key>`` (and logs the whole configuration). A model
    whose ``init`` names another model starts from that model's output (``base_model_dir``).
    Writes ``model.keras``, ``history.json`` and ``model_info.json`` (incl. the MLflow model
    URI) to ``out_dir``.
    """
    import keras
    import numpy as np

    from cxrflow import tracking
    from cxrflow.config import check_model_key
    from cxrflow.data.split import read_split_table
    from cxrflow.datasets import load_arrays
    from cxrflow.models import get_architecture
    from cxrflow.train import train_model

    spec = check_model_key(params, model_key)
    arch = get_architecture(spec.architecture)
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
    if spec.base_model_key is not None:
        if base_model_dir is None:
            raise ValueError(
                f"{model_key}: init={spec.init} needs the trained {spec.init} "
                f"(--base-model {spec.init}'s output directory)"
            )
        base = keras.models.load_model(Path(base_model_dir) / MODEL_FILE)

    parent = _parent_run(params, prov)
    tags = {
        **_common_tags(params, prov),
        "cxrflow.dataset": spec.dataset,
        "cxrflow.architecture": spec.architecture,
        "cxrflow.init": spec.init,
        tracking.TAG_PRETRAINED: (spec.weights_path or "NONE (random init)")
        if spec.init_kind == "imagenet"
        else spec.init,
    }
    with tracking.model_run(
        params.tracking.experiment_name,
        parent,
        prov.pipeline_run_id,
        model_key,
        tags,
        flatten_params(params),
    ) as run_id:
        if spec.init_kind == "imagenet" and not spec.weights_path:
            tracking.set_tags(
                run_id,
                {
                    "cxrflow.warning": f"{spec.architecture} trained WITHOUT ImageNet weights "
                    f"(models.{model_key}.weights_path is null)"
                },
            )
        if spec.weights_path:
            from cxrflow.data.manifest import file_sha256

            tracking.set_tags(
                run_id, {"cxrflow.pretrained_weights_sha256": file_sha256(spec.weights_path)}
            )
        tracking.log_dataset(
            run_id,
            spec.dataset,
            prov.manifest_hash,
            _data_source(prov),
            {"train": len(x_tr), "val": len(x_va), "classes": list(classes)},
            "training",
        )
        epochs_max = params.train.epochs

        class _Progress(keras.callbacks.Callback):  # type: ignore[misc]
            def __init__(self, phase: str, offset: int) -> None:
                super().__init__()
                self.phase, self.offset = phase, offset

            def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
                figures = " ".join(
                    f"{k}={float(v):.4f}"
                    for k, v in (logs or {}).items()
                    if k in ("loss", "accuracy", "val_loss", "val_accuracy")
                )
                emit_progress(model_key, f"{self.phase} epoch {epoch + 1}/{epochs_max} {figures}")

        def cb(phase: str, offset: int) -> list[Any]:
            return [tracking.make_epoch_logger(run_id, phase, offset), _Progress(phase, offset)]

        t0 = time.perf_counter()
        result = train_model(
            spec, params.train, classes, (x_tr, y_tr, x_va, y_va), base, cb, verbose
        )
        train_s = time.perf_counter() - t0
        result.model.save(out / MODEL_FILE)
        write_json_atomic(
            out / "history.json", {"history": result.history, "phases": result.phases}
        )
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
                "preprocessing": arch.preprocessing,
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
    write_json_atomic(out / MODEL_INFO_FILE, info)
    _step_done(parent, model_key)
    val_acc = result.history.get("val_accuracy") or [float("nan")]
    emit_summary(
        model_key,
        f"{len(result.history.get('loss', []))} epochs, best val_accuracy {max(val_acc):.3f} "
        f"({train_s:.0f} s)",
    )
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
    its MLflow run and model URI), ``plots/confusion_<model>.png`` and ``summary.md``; logs metrics
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
            out / "plots" / f"confusion_{key}.png",
        )
        metrics.update(
            model_key=key,
            dataset=dataset,
            run_id=info["run_id"],
            model_uri=info["model_uri"],
            data_version=prov.data_version,
            manifest_hash=prov.manifest_hash,
            params_hash=params_hash(params),
            pipeline_run_id=prov.pipeline_run_id,
        )
        results[key] = metrics
        tracking.log_metrics(info["run_id"], flat_metrics(metrics))
        tracking.log_dataset(
            info["run_id"],
            dataset,
            prov.manifest_hash,
            _data_source(prov),
            {"test": int(metrics["n_test"]), "classes": list(classes)},
            "evaluation",
        )
        tracking.log_artifact(info["run_id"], png, "evaluation")
        log.info(
            "%s: accuracy %.4f, macro F1 %.4f, %.2f ms/image",
            key,
            metrics["accuracy"],
            metrics["f1_macro"],
            metrics["latency_ms_per_image"],
        )
    write_json_atomic(out / METRICS_FILE, results)
    (out / "summary.md").write_text(format_summary(results))
    tracking.log_artifact(parent, out / METRICS_FILE, "evaluate")
    tracking.log_artifact(parent, out / "summary.md", "evaluate")
    for key, m in results.items():
        tracking.log_metrics(parent, {f"{key}.{k}": v for k, v in flat_metrics(m).items()})
    _step_done(parent, "evaluate")
    if results:
        best = max(results, key=lambda k: results[k]["f1_macro"])
        emit_summary(
            "evaluate",
            f"{len(results)} models on the test split; best macro F1 {best} "
            f"{results[best]['f1_macro']:.3f} (accuracy {results[best]['accuracy']:.3f})",
        )
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
    metric_tags = {
        f"cxrflow.metric.{k}": f"{float(m[k]):.6f}"
        for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro")
        if k in m
    }
    version = tracking.register_model(
        m["model_uri"],
        rp.model_name,
        rp.alias,
        tags={
            "cxrflow.model_key": champion,
            f"cxrflow.{rp.metric}": f"{m[rp.metric]:.6f}",
            "cxrflow.run_id": m["run_id"],
            "cxrflow.dataset": m["dataset"],
            tracking.TAG_DATA_VERSION: str(m.get("data_version", "")),
            tracking.TAG_MANIFEST_HASH: str(m.get("manifest_hash", "")),
            tracking.TAG_PIPELINE_RUN: str(m.get("pipeline_run_id", "")),
            "cxrflow.params_hash": params_hash(params),
            **metric_tags,
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
    write_json_atomic(out / REGISTERED_FILE, info)
    tracking.set_tags(m["run_id"], {"cxrflow.champion": "true"})
    pipeline_run_id = str(m.get("pipeline_run_id", ""))
    parent = (
        tracking.find_parent_run(params.tracking.experiment_name, pipeline_run_id)
        if pipeline_run_id
        else None
    )
    if parent is not None:
        tracking.set_tags(parent, {"cxrflow.champion": champion})
        _step_done(parent, "register")
    emit_summary(
        "register",
        f"champion {champion} ({rp.metric} {m[rp.metric]:.3f}) -> "
        f"models:/{rp.model_name}@{rp.alias} (version {version})",
    )
    return info


# ------------------------------------------------------------------------------ start points


START_FILE = "START.json"


def write_start_point(params: Params, kind: str, out_dir: str | Path) -> dict[str, Any]:
    """Describe a starting point of training (``scratch`` or ``imagenet``) in ``out_dir``.

    DVC's model stages depend on ``models/<init>``: a transfer on the model it starts from, the
    others on this description. For ``imagenet`` it records each configured weights file with
    its sha256, so replacing a weights file (a DVC-tracked artifact) reruns the models that
    load it; for ``scratch`` the training seed.
    """
    from cxrflow.config import INIT_IMAGENET, INIT_SCRATCH
    from cxrflow.data.manifest import file_sha256

    if kind not in (INIT_SCRATCH, INIT_IMAGENET):
        raise ValueError(f"a start point is {INIT_SCRATCH} or {INIT_IMAGENET}, got {kind!r}")
    users = {k: m for k, m in params.models.items() if m.init == kind}
    info: dict[str, Any] = {"init": kind, "models": sorted(users)}
    if kind == INIT_SCRATCH:
        info["seed"] = params.train.seed
    else:
        weights: dict[str, Any] = {}
        for key, spec in sorted(users.items()):
            path = spec.weights_path
            if path and not Path(path).is_file():
                raise FileNotFoundError(
                    f"models.{key}.weights_path: {path} does not exist (download the no-top "
                    "ImageNet weights once, then `dvc add` the file)"
                )
            weights[key] = {"path": path, "sha256": file_sha256(path) if path else None}
        info["weights"] = weights
    write_json_atomic(Path(out_dir) / START_FILE, info)
    return info


# ---------------------------------------------------------------------------------- finalize


def run_finalize(
    params: Params, pipeline_run_id: str, state: str, error: str = ""
) -> dict[str, Any]:
    """End the pipeline run's MLflow parent run: ``FINISHED``, or ``FAILED`` naming the step.

    Runs after every other step, whatever happened (KFP's exit handler; the local runner).
    The failed step is the first of ``params.steps`` that did not mark itself done on the
    parent run. Nested runs a killed step left ``RUNNING`` are marked ``FAILED`` too.

    Args:
        params: The run's resolved configuration.
        pipeline_run_id: The pipeline run (KFP job id, or a local id).
        state: The pipeline's final state as KFP reports it (``SUCCEEDED``, ``FAILED``...).
        error: The error message KFP reports, if any.
    """
    from cxrflow import tracking

    exp = params.tracking.experiment_name
    parent = tracking.find_parent_run(exp, pipeline_run_id)
    if parent is None:  # failed before ingest created it: record the failure anyway
        parent = tracking.get_or_create_parent_run(
            exp,
            pipeline_run_id,
            {
                tracking.TAG_PROFILE: params.profile,
                tracking.TAG_GIT_COMMIT: tracking.git_commit(),
                "cxrflow.params_hash": params_hash(params),
            },
            flatten_params(params),
        )
    tags = tracking.run_tags(parent)
    done = {k[len(TAG_STEP_DONE) :] for k, v in tags.items() if k.startswith(TAG_STEP_DONE)}
    missing = [step for step in params.steps if step not in done]
    succeeded = state.upper() in ("SUCCEEDED", "SUCCESS", "COMPLETE") and not missing
    failed_step = "" if succeeded else (missing[0] if missing else "unknown")
    if not succeeded:
        reason = error.strip().splitlines()[-1][:500] if error.strip() else state
        tracking.set_tags(parent, {TAG_FAILED_STEP: failed_step, "cxrflow.error": reason})
    stale = tracking.fail_running_children(exp, pipeline_run_id)
    status = "FINISHED" if succeeded else "FAILED"
    tracking.end_run(parent, status)
    emit_summary(
        "finalize",
        f"MLflow parent run {parent} {status}"
        + (f" (failed step: {failed_step})" if failed_step else ""),
    )
    return {"parent_run_id": parent, "status": status, "failed_step": failed_step, "stale": stale}
