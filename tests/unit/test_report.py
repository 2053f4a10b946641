"""The reproduction report: paper beside ours with CIs, McNemar, the audit, self-contained HTML."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from cxrflow.config import load_params
from cxrflow.report import PAPER, RunOutputs, build_report

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_report_from_run_outputs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ev, au, sp, ds, rg = (run / d for d in ("evaluation", "audit", "splits", "dataset", "reg"))
    (ev / "plots").mkdir(parents=True)
    Image.new("RGB", (20, 20), "red").save(ev / "plots" / "roc_model_1.png")
    ci = {"ci_low": 0.88, "ci_high": 0.95}
    _write(
        ev / "metrics.json",
        {
            "model_1": {
                "dataset": "dataset_1",
                "n_test": 290,
                "accuracy": 0.924,
                "accuracy_ci": ci,
                "f1_macro": 0.92,
                "f1_macro_ci": ci,
                "roc_auc_macro": 0.98,
                "roc_auc_macro_ci": {"ci_low": 0.97, "ci_high": 0.99},
                "ece": 0.03,
                "latency": {"batch1_mean_ms": 3.2},
                "hardware": {"cpu_model": "test cpu", "cpu_count": 2, "tensorflow": "2.21"},
                "plots": ["plots/roc_model_1.png"],
            }
        },
    )
    _write(
        ev / "mcnemar.json",
        [
            {
                "a": "model_1",
                "b": "model_2",
                "dataset": "dataset_1",
                "n_a_right_b_wrong": 3,
                "n_a_wrong_b_right": 9,
                "p_value": 0.146,
                "method": "exact",
            }
        ],
    )
    _write(
        au / "audit.json",
        {
            "model_1": {
                "passed": False,
                "reasons": ["controls: FAIL: 86.9% of 46 adult non-COVID controls"],
                "controls": {
                    "n": 46,
                    "covid_rate": {"value": 0.869, "ci_low": 0.8, "ci_high": 0.95},
                    "by_finding": {"No Finding": {"n": 14, "covid_rate": {"value": 0.71}}},
                },
                "source_probe": {"auc": {"value": 0.99, "ci_low": 0.98, "ci_high": 1.0}},
                "ablation": {
                    "chance": 1 / 3,
                    "masked": {"balanced_accuracy": {"value": 0.6}},
                    "unmasked": {"balanced_accuracy": {"value": 0.9}},
                },
            }
        },
    )
    _write(
        rg / "registered.json",
        {
            "model_key": "model_1",
            "role": "challenger",
            "reason": "no candidate passed the shortcut audit",
            "model_name": "m",
            "alias": "challenger",
            "version": 3,
        },
    )
    _write(
        ds / "provenance.json",
        {"data_version": "data-v1", "manifest_hash": "ab" * 32, "origin": "real"},
    )
    _write(
        ds / "ingest_report.json",
        {
            "considered": 10,
            "kept": 8,
            "quarantined": 1,
            "excluded_by_filter": 1,
            "duplicates_collapsed": 0,
            "stages": {"after_dedupe": {"cohen": {"covid": 394}}},
        },
    )
    _write(
        sp / "split_report.json",
        {
            "counts": {"dataset_1": {"test": {"covid": 79}}},
            "shortfalls": {"dataset_1": {"covid": 62}},
            "confounds": {},
        },
    )
    md, html = build_report(
        RunOutputs(ds, sp, ev, au, rg),
        load_params(ROOT / "params.yaml"),
        tmp_path / "out",
        commit="a" * 40,
        rendered_at="b" * 40,
    )
    text = md.read_text()
    # the verdict is the first paragraph; the run's commit and the layout's are both named
    assert text.split("\n")[2].startswith("**Verdict: the shortcut audit failed 1 of 1")
    assert "One run of commit `aaaaaaaaaaaa`" in text
    assert "laid out by `cxrflow report` at commit `bbbbbbbbbbbb`" in text
    assert f"{PAPER['model_1']['accuracy']:.2f}" in text  # the paper's number beside ours
    assert "92.4 [88.0, 95.0]" in text  # ours with its CI
    assert "0.146" in text and "model_1 vs model_2" in text  # McNemar
    assert "**FAILED**" in text and "86.9 [80.0, 95.0] (n=46)" in text
    assert "No Finding" in text
    assert "challenger" in text and "no candidate passed" in text
    assert "394 COVID-19" in text and "short by 62" in text
    assert (tmp_path / "out" / "reproduction_files" / "roc_model_1.png").is_file()
    page = html.read_text()
    assert "data:image/png;base64," in page and "reproduction_files/" not in page
    assert "<table>" in page
    assert '<td class="fail"><strong>FAILED</strong></td>' in page  # as in compare.html
