"""The reproduction report document.

:func:`build_report` reads the outputs of one pipeline run (ingest, split, evaluate, audit,
register) and writes ``reproduction.md`` with its figures in ``reproduction_files/`` and one
self-contained ``reproduction.html`` (figures inlined). Everything in it comes from that run's
files; the paper's numbers are quoted from Katsamenis et al. (2020), section 4.2.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrflow.artifacts import AuditReport, Evaluation, Provenance, Registration
from cxrflow.report.outputs import RunOutputs, _load, _read
from cxrflow.report.sections import (
    external_section,
    headline_table,
    metric_ci,
    resnet_section,
    variant_section,
    verdict_paragraph,
)
from cxrflow.tables import format_table, interval_text

PAPER = {
    # Katsamenis et al. 2020, Figures 4-5 and section 4.2 (test set of Dataset_1, in %)
    "model_1": {
        "accuracy": 92.32,
        "f1_macro": 92.46,
        "precision_macro": 93.03,
        "recall_macro": 92.17,
    },
    "model_2": {
        "accuracy": 95.65,
        "f1_macro": 95.49,
        "precision_macro": 95.69,
        "recall_macro": 95.62,
    },
    "model_3": {
        "accuracy": 97.66,
        "f1_macro": 97.61,
        "precision_macro": 97.73,
        "recall_macro": 97.67,
    },
}
PAPER_LATENCY_MS = (26.9, 42.7)  # per test image on an NVIDIA K80 (Figure 6)
PAPER_COUNTS = {"normal": 544, "bacterial": 500, "covid": 456}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return format_table(header, rows).splitlines()


def _audit_rows(audit: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    rows = []
    for key, r in audit.items():
        controls = r.get("controls") or {}
        probe = r.get("source_probe") or {}
        ablation = r.get("ablation") or {}
        masked = (ablation.get("masked") or {}).get("balanced_accuracy")
        unmasked = (ablation.get("unmasked") or {}).get("balanced_accuracy")
        chance = ablation.get("chance")
        rows.append(
            [
                key,
                "passed" if r.get("passed") else "**FAILED**",
                f"{interval_text(controls.get('covid_rate'))} (n={controls.get('n', '?')})",
                interval_text(probe.get("auc"), 1, 3),
                f"{interval_text(masked)} (unmasked {interval_text(unmasked)}; chance "
                f"{'n/a' if chance is None else f'{100 * chance:.1f}'})",
            ]
        )
    lines += _table(
        [
            "candidate",
            "verdict",
            "controls called COVID-19, % [95% CI]",
            "source-probe AUC within labels [95% CI]",
            "balanced accuracy with the lung field masked, % [95% CI]",
        ],
        rows,
    )
    for key, r in audit.items():
        reasons = r.get("reasons") or []
        if reasons:
            lines.append("")
            lines.append(f"{key}: " + "; ".join(reasons))
    first: Mapping[str, Any] = next(iter(audit.values()), {})
    by_finding = ((first.get("controls") or {}).get("by_finding")) or {}
    if by_finding:
        lines += [
            "",
            "Control set (adult, non-COVID, frontal X-rays from Cohen's collection), share "
            "called COVID-19 by each candidate:",
            "",
        ]
        findings = sorted(by_finding)
        header = ["finding", "n", *audit.keys()]
        body = []
        for f in findings:
            n = by_finding[f].get("n", "")
            cells = []
            for r in audit.values():
                entry = ((r.get("controls") or {}).get("by_finding") or {}).get(f) or {}
                cells.append(interval_text(entry.get("covid_rate") or entry) if entry else "n/a")
            body.append([f, str(n), *cells])
        lines += _table(header, body)
    return lines


DIFFERENCES = [
    "Data: {covid} COVID-19 frontal X-rays remain after filtering, de-duplication and the "
    "missing (CC BY-NC-ND or unavailable) files of the 2020-06-22 snapshot, against the paper's "
    "456; Dataset_1 is short by {short} images and the split reports it.",
    "The Kermany copy used here was already resized to 224x224 (aspect ratio squashed) by the "
    "repository it comes from; the paper used the originals.",
    "No ImageNet weights can be downloaded here: Model_3 is ResNet-50 trained from random "
    "initialisation (allowed explicitly by models.model_3.allow_random_init), so it is not the "
    "paper's Model_3 and its numbers say nothing about ImageNet transfer; where the run has "
    "one, a ResNet-50 pretrained on Dataset_0 in the pipeline stands in for ImageNet (above).",
    "The small CNN's architecture exists only as the paper's Figure 3; cxrflow's reading is four "
    "conv/max-pool blocks, a dense layer with dropout and a softmax classifier.",
    "Splits are grouped by patient (the paper does not say it did this), and every interval "
    "resamples patients.",
    "Settings were reduced to fit the time this machine had (below); the paper trained up to "
    "500 epochs at 224 px with early stopping (patience 10).",
]


def _data_lines(ingest: Mapping[str, Any], split: Mapping[str, Any]) -> list[str]:
    """The data section: what ingest kept, Dataset_1's split and the confounds."""
    lines: list[str] = []
    if ingest:
        lines.append(
            f"Ingest considered {ingest.get('considered')} inputs: {ingest.get('kept')} kept, "
            f"{ingest.get('quarantined')} quarantined, {ingest.get('excluded_by_filter')} "
            f"excluded by the Cohen filter, {ingest.get('duplicates_collapsed')} duplicates "
            "collapsed."
        )
        after = (ingest.get("stages") or {}).get("after_dedupe") or {}
        rows = [[src, lab, str(n)] for src, labels in after.items() for lab, n in labels.items()]
        lines += ["", *_table(["source", "label", "images kept"], rows)]
    counts = (split.get("counts") or {}).get("dataset_1") or {}
    if counts:
        labels = sorted({lab for per in counts.values() for lab in per})
        rows = [
            [
                lab,
                *(str(counts.get(sp, {}).get(lab, 0)) for sp in ("train", "val", "test")),
                str(PAPER_COUNTS.get(lab, "")),
            ]
            for lab in labels
        ]
        lines += ["", "Dataset_1 (patient-grouped split):", ""]
        lines += _table(["label", "train", "val", "test", "paper total"], rows)
    for ds, warns in (split.get("confounds") or {}).items():
        for w in warns:
            lines.append(f"\n> Confound ({ds}): {w}")
    return lines


