"""Step ``evaluate``: every model's test-split figures with patient-level intervals."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow import names
from cxrflow.artifacts import Evaluation, ModelInfo
from cxrflow.jsonio import write_json_atomic
from cxrflow.steps.frame import StepContext, step_frame
from cxrflow.steps.lineage import data_source, split_digest
from cxrflow.steps.spec import MODELS, Port, StepSpec
from cxrflow.steps.train import MODEL_FILE
from cxrflow.tables import format_table, interval_text

if TYPE_CHECKING:
    from cxrflow.config import Params


log = logging.getLogger(__name__)

METRICS_FILE = Evaluation.FILE
MCNEMAR_FILE = "mcnemar.json"
KFP_METRICS = ("accuracy", "f1_macro", "roc_auc_macro", "ece")
"""The figures the KFP UI shows per model (with the accuracy interval)."""


def patient_images_allowed(setting: str, origin: str) -> bool:
    """Whether pictures made from patients' images may be logged to MLflow.

    Args:
        setting: ``evaluate.log_patient_images``: ``always``, ``never`` or ``auto``.
        origin: The data's origin from its provenance (``phantom`` or ``real``); ``auto``
            allows phantom data only, so an unknown origin counts as patients.
    """
    return setting == "always" or (setting == "auto" and origin == "phantom")


@dataclass(frozen=True)
class TestSplit:
    """One dataset's test split in memory: images, labels and who they belong to."""

    x: Any
    y: Any
    groups: Any
    sources: Any
    table: Any


def load_test_split(
    dataset_dir: str | Path,
    splits_dir: str | Path,
    dataset: str,
    classes: list[str],
    image_size: int,
) -> TestSplit:
    """The test split of ``dataset`` with patient ids (bootstrap unit) and sources, in the
    same row order as the images."""
    import numpy as np

    from cxrflow.data.split import read_split_table
    from cxrflow.datasets import load_arrays

    table = read_split_table(splits_dir, dataset)
    x, y = load_arrays(dataset_dir, table, "test", classes, image_size)
    rows = table[table["split"] == "test"]
    return TestSplit(
        x=x,
        y=y,
        groups=np.asarray(rows["patient_id"].astype(str)),
        sources=np.asarray(rows["source"].astype(str)),
        table=rows,
    )


def _plots(
    model: Any,
    key: str,
    info: ModelInfo,
    mdir: Path,
    test: TestSplit,
    metrics: dict[str, Any],
    proba: Any,
    ep: Any,
    plots: Path,
) -> list[Path]:
    """Confusion matrix, ROC, reliability, training curves and Grad-CAM of one model."""
    from cxrflow.gradcam import gradcam_grid
    from cxrflow.plots import plot_confusion, plot_reliability, plot_roc, plot_training_curves

    classes = list(info.classes)
    title = f"{key} on {info.dataset} test (n={metrics['n_test']})"
    pngs = [
        plot_confusion(metrics["confusion_matrix"], classes, title, plots / f"confusion_{key}.png"),
        plot_roc(test.y, proba, classes, title, plots / f"roc_{key}.png"),
        plot_reliability(
            test.y, proba, ep.calibration_bins, title, plots / f"reliability_{key}.png"
        ),
    ]
    history_file = mdir / "history.json"
    if history_file.is_file():
        hist = json.loads(history_file.read_text())
        pngs.append(
            plot_training_curves(
                hist["history"], hist["phases"], f"{key} training", plots / f"training_{key}.png"
            )
        )
    if ep.gradcam_per_class > 0:
        pngs.append(
            gradcam_grid(
                model,
                test.x,
                test.y,
                classes,
                ep.gradcam_per_class,
                ep.seed,
                f"{key}: Grad-CAM on test images",
                plots / f"gradcam_{key}.png",
            )
        )
    return pngs


