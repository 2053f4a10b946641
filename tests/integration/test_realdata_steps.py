"""ingest -> validate -> split on the real sample data (paper mode), as the pipeline runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cxrflow.config import params_from_dict

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not (DATA / "kermany").is_dir(), reason="../shared/data not present"),
]


@pytest.fixture(scope="module")
def steps(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from cxrflow.steps import run_ingest, run_split, run_validate

    tmp = tmp_path_factory.mktemp("real")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlruns.db'}")
    mp.setenv("CXRFLOW_ARTIFACT_ROOT", (tmp / "art").as_uri())
    params = params_from_dict(
        {
            "data": {
                "sources": {
                    "kermany": [str(DATA / "kermany")],
                    "cohen": [
                        str(DATA / "cohen-2020-06-22"),
                        str(DATA / "cohen-supplement-2020-08"),
                    ],
                }
            },
            "ingest": {"workers": 2},
        }
    )
    ing = run_ingest(params, tmp / "dataset", "realdata-test")
    val = run_validate(params, tmp / "dataset", tmp / "validate")
    spl = run_split(params, tmp / "dataset", tmp / "splits")
    yield {"tmp": tmp, "ingest": ing, "validate": val, "split": spl}
    mp.undo()


def test_ingest_counts_add_up_and_are_labelled_real(steps: dict) -> None:
    rep = steps["ingest"]["report"]
    assert rep["considered"] == (
        rep["kept"] + rep["quarantined"] + rep["excluded_by_filter"] + rep["duplicates_collapsed"]
    )
    assert steps["ingest"]["provenance"]["origin"] == "real"
    after = rep["stages"]["after_dedupe"]
    assert (
        after["kermany"]["normal"] + after["kermany"]["bacterial"] + after["kermany"]["viral"]
        > 5700
    )
    assert 380 <= after["cohen"]["covid"] <= 401
    assert rep["quarantine_reasons"] == {"missing_file": rep["quarantined"]}
    # Cohen's adult non-COVID frontal X-rays are kept as the audit's controls (both roots)
    assert {k: v for k, v in after["cohen"].items() if k.startswith("control:")} == {
        "control:bacterial": 33,
        "control:normal": 14,
        "control:viral": 21,
    }


def test_validation_gate_passes_on_real_data(steps: dict) -> None:
    assert steps["validate"]["success"] is True
    assert (steps["tmp"] / "validate" / "data_docs" / "index.html").is_file()


def test_paper_dataset_1_split_is_patient_safe_and_reports_traps(steps: dict) -> None:
    rep = steps["split"]["report"]
    # only ~394 COVID frontal X-rays exist in the sample: the shortfall is reported, not hidden
    assert rep["shortfalls"]["dataset_1"]["covid"] > 0
    assert "normal" not in rep["shortfalls"]["dataset_1"]
    assert any("source" in w for w in rep["confounds"]["dataset_1"])
    for name in ("dataset_0", "dataset_1"):
        t = pd.read_csv(steps["tmp"] / "splits" / f"{name}.csv", dtype=str)
        assert (t.groupby("patient_id")["split"].nunique() == 1).all()
        frac = (t["split"] == "test").mean()
        assert 0.17 < frac < 0.23, (name, frac)
    d1 = pd.read_csv(steps["tmp"] / "splits" / "dataset_1.csv", dtype=str)
    assert d1["label"].value_counts()["normal"] == 544
    assert d1["label"].value_counts()["bacterial"] == 500
    links = json.loads((steps["tmp"] / "dataset" / "ingest_report.json").read_text())
    assert links["patient_links"], "Cohen files one film under two patient ids"


def test_controls_never_enter_a_dataset(steps: dict) -> None:
    from cxrflow.data.manifest import read_manifest
    from cxrflow.data.split import select_controls

    m = read_manifest(steps["tmp"] / "dataset")
    controls = select_controls(m)
    assert len(controls) == 33 + 14 + 21 and set(controls["source"]) == {"cohen"}
    for name in ("dataset_0", "dataset_1"):
        t = pd.read_csv(steps["tmp"] / "splits" / f"{name}.csv", dtype=str)
        assert not set(t["image_id"]) & set(controls["image_id"]), name
        assert set(t["cohort"]) == {"study"}, name
    report = steps["split"]["report"]
    assert sum(report["controls"].values()) == len(controls)
    assert report["controls"]["cohen|normal|No Finding"] == 14