def _results_lines(metrics: Mapping[str, Any], mcnemar: list[dict[str, Any]]) -> list[str]:
    """The paper's numbers beside ours, and McNemar's tests."""
    lines: list[str] = []
    lines += ["", "## Results on the test split of Dataset_1 (paper beside ours)", ""]
    rows = []
    for key in sorted(metrics):
        m = metrics[key]
        paper = PAPER.get(key, {})
        rows.append(
            [
                key,
                m.get("dataset", ""),
                str(m.get("n_test", "")),
                f"{paper['accuracy']:.2f}" if paper else "-",
                interval_text(metric_ci(m, "accuracy")),
                f"{paper['f1_macro']:.2f}" if paper else "-",
                interval_text(metric_ci(m, "f1_macro")),
                interval_text(metric_ci(m, "roc_auc_macro"), 1, 3),
                f"{m.get('ece', 0):.3f}" if m.get("ece") is not None else "n/a",
                f"{(m.get('latency') or {}).get('batch1_mean_ms', m.get('latency_ms_per_image', 0)):.1f}",
            ]
        )
    lines += _table(
        [
            "model",
            "dataset",
            "n test",
            "paper accuracy %",
            "accuracy % [95% CI]",
            "paper F1 %",
            "macro F1 % [95% CI]",
            "ROC AUC [95% CI]",
            "ECE",
            "ms/image (batch 1)",
        ],
        rows,
    )
    lines += [
        "",
        f"The paper reports {PAPER_LATENCY_MS[0]}-{PAPER_LATENCY_MS[1]} ms per image on an NVIDIA "
        "K80; model_0 is tested on Dataset_0 (normal / bacterial / viral), which the paper does "
        "not report.",
    ]
    if mcnemar:
        lines += ["", "McNemar's test between models tested on the same images:", ""]
        lines += _table(
            ["pair", "dataset", "a right, b wrong", "a wrong, b right", "p-value", "test"],
            [
                [
                    f"{p['a']} vs {p['b']}",
                    p.get("dataset", ""),
                    str(p["n_a_right_b_wrong"]),
                    str(p["n_a_wrong_b_right"]),
                    "n/a" if p.get("p_value") is None else f"{p['p_value']:.3g}",
                    p.get("method", ""),
                ]
                for p in mcnemar
            ],
        )
    return lines