def _score_externals(
    ctx: StepContext,
    model: Any,
    info: ModelInfo,
    manifest: Any,
    cache: dict[tuple[str, int, tuple[str, ...]], Any],
) -> dict[str, Any]:
    """The model's figures on every external source (:mod:`cxrflow.external`)."""
    from cxrflow.audit import predict_proba
    from cxrflow.external import external_arrays, external_rows, score_external

    classes, size = list(info.classes), info.image_size
    out: dict[str, Any] = {}
    for ext in external_rows(manifest, classes):
        slot = (ext.source, size, tuple(classes))
        if slot not in cache:
            with ctx.phase("data"):
                cache[slot] = external_arrays(ctx.dataset_dir or "", ext, classes, size)
        x, y, groups = cache[slot]
        with ctx.phase("compute"):
            fig = score_external(predict_proba(model, x), y, groups, classes, ctx.params.evaluate)
        out[ext.source] = {**fig, "skipped": ext.skipped}
    return out


def _evaluate_one(
    ctx: StepContext,
    key: str,
    mdir: Path,
    splits: str | Path,
    tests: dict[tuple[str, int], TestSplit],
    out: Path,
    manifest: Any = None,
    externals: dict[tuple[str, int, tuple[str, ...]], Any] | None = None,
) -> dict[str, Any]:
    """Score one model on its dataset's test split, plot it, log it to its run."""
    import keras

    from cxrflow.config import params_hash
    from cxrflow.evaluate import evaluate_model, flat_metrics
    from cxrflow.external import flat_external

    params, prov = ctx.params, ctx.prov
    info = ModelInfo.read(mdir)
    classes, dataset, size = list(info.classes), info.dataset, info.image_size
    if (dataset, size) not in tests:
        with ctx.phase("data"):
            tests[dataset, size] = load_test_split(
                ctx.dataset_dir or "", splits, dataset, classes, size
            )
    test = tests[dataset, size]
    with ctx.phase("model_io"):
        model = keras.models.load_model(mdir / MODEL_FILE)
    with ctx.phase("compute"):  # the evaluation itself: metrics, plots, Grad-CAM
        metrics, proba = evaluate_model(
            model, test.x, test.y, classes, test.groups, params.evaluate
        )
        pngs = _plots(model, key, info, mdir, test, metrics, proba, params.evaluate, out / "plots")
    if manifest is not None:
        metrics["external"] = _score_externals(
            ctx, model, info, manifest, {} if externals is None else externals
        )
    metrics.update(
        model_key=key,
        dataset=dataset,
        run_id=info.run_id,
        model_uri=info.model_uri,
        data_version=prov.data_version,
        manifest_hash=prov.manifest_hash,
        params_hash=params_hash(params),
        pipeline_run_id=ctx.run_key,
        plots=[str(p.relative_to(out)) for p in pngs],
    )
    ctx.tracking.log_metrics(
        info.run_id, {**flat_metrics(metrics), **flat_external(metrics.get("external") or {})}
    )
    ctx.tracking.log_dataset(
        info.run_id,
        f"{dataset}/test",
        split_digest(test.table, ("test",)),
        {**data_source(prov), "manifest_hash": prov.manifest_hash},
        {"test": int(metrics["n_test"]), "patients": int(metrics["n_patients"])},
        "evaluation",
    )
    gradcam = f"gradcam_{key}.png"
    allowed = patient_images_allowed(params.evaluate.log_patient_images, prov.origin)
    for png in pngs:
        # Grad-CAM overlays show patients' images: logged only where allowed (the file stays local)
        if Path(png).name != gradcam or allowed:
            ctx.tracking.log_artifact(info.run_id, png, "evaluation")
    ci = metrics["accuracy_ci"]
    log.info(
        "%s: accuracy %.4f [%.4f, %.4f], macro F1 %.4f, %.2f ms/image",
        key,
        metrics["accuracy"],
        ci["ci_low"] or float("nan"),
        ci["ci_high"] or float("nan"),
        metrics["f1_macro"],
        metrics["latency_ms_per_image"],
    )
    return metrics


