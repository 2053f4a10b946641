"""Same-source controls from phantom to audit inputs: kept apart, validated, never trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrflow.config import DATASETS, IngestParams, SplitParams, SynthParams, ValidateParams
from cxrflow.data.ingest import IngestReport, ingest
from cxrflow.data.manifest import EXCLUDED_FILE, read_manifest
from cxrflow.data.sources import count_records, get_source
from cxrflow.data.split import select_controls, split_manifest
from cxrflow.data.synthetic import PhantomSummary, generate_phantom

# 8 COVID-19 patients x 0.5: four other-finding patients, one of each phantom finding
SYNTH = SynthParams(
    patients_per_class=8, images_per_patient_max=2, min_side=48, max_side=64,
    control_fraction=0.5, seed=5,
)  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[PhantomSummary, Path, IngestReport]:
    tmp = tmp_path_factory.mktemp("controls")
    phantom = generate_phantom(tmp / "raw", SYNTH)
    rep = ingest(tmp / "ds", IngestParams(workers=1), phantom.sources, origin="phantom")
    return phantom, tmp / "ds", rep


def test_phantom_controls_are_kept_apart_and_pneumocystis_excluded(
    dataset: tuple[PhantomSummary, Path, IngestReport],
) -> None:
    _, ds, rep = dataset
    assert set(rep.controls_by_finding["cohen"]) == {"Streptococcus", "No Finding", "SARS"}
    after = rep.stages["after_dedupe"]["cohen"]
    assert {k for k in after if k.startswith("control:")} == {
        "control:bacterial",
        "control:normal",
        "control:viral",
    }
    assert sum(v for k, v in after.items() if k.startswith("control:")) == sum(
        rep.controls_by_finding["cohen"].values()
    )
    excluded = pd.read_csv(ds / EXCLUDED_FILE, dtype=str, keep_default_na=False)
    not_covid = excluded[excluded["reason"] == "not_covid_finding"]
    assert set(not_covid["detail"]) == {"finding='Pneumocystis'"}  # no control label
    assert rep.considered == (
        rep.kept + rep.quarantined + rep.excluded_by_filter + rep.duplicates_collapsed
    )
    m = read_manifest(ds)
    assert set(m["cohort"]) == {"study", "control"}
    assert (m["cohort"] == "control").sum() == sum(rep.controls_by_finding["cohen"].values())
    assert set(m.loc[m["cohort"] == "control", "label"]) == {"bacterial", "normal", "viral"}


def test_listing_counts_agree_with_discovery_and_leave_controls_out(
    dataset: tuple[PhantomSummary, Path, IngestReport],
) -> None:
    """The data-version listing counts study rows by discovery's rules: controls (never
    training data) are not in it, so a version's class counts are what a dataset can take."""
    phantom, _, _ = dataset
    root, params = phantom.cohen_dir, IngestParams()
    source = get_source("cohen")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    counts = source.count_labels(files, lambda rel: (root / rel).read_bytes(), params)
    assert counts == count_records(source.discover(root, params), source.labels)
    assert counts == {"covid": phantom.counts["covid"]}


def test_validation_accepts_controls(dataset: tuple[PhantomSummary, Path, IngestReport]) -> None:
    from cxrflow.data.validate import validate_manifest

    _, ds, _ = dataset
    summary = validate_manifest(read_manifest(ds), ValidateParams(min_per_class=5))
    assert summary.success, summary.failed


def test_split_never_takes_a_control_and_the_audit_gets_them_all(
    dataset: tuple[PhantomSummary, Path, IngestReport],
) -> None:
    from cxrflow.audit import control_arrays

    _, ds, _ = dataset
    m = read_manifest(ds)
    everything = {"normal": 10_000, "bacterial": 10_000, "covid": 10_000}
    tables, report = split_manifest(m, SplitParams(dataset_1_counts=everything))
    control_ids = set(m.loc[m["cohort"] == "control", "image_id"])
    assert control_ids
    for name, table in tables.items():
        assert not control_ids & set(table["image_id"]), name
        assert set(table["image_id"]) <= set(m.loc[m["cohort"] == "study", "image_id"])
    # Dataset_1 takes every study image of its classes: nothing else is missing
    d1 = tables["dataset_1"]
    study = m[m["cohort"] == "study"]
    assert len(d1) == study["label"].isin(DATASETS["dataset_1"]).sum()
    assert sum(report.controls.values()) == len(control_ids)

    controls = select_controls(m)
    arrays = control_arrays(ds, m, 32)
    assert arrays["x_controls"].shape == (len(control_ids), 32, 32, 1)
    assert arrays["x_controls"].dtype == np.uint8 and arrays["x_controls"].max() > 0
    assert arrays["findings_controls"] == controls["finding"].tolist()
    assert arrays["labels_controls"] == controls["label"].tolist()
    assert set(arrays["sources_controls"]) == {"cohen"}
    assert set(arrays["groups_controls"]) <= set(m["patient_id"])
    # a control patient in the model's training split is left out
    d1 = d1.copy()
    d1.loc[d1.index[0], ["patient_id", "split"]] = [arrays["groups_controls"][0], "train"]
    fewer = control_arrays(ds, m, 32, split_table=d1)
    n_seen = arrays["groups_controls"].count(arrays["groups_controls"][0])
    assert len(fewer["x_controls"]) == len(control_ids) - n_seen
