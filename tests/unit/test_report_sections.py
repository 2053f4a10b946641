"""The report's reading of a run: the verdict first, the headline table, the ImageNet-free
ResNet-50, the mixed-controls variant and external sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrflow.config import load_params
from cxrflow.report.sections import (
    describe_model,
    external_section,
    headline_table,
    resnet_section,
    variant_section,
    verdict_paragraph,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = load_params(ROOT / "params.yaml", "sample")


def _m(dataset: str, acc: float, **extra: Any) -> dict[str, Any]:
    ci = {"ci_low": acc - 0.03, "ci_high": acc + 0.02}
    return {"dataset": dataset, "accuracy": acc, "accuracy_ci": ci, "f1_macro": acc,
            "f1_macro_ci": ci, **extra}  # fmt: skip


def _audit(passed: bool, rate: float, n: int, width: float = 0.2) -> dict[str, Any]:
    return {
        "passed": passed,
        "controls": {
            "n": n,
            "covid_rate": {"value": rate, "ci_low": rate - width / 2, "ci_high": rate + width / 2},
        },
        "source_probe": {"auc": {"value": 0.99, "ci_low": 0.97, "ci_high": 1.0}},
    }


EXTERNAL = {
    "site_b": {
        "n": 30,
        "n_patients": 12,
        "accuracy": 0.5,
        "accuracy_ci": {"value": 0.5, "ci_low": 0.35, "ci_high": 0.66},
        "f1_macro_ci": {"value": 0.4, "ci_low": 0.3, "ci_high": 0.55},
        "non_covid_called_covid": {"value": 0.8, "ci_low": 0.6, "ci_high": 0.95, "n": 20},
        "skipped": {"viral": 4},
    }
}
METRICS = {
    "model_0": _m("dataset_0", 0.76),
    "model_1": _m("dataset_1", 0.941, external=EXTERNAL),
    "model_3": _m("dataset_1", 0.931),
    "model_4": _m("dataset_0", 0.70),
    "model_5": _m("dataset_1", 0.95),
    "model_6": _m("dataset_1_mixed", 0.93),
}
AUDIT = {
    "model_1": _audit(False, 0.927, 41),
    "model_3": _audit(False, 0.90, 41),
    "model_5": _audit(False, 0.85, 41),
    "model_6": _audit(True, 0.10, 20, width=0.3),
}
REGISTERED = {"model_key": "model_6", "role": "champion", "reason": "model_6 is the first"}


def test_the_first_paragraph_is_the_audits_verdict_and_what_it_means() -> None:
    (text,) = verdict_paragraph(METRICS, AUDIT, REGISTERED)
    assert text.startswith("**Verdict: the shortcut audit failed 3 of 4 candidates**")
    assert "(model_1, model_3, model_5)" in text and "85-93 %" in text
    assert "Every model trained on the paper's Dataset_1" in text
    assert "93.1-95.0 %" in text and "92.32-97.66 %" in text  # ours beside the paper's
    assert "Passed: model_6" in text and "model_6 the **champion**" in text
    (none,) = verdict_paragraph(METRICS, {}, None)
    assert none.startswith("**Verdict: not audited.**")


def test_the_headline_table_has_accuracy_audit_and_external_results() -> None:
    lines = headline_table(METRICS, AUDIT, SAMPLE)
    text = "\n".join(lines)
    assert "external site_b: accuracy % [95% CI]" in lines[0]
    row1 = next(line for line in lines if line.startswith("| model_1 "))
    assert "94.1 [91.1, 96.1]" in row1 and "**FAILED**" in row1
    assert "92.7 [82.7, 102.7] (n=41)" in row1 and "50.0 [35.0, 66.0]" in row1
    row0 = next(line for line in lines if line.startswith("| model_0 "))
    assert "not a candidate" in row0
    assert "No external source" not in text
    no_external = headline_table({"model_0": METRICS["model_0"]}, {}, SAMPLE)
    assert "No external source (another site's images) was configured" in no_external[-1]


def test_models_are_described_from_their_params() -> None:
    assert describe_model(SAMPLE, "model_5") == "ResNet-50 from model_4"
    assert describe_model(SAMPLE, "model_3") == "ResNet-50 from random weights (no ImageNet file)"
    assert describe_model(SAMPLE, "model_6") == "small CNN from scratch"
    assert describe_model(SAMPLE, "model_9") == ""


def test_external_results_beside_the_test_split() -> None:
    lines = external_section(METRICS)
    assert lines[0] == "## Internal and external"
    row = next(line for line in lines if line.startswith("| model_1 "))
    assert "30 (12)" in row and "50.0 [35.0, 66.0]" in row and "80.0 [60.0, 95.0]" in row
    assert "4 viral" in row
    assert external_section({"model_0": METRICS["model_0"]}) == []


def test_the_variant_beside_dataset_1_and_what_few_controls_can_show() -> None:
    split = {
        "counts": {
            "dataset_1": {"train": {"normal": 380, "bacterial": 349}, "test": {"normal": 109}},
            "dataset_1_mixed": {
                "train": {"normal": 384, "bacterial": 357},
                "test": {"normal": 112},
            },
        },
        "controls": {"cohen|normal|No Finding": 14, "cohen|bacterial|E.Coli": 33, "x|viral|y": 21},
    }
    lines = variant_section(METRICS, AUDIT, split, SAMPLE)
    text = "\n".join(lines)
    assert lines[0].startswith("## Does mixing adults into the controls help?")
    assert "Of the 68 adult non-COVID" in text and "a share of 0.5" in text
    assert "12 train, 0 validation and 3 test images" in text
    row6 = next(line for line in lines if line.startswith("| model_6 "))
    assert "dataset_1_mixed" in row6 and "passed" in row6 and "(n=20)" in row6
    assert "model_6: 20 controls were left to audit it" in text and "30 points wide" in text
    assert (
        "- Result: model_6 (model_1's recipe on dataset_1_mixed) calls 10.0 [-5.0, 25.0] % of "
        "its 20 controls COVID-19, model_1 92.7 [82.7, 102.7] % of 41: with 12 adult non-COVID "
        "training images the audit passed." in text
    )
    assert "What 68 images can show" in text and "cannot show" in text
    assert variant_section({"model_1": METRICS["model_1"]}, AUDIT, split, SAMPLE) == []


def test_the_imagenet_free_resnet50_beside_the_random_one() -> None:
    mcnemar = [{"a": "model_3", "b": "model_5", "p_value": 0.42}]
    text = "\n".join(resnet_section(METRICS, mcnemar, SAMPLE))
    assert text.startswith("## ResNet-50 without ImageNet")
    assert "model_5 is a ResNet-50 pretrained in this pipeline on Dataset_0 (model_4" in text
    assert "last 11 layers" in text
    assert (
        "- On dataset_1: model_5 95.0 [92.0, 97.0] % against model_3 (ResNet-50 from random "
        "weights (no ImageNet file)) 93.1 [90.1, 95.1] %, McNemar p = 0.42." in text
    )
    # the pretraining itself, beside the small CNN on the same Dataset_0 test images
    assert "- On dataset_0: model_4 70.0 [67.0, 72.0] % against model_0 (small CNN" in text
    paper = load_params(ROOT / "params.yaml")
    assert resnet_section(METRICS, mcnemar, paper) == []  # no pretrained ResNet-50 there