def _mcnemar(results: Mapping[str, Any], tests: Mapping[tuple[str, int], TestSplit]) -> list[Any]:
    """McNemar's test between every pair of models tested on the same images."""
    import numpy as np

    from cxrflow.stats import mcnemar_pairs

    pairs: list[dict[str, Any]] = []
    for dataset in sorted({m["dataset"] for m in results.values()}):
        same = {k: m for k, m in results.items() if m["dataset"] == dataset}
        if len(same) < 2:
            continue
        y = next(t.y for (d, _), t in tests.items() if d == dataset)
        preds = {k: np.asarray(m["predictions"]) for k, m in same.items()}
        pairs += [{"dataset": dataset, **pair} for pair in mcnemar_pairs(y, preds)]
    return pairs


def run_evaluate(
    params: Params,
    dataset: str | Path,
    splits: str | Path,
    models: Mapping[str, str | Path],
    evaluation: str | Path,
    pipeline_run_id: str | None = None,
) -> dict[str, Any]:
    """evaluate: metrics with patient-level 95 % CIs, calibration, ROC, Grad-CAM, McNemar.

    Reads params ``evaluate``. For every model (on its own dataset's test split): accuracy,
    macro and per-class precision / recall / F1, one-vs-rest ROC AUC, confusion matrix and
    calibration error, each with a confidence interval resampling *patients*; latency at batch
    1 and batched; plots (confusion matrix, ROC curves, reliability diagram, training curves,
    Grad-CAM). McNemar's test between every pair of models tested on the same images. Writes
    ``metrics.json``, ``mcnemar.json``, ``plots/`` and ``summary.md``; logs metrics and plots
    to each model's nested run. The KFP UI shows the key metrics and one confusion matrix per
    model.
    """
    with step_frame(
        "evaluate", params, dataset_dir=dataset, pipeline_run_id=pipeline_run_id
    ) as ctx:
        with ctx.phase("imports"):
            import keras  # noqa: F401 - counted as imports, not as the first model's load

            from cxrflow.data.manifest import read_manifest
            from cxrflow.evaluate import flat_metrics
        out = Path(evaluation)
        (out / "plots").mkdir(parents=True, exist_ok=True)
        parent = ctx.open_parent()
        tests: dict[tuple[str, int], TestSplit] = {}
        manifest = read_manifest(dataset)
        externals: dict[tuple[str, int, tuple[str, ...]], Any] = {}
        results = {
            key: _evaluate_one(ctx, key, Path(models[key]), splits, tests, out, manifest, externals)
            for key in sorted(models)
        }
        pairs = _mcnemar(results, tests)
        Evaluation.model_validate(results).write(out)
        write_json_atomic(out / MCNEMAR_FILE, pairs)
        (out / "summary.md").write_text(format_summary(results, pairs))
        for name in (METRICS_FILE, MCNEMAR_FILE, "summary.md"):
            ctx.tracking.log_artifact(parent, out / name, "evaluate")
        ctx.tracking.log_metrics(
            parent,
            {
                **{f"{k}.{n}": v for k, m in results.items() for n, v in flat_metrics(m).items()},
                names.METRIC_EVALUATE_COMPUTE_SECONDS: ctx.times.seconds.get("compute", 0.0),
            },
        )
        if results:
            best = max(results, key=lambda k: results[k]["f1_macro"])
            ci = results[best]["f1_macro_ci"]
            ctx.summary = (
                f"{len(results)} models on the test split; best macro F1 {best} "
                f"{results[best]['f1_macro']:.3f} [{_fmt(ci.get('ci_low'))}, "
                f"{_fmt(ci.get('ci_high'))}]"
            )
    return results


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _with_ci(m: Mapping[str, Any], name: str) -> str:
    ci = m.get(f"{name}_ci") or {}
    if ci.get("ci_low") is None:
        return _fmt(m.get(name))
    return f"{_fmt(m.get(name))} [{_fmt(ci['ci_low'])}, {_fmt(ci['ci_high'])}]"