def build_report(
    outputs: RunOutputs,
    params: Any,
    out_dir: str | Path,
    *,
    hardware: Mapping[str, Any] | None = None,
    elapsed: str = "",
    notes: tuple[str, ...] = (),
    patient_images: bool = True,
    commit: str = "",
    rendered_at: str = "",
) -> tuple[Path, Path]:
    """Write ``reproduction.md`` (+ ``reproduction_files/``) and ``reproduction.html``.

    Args:
        outputs: The run's step outputs.
        params: The run's resolved :class:`cxrflow.config.Params`.
        out_dir: Where to write.
        hardware: The evaluation hardware (default: what evaluate recorded).
        elapsed: Wall time of the run, as text.
        notes: Sentences about how this run was made, listed under "About this run".
        patient_images: Include figures that show the patients' X-rays (Grad-CAM overlays, the
            mask picture). Off for a report that goes into a repository that must not store
            the images: the figures stay in MLflow and in the run's outputs.
        commit: The git commit the run's code was at (its MLflow source tag), if known.
        rendered_at: The commit of the code writing this report, when it is another one (the
            numbers are still the run's; only their layout is newer).

    Returns:
        The Markdown and HTML paths.
    """
    from cxrflow.config import params_hash
    from cxrflow.htmlpack import render_page

    out = Path(out_dir)
    files = out / "reproduction_files"
    files.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = _read(Evaluation, outputs.evaluation) or {}
    mcnemar: list[dict[str, Any]] = _load(outputs.evaluation, "mcnemar.json") or []
    audit: dict[str, Any] = _read(AuditReport, outputs.audit) or {}
    registered = _read(Registration, outputs.registered)
    ingest = _load(outputs.dataset, "ingest_report.json") or {}
    provenance = _read(Provenance, outputs.dataset) or {}
    split = _load(outputs.splits, "split_report.json") or {}
    any_metrics: Mapping[str, Any] = next(iter(metrics.values()), {})
    hw = dict(hardware or any_metrics.get("hardware") or {})

    def figure(rel: str, caption: str) -> str:
        src = outputs.evaluation / rel
        if not src.is_file() or (not patient_images and src.name.startswith("gradcam_")):
            return ""
        shutil.copyfile(src, files / src.name)
        return f"![{caption}](reproduction_files/{src.name})"

    own_epochs = ", ".join(
        f"{k} {spec.epochs}" for k, spec in params.models.items() if spec.epochs is not None
    )
    lines = [
        "# Reproduction report: Katsamenis et al. (2020) with cxrflow",
        "",
        *verdict_paragraph(metrics, audit, registered),
        "",
        "## Headline",
        "",
        *headline_table(metrics, audit, params),
        "",
        "## This run",
        "",
        f"- One run of commit `{commit[:12] or '?'}`: every number in this report comes "
        "from its outputs"
        + (
            f" (laid out by `cxrflow report` at commit `{rendered_at[:12]}`)."
            if rendered_at and rendered_at[:12] != commit[:12]
            else "."
        ),
        f"- Data version: `{provenance.get('data_version', '?')}`, manifest hash "
        f"`{str(provenance.get('manifest_hash', '?'))[:16]}`, origin "
        f"**{provenance.get('origin', '?')}**",
        f"- Profile `{params.profile}`, params hash `{params_hash(params)}`; image size "
        f"{params.train.image_size} px, batch {params.train.batch_size}, up to "
        f"{params.train.epochs} epochs, early stopping patience {params.train.patience}, "
        f"plateau patience {params.train.reduce_lr_patience}, Dataset_0 cap "
        f"{params.split.dataset_0_max_per_class or 'none'} per class"
        + (f"; a model's own epoch cap: {own_epochs}" if own_epochs else ""),
        f"- Hardware: {hw.get('cpu_model', '?')} ({hw.get('cpu_count', '?')} cores), "
        f"TensorFlow {hw.get('tensorflow', '?')}, GPUs: {hw.get('gpus') or 'none'}"
        + (f"; run time {elapsed}" if elapsed else ""),
        f"- Uncertainty: {int(100 * params.evaluate.confidence)} % percentile intervals from "
        f"{params.evaluate.bootstrap_samples} bootstrap resamples of **patients** (not images).",
        "",
        "## Data",
        "",
    ]
    lines += _data_lines(ingest, split)
    lines += _results_lines(metrics, mcnemar)
    lines += ["", *resnet_section(metrics, mcnemar, params)]
    lines += ["## The shortcut audit", ""]
    if audit:
        lines += _audit_rows(audit)
        mask = next(iter(sorted(outputs.audit.glob("*.png"))), None) if outputs.audit else None
        if mask is not None and patient_images:
            shutil.copyfile(mask, files / mask.name)
            lines += ["", f"![the lung-field mask](reproduction_files/{mask.name})"]
    else:
        lines.append("No audit output was found for this run.")
    lines += ["", *variant_section(metrics, audit, split, params)]
    lines += ["", *external_section(metrics)]
    if registered:
        lines += [
            "",
            "## Promotion",
            "",
            f"{registered['model_key']} was registered as **{registered['role']}** "
            f"(models:/{registered['model_name']}@{registered['alias']}, version "
            f"{registered['version']}): {registered['reason']}",
        ]
    lines += ["", "## Figures", ""]
    if not patient_images:
        lines += [
            "Grad-CAM overlays and the mask picture show patients' X-rays, which this copy of "
            "the report leaves out (the images may not be stored here); they are in the run's "
            "outputs (`evaluation/plots/gradcam_<model>.png`) and in MLflow, and "
            "`bash docs/reproduce.sh` regenerates them.",
            "",
        ]
    for key in sorted(metrics):
        for rel in metrics[key].get("plots", []):
            fig = figure(rel, f"{key}: {Path(rel).stem}")
            if fig:
                lines += [f"**{key}: {Path(rel).stem.split('_')[0]}**", "", fig, ""]
    covid = (
        ((ingest.get("stages") or {}).get("after_dedupe") or {}).get("cohen", {}).get("covid", "?")
    )
    short = ((split.get("shortfalls") or {}).get("dataset_1") or {}).get("covid", "?")
    lines += ["## What differs from the paper", ""]
    lines += [f"- {d.format(covid=covid, short=short)}" for d in DIFFERENCES]
    if notes:
        lines += ["", "## About this run", ""] + [f"- {n}" for n in notes]
    lines += [
        "",
        "## Regenerate",
        "",
        "```bash",
        "bash docs/reproduce.sh    # the real-data pipeline run, then `cxrflow report`",
        "```",
        "",
    ]
    text = "\n".join(lines)
    md = out / "reproduction.md"
    md.write_text(text)
    html_path = out / "reproduction.html"
    # the same document, rendered and with its figures inlined (one path for every page)
    html_path.write_text(render_page(text, title="cxrflow reproduction", base=out))
    return md, html_path
