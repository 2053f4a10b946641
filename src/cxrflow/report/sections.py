"""The report's reading of one run: the verdict first, the headline table, the ImageNet-free
ResNet-50, the mixed-controls variant and external sources.

Each function takes the run's outputs as plain data (``metrics.json``, ``audit.json``,
``split_report.json``, ``mcnemar.json``, the resolved params) and returns Markdown lines;
every number it writes comes from those files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cxrflow.config import MIXED_DATASET
from cxrflow.tables import format_table, interval_text

PAPER_ACCURACY = (92.32, 97.66)
"""The paper's test accuracies on Dataset_1, lowest and highest (Model_1, Model_3), in %."""
_ARCH = {"small_cnn": "small CNN", "resnet50": "ResNet-50"}


def metric_ci(m: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``{"value", "ci_low", "ci_high"}`` of a test metric of ``metrics.json``."""
    ci = m.get(f"{name}_ci") or {}
    return {"value": m.get(name), "ci_low": ci.get("ci_low"), "ci_high": ci.get("ci_high")}


def describe_model(params: Any, key: str) -> str:
    """``ResNet-50 from model_4`` / ``small CNN from scratch``: what a model is, in words."""
    spec = params.models.get(key) if params is not None else None
    if spec is None:
        return ""
    arch = _ARCH.get(spec.architecture, spec.architecture)
    if spec.init == "imagenet":
        start = "from ImageNet" if spec.weights_path else "from random weights (no ImageNet file)"
    elif spec.init == "scratch":
        start = "from scratch"
    else:
        start = f"from {spec.init}"
    return f"{arch} {start}"


def _rate(audit_entry: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    controls = audit_entry.get("controls") or {}
    return dict(controls.get("covid_rate") or {}), int(controls.get("n") or 0)


def verdict_paragraph(
    metrics: Mapping[str, Any],
    audit: Mapping[str, Any],
    registered: Mapping[str, Any] | None,
) -> list[str]:
    """The report's first paragraph: what the audit says, and what that means for a reader of
    the paper."""
    if not audit:
        return [
            "**Verdict: not audited.** This run has no shortcut audit, so its accuracies say "
            "nothing about whether the models look at the lungs or at who the patient is."
        ]
    failed = [k for k, v in audit.items() if not v.get("passed")]
    passed = [k for k, v in audit.items() if v.get("passed")]
    paper_failed = [k for k in failed if metrics.get(k, {}).get("dataset") == "dataset_1"]
    rates = [_rate(audit[k]) for k in failed]
    values = [float(r["value"]) for r, _ in rates if r.get("value") is not None]
    accs = [
        100 * float(metrics[k]["accuracy"])
        for k in paper_failed
        if metrics.get(k, {}).get("accuracy") is not None
    ]
    text = []
    if failed:
        span = (
            f"{100 * min(values):.0f}-{100 * max(values):.0f} %"
            if values and min(values) != max(values)
            else (f"{100 * values[0]:.0f} %" if values else "an unknown share")
        )
        n = max((n for _, n in rates), default=0)
        text.append(
            f"**Verdict: the shortcut audit failed {len(failed)} of {len(audit)} candidates** "
            f"({', '.join(failed)}): they call {span} of the adult non-COVID chest X-rays of "
            f"the control set COVID-19 (up to n = {n} images)."
        )
    if paper_failed and accs:
        text.append(
            f"Every model trained on the paper's Dataset_1 is among them, although their test "
            f"accuracies ({min(accs):.1f}-{max(accs):.1f} %; the paper: "
            f"{PAPER_ACCURACY[0]}-{PAPER_ACCURACY[1]} %) look like the paper's. That test split "
            "has the training data's shortcut: every COVID-19 image is an adult's and every "
            "other image a child's, so a model scores this high by telling adults from "
            "children. For a reader of the paper: its table does not show that these models "
            "detect COVID-19, and on adults without COVID-19 they would mostly say COVID-19."
        )
    if passed:
        text.append(
            f"Passed: {', '.join(passed)} (see the audit below for what passing can and cannot "
            "show with this few controls)."
        )
    if registered:
        reason = str(registered.get("reason") or "").rstrip(".")
        text.append(
            f"The register step made {registered.get('model_key')} the "
            f"**{registered.get('role')}**: {reason}."
        )
    return [" ".join(text)]


def headline_table(metrics: Mapping[str, Any], audit: Mapping[str, Any], params: Any) -> list[str]:
    """Internal accuracy with its interval, the audit verdict and external results, per
    model."""
    sources = sorted({s for m in metrics.values() for s in (m.get("external") or {})})
    rows = []
    for key in sorted(metrics):
        m, a = metrics[key], audit.get(key)
        verdict = "not a candidate" if a is None else ("passed" if a.get("passed") else "FAILED")
        rate, n = _rate(a or {})
        rows.append(
            [
                key,
                describe_model(params, key),
                m.get("dataset", ""),
                interval_text(metric_ci(m, "accuracy")),
                interval_text(metric_ci(m, "f1_macro")),
                f"**{verdict}**" if verdict == "FAILED" else verdict,
                f"{interval_text(rate)} (n={n})" if a is not None else "-",
                *(
                    interval_text((m.get("external") or {}).get(s, {}).get("accuracy_ci"))
                    for s in sources
                ),
            ]
        )
    header = [
        "model", "what", "trained on", "test accuracy % [95% CI]", "test macro F1 % [95% CI]",
        "audit", "controls called COVID-19 % [95% CI]",
        *(f"external {s}: accuracy % [95% CI]" for s in sources),
    ]  # fmt: skip
    lines = format_table(header, rows).splitlines()
    if not sources:
        lines += ["", "No external source (another site's images) was configured for this run."]
    return lines


def external_section(metrics: Mapping[str, Any]) -> list[str]:
    """Every model on every external source, beside its test split (empty without one)."""
    rows = []
    for key in sorted(metrics):
        m = metrics[key]
        for source, fig in sorted((m.get("external") or {}).items()):
            skipped = ", ".join(f"{n} {lab}" for lab, n in (fig.get("skipped") or {}).items())
            rows.append(
                [
                    key,
                    source,
                    f"{fig.get('n', 0)} ({fig.get('n_patients', 0)})",
                    interval_text(metric_ci(m, "accuracy")),
                    interval_text(fig.get("accuracy_ci")),
                    interval_text(metric_ci(m, "f1_macro")),
                    interval_text(fig.get("f1_macro_ci")),
                    interval_text(fig.get("non_covid_called_covid")),
                    skipped or "-",
                ]
            )
    if not rows:
        return []
    header = [
        "model", "source", "n (patients)", "accuracy test", "accuracy external",
        "macro F1 test", "macro F1 external", "non-COVID called COVID-19 (external)",
        "not scored",
    ]  # fmt: skip
    return [
        "## Internal and external",
        "",
        "External sources were never trained on and never split; every model is scored on "
        "each one's images labelled with one of its classes (%, 95 % patient-bootstrap "
        "intervals).",
        "",
        *format_table(header, rows).splitlines(),
        "",
    ]


def _added_controls(split: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Per split and label, the images Dataset_1_mixed has beyond Dataset_1."""
    counts = split.get("counts") or {}
    base, mixed = counts.get("dataset_1") or {}, counts.get(MIXED_DATASET) or {}
    return {
        sp: {
            lab: int(n) - int((base.get(sp) or {}).get(lab, 0))
            for lab, n in per.items()
            if int(n) - int((base.get(sp) or {}).get(lab, 0))
        }
        for sp, per in mixed.items()
    }


def variant_section(
    metrics: Mapping[str, Any], audit: Mapping[str, Any], split: Mapping[str, Any], params: Any
) -> list[str]:
    """Dataset_1_mixed beside the paper's Dataset_1, and what so few adult controls can and
    cannot show (empty when no model trained on the variant)."""
    variant = [k for k in sorted(metrics) if metrics[k].get("dataset") == MIXED_DATASET]
    if not variant:
        return []
    added = _added_controls(split)
    total = sum(int(n) for n in (split.get("controls") or {}).values())
    joined = {sp: sum(per.values()) for sp, per in added.items()}
    share = getattr(getattr(params, "split", None), "mixed_control_share", None)
    lines = [
        f"## Does mixing adults into the controls help? ({MIXED_DATASET})",
        "",
        f"Of the {total} adult non-COVID frontal X-rays in the control set, "
        + (f"the patients of a share of {share:g} " if share is not None else "some patients ")
        + "(normal or bacterial findings only: viral has no class in Dataset_1) joined "
        f"Dataset_1's normal and bacterial classes: {joined.get('train', 0)} train, "
        f"{joined.get('val', 0)} validation and {joined.get('test', 0)} test images; the others "
        "stay audit controls. Dataset_1's own images and splits are unchanged.",
        "",
    ]
    rows = []
    for key in sorted(k for k in audit if k in metrics):
        rate, n = _rate(audit[key])
        probe = (audit[key].get("source_probe") or {}).get("auc")
        rows.append(
            [
                key,
                metrics[key].get("dataset", ""),
                describe_model(params, key),
                interval_text(metric_ci(metrics[key], "accuracy")),
                "passed" if audit[key].get("passed") else "**FAILED**",
                f"{interval_text(rate)} (n={n})",
                interval_text(probe, 1, 3),
            ]
        )
    header = [
        "candidate", "trained on", "what", "test accuracy % [95% CI]", "audit",
        "controls called COVID-19 % [95% CI]", "source-probe AUC [95% CI]",
    ]  # fmt: skip
    lines += format_table(header, rows).splitlines()
    lines += ["", *_what_it_can_show(metrics, audit, variant, joined, total, params)]
    return lines


def _twin(metrics: Mapping[str, Any], key: str, params: Any) -> str | None:
    """The model trained on Dataset_1 by the same recipe (architecture and start) as ``key``."""
    what = describe_model(params, key)
    return next(
        (
            k
            for k in sorted(metrics)
            if metrics[k].get("dataset") == "dataset_1" and describe_model(params, k) == what
        ),
        None,
    )


def _what_it_can_show(
    metrics: Mapping[str, Any],
    audit: Mapping[str, Any],
    variant: Sequence[str],
    joined: Mapping[str, int],
    total: int,
    params: Any,
) -> list[str]:
    """What a few dozen adult non-COVID images can and cannot show, with this run's numbers."""
    out = []
    for key in variant:
        if key not in audit:
            continue
        rate, n = _rate(audit[key])
        if rate.get("value") is None:
            continue
        width = 100 * (float(rate.get("ci_high") or 0) - float(rate.get("ci_low") or 0))
        twin = _twin(metrics, key, params)
        if twin is not None and twin in audit:
            twin_rate, twin_n = _rate(audit[twin])
            moved = "passed" if audit[key].get("passed") else "still failed"
            out.append(
                f"- Result: {key} ({twin}'s recipe on {MIXED_DATASET}) calls {interval_text(rate)} % of "
                f"its {n} controls COVID-19, {twin} {interval_text(twin_rate)} % of {twin_n}: with "
                f"{joined.get('train', 0)} adult non-COVID training images the audit "
                f"{moved}."
            )
        out.append(
            f"- {key}: {n} controls were left to audit it, and its rate's 95 % interval is "
            f"{width:.0f} points wide."
        )
    out += [
        f"- What {total} images can show: a gross shortcut. A model that calls most adult "
        "non-COVID films COVID-19 is caught even with a few dozen controls, because the "
        "interval stays far above the 25 % threshold.",
        f"- What they cannot show: that the shortcut is gone. {joined.get('train', 0)} adult "
        "training images beside about a thousand children's films barely change what "
        "separates the classes, and the controls left for the audit are too few for an "
        "interval narrow enough to certify a rate under the threshold; nor do they say "
        "anything about adults from another hospital (an external source would).",
    ]
    return out


def resnet_section(
    metrics: Mapping[str, Any], mcnemar: Sequence[Mapping[str, Any]], params: Any
) -> list[str]:
    """The ResNet-50s side by side: random initialisation against pretraining on Dataset_0
    in the pipeline (empty unless both are in the run)."""
    models = getattr(params, "models", {}) or {}
    resnets = [
        k for k in sorted(metrics) if getattr(models.get(k), "architecture", "") == "resnet50"
    ]
    pre = [k for k in resnets if getattr(models.get(k), "init", "") in resnets]
    if not pre:
        return []
    lines = ["## ResNet-50 without ImageNet", ""]
    for key in pre:
        base = models[key].init
        rivals = [
            k for k in resnets if k not in (key, base) and metrics[k].get("dataset") == "dataset_1"
        ]
        lines.append(
            f"- {key} is a ResNet-50 pretrained in this pipeline on Dataset_0 ({base}: normal / "
            f"bacterial / viral children's films) and then fine-tuned on Dataset_1 as the paper "
            f"fine-tunes its Model_3 from ImageNet (a new head first, then the last "
            f"{models[key].unfreeze_last} layers)."
        )
        base_rivals = [
            k
            for k in sorted(metrics)
            if k != base and metrics[k].get("dataset") == metrics.get(base, {}).get("dataset")
        ]
        lines += [f"- {_versus(metrics, mcnemar, params, base, k)}" for k in base_rivals]
        lines += [f"- {_versus(metrics, mcnemar, params, key, k)}" for k in rivals]
    lines.append("")
    return lines


def _versus(
    metrics: Mapping[str, Any], mcnemar: Sequence[Mapping[str, Any]], params: Any, a: str, b: str
) -> str:
    """``a`` against ``b`` on the same test images: accuracies and McNemar's p."""
    pair = next((p for p in mcnemar if {p.get("a"), p.get("b")} == {a, b}), None)
    p_text = (
        ""
        if pair is None or pair.get("p_value") is None
        else (f", McNemar p = {float(pair['p_value']):.3g}")
    )
    return (
        f"On {metrics[a].get('dataset')}: {a} {interval_text(metric_ci(metrics[a], 'accuracy'))} % "
        f"against {b} ({describe_model(params, b)}) {interval_text(metric_ci(metrics[b], 'accuracy'))} %"
        f"{p_text}."
    )