def format_summary(
    results: Mapping[str, Mapping[str, Any]], mcnemar: Sequence[Mapping[str, Any]] | None = None
) -> str:
    """Markdown table of the models' test metrics with their 95 % CIs (and McNemar's tests)."""
    header = [
        "model", "dataset", "n_test", "accuracy [95% CI]", "macro F1 [95% CI]", "ROC AUC",
        "ECE", "ms/image",
    ]  # fmt: skip
    rows = [
        [
            key,
            m["dataset"],
            m["n_test"],
            _with_ci(m, "accuracy"),
            _with_ci(m, "f1_macro"),
            _with_ci(m, "roc_auc_macro"),
            _fmt(m.get("ece")),
            f"{m['latency_ms_per_image']:.2f}",
        ]
        for key, m in sorted(results.items())
    ]
    text = format_table(header, rows)
    external = format_external(results)
    if external:
        text += "\n\nExternal sources (never trained on, never split):\n\n" + external
    if mcnemar:
        pairs = [
            [
                f"{p['a']} vs {p['b']}",
                p["dataset"],
                p["n_a_right_b_wrong"],
                p["n_a_wrong_b_right"],
                _fmt(p["p_value"], 4),
            ]
            for p in mcnemar
        ]
        header2 = ["McNemar", "dataset", "a right, b wrong", "a wrong, b right", "p"]
        text += "\n\n" + format_table(header2, pairs)
    return text + "\n"


def format_external(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of every model on every external source ("" when there is none)."""
    header = [
        "model", "source", "n (patients)", "accuracy % [95% CI]", "macro F1 % [95% CI]",
        "non-COVID called COVID-19 % [95% CI]", "not scored",
    ]  # fmt: skip
    rows = []
    for key, m in sorted(results.items()):
        for source, fig in sorted((m.get("external") or {}).items()):
            skipped = ", ".join(f"{n} {label}" for label, n in (fig.get("skipped") or {}).items())
            rows.append(
                [
                    key,
                    source,
                    f"{fig.get('n', 0)} ({fig.get('n_patients', 0)})",
                    interval_text(fig.get("accuracy_ci")),
                    interval_text(fig.get("f1_macro_ci")),
                    interval_text(fig.get("non_covid_called_covid")),
                    skipped or "-",
                ]
            )
    return format_table(header, rows) if rows else ""


def _publish(results: Mapping[str, Any] | None, outputs: Mapping[str, Any]) -> None:
    if results is None:
        return
    metrics = outputs["metrics"]
    for key, m in results.items():
        for name in KFP_METRICS:
            if m.get(name) is not None:
                metrics.log_metric(f"{key}_{name}", float(m[name]))
        ci = m.get("accuracy_ci") or {}
        if ci.get("ci_low") is not None:
            metrics.log_metric(f"{key}_accuracy_ci_low", float(ci["ci_low"]))
            metrics.log_metric(f"{key}_accuracy_ci_high", float(ci["ci_high"]))
        outputs[f"confusion_{key}"].log_confusion_matrix(list(m["classes"]), m["confusion_matrix"])


SPEC = StepSpec(
    name="evaluate",
    run=run_evaluate,
    kind="evaluate",
    reads=("evaluate", "models", "tracking"),
    inputs=("dataset", "splits", MODELS),
    outputs=(Port("evaluation", "Artifact", "reports/evaluate"),),
    ui_outputs=(
        Port("metrics", "Metrics"),
        Port("confusion", "ClassificationMetrics", per_model=True),
    ),
    io_retry=True,
    preload=("cxrflow.evaluate",),
    publish=_publish,
    show=lambda results: format_summary(results).rstrip("\n"),
    dvc_outputs={
        "outs": [{"reports/evaluate/summary.md": {"cache": False}}],
        "metrics": [{"reports/evaluate/metrics.json": {"cache": False}}],
        "plots": ["reports/evaluate/plots"],
    },
)
