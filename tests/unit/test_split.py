"""Undersampling and patient-grouped splits."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from cxrflow.config import SplitParams
from cxrflow.data.manifest import MANIFEST_COLUMNS
from cxrflow.data.split import (
    grouped_split,
    select_controls,
    select_dataset_rows,
    split_manifest,
    undersample,
)


def make_manifest(
    per_class: dict[tuple[str, str], int], images_per_patient: int = 3, cohort: str = "study"
) -> pd.DataFrame:
    rows = []
    for (source, label), n in per_class.items():
        for i in range(n):
            pid = f"{source}:{label}-{cohort}-p{i // images_per_patient}"
            sha = hashlib.sha256(f"{source}{label}{cohort}{i}".encode()).hexdigest()
            rows.append(
                {
                    "image_id": sha[:16],
                    "path": f"images/{sha}.png",
                    "label": label,
                    "source": source,
                    "origin": "phantom",
                    "patient_id": pid,
                    "view": "",
                    "age_group": "pediatric" if source == "kermany" else "adult",
                    "width": 100,
                    "height": 100,
                    "mode": "L",
                    "original_mode": "L",
                    "sha256": sha,
                    "phash": "0" * 16,
                    "original_path": f"{label}/{i}.png",
                    "source_split": "",
                    "cohort": cohort,
                    "finding": {"normal": "No Finding", "covid": "COVID-19"}.get(label, label)
                    if source == "cohen"
                    else "",
                }
            )
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


@pytest.fixture
def manifest() -> pd.DataFrame:
    return make_manifest(
        {
            ("kermany", "normal"): 120,
            ("kermany", "bacterial"): 150,
            ("kermany", "viral"): 90,
            ("cohen", "covid"): 80,
        }
    )


def test_no_patient_in_two_splits_and_fractions(manifest: pd.DataFrame) -> None:
    params = SplitParams(dataset_1_counts={"normal": 60, "bacterial": 55, "covid": 50})
    tables, report = split_manifest(manifest, params)
    for name, t in tables.items():
        assert (t.groupby("patient_id")["split"].nunique() == 1).all(), name
        frac_test = (t["split"] == "test").mean()
        assert 0.15 <= frac_test <= 0.3, (name, frac_test)
        train_val = t[t["split"] != "test"]
        frac_val = (train_val["split"] == "val").mean()
        assert 0.07 <= frac_val <= 0.2, (name, frac_val)
        assert set(t["split"]) == {"train", "val", "test"}
    d1 = tables["dataset_1"]
    assert d1["label"].value_counts().to_dict() == {"normal": 60, "bacterial": 55, "covid": 50}
    assert set(tables["dataset_0"]["label"]) == {"normal", "bacterial", "viral"}
    assert set(tables["dataset_0"]["source"]) == {"kermany"}
    assert report.shortfalls["dataset_1"] == {}


def test_split_is_deterministic(manifest: pd.DataFrame) -> None:
    a, _ = split_manifest(manifest, SplitParams())
    b, _ = split_manifest(manifest.sample(frac=1.0, random_state=3), SplitParams())
    for k in a:
        pd.testing.assert_frame_equal(a[k].reset_index(drop=True), b[k].reset_index(drop=True))


def test_shortfall_is_reported_not_hidden(manifest: pd.DataFrame) -> None:
    _, report = split_manifest(manifest, SplitParams())  # paper counts 544/500/456
    assert report.shortfalls["dataset_1"] == {"normal": 424, "bacterial": 350, "covid": 376}


def test_source_confound_is_exposed(manifest: pd.DataFrame) -> None:
    _, report = split_manifest(manifest, SplitParams())
    text = " ".join(report.confounds["dataset_1"])
    assert "source" in text and "shortcut" in text
    assert "age_group" in text


def test_undersample_caps_and_seeds(manifest: pd.DataFrame) -> None:
    rows = manifest[manifest["source"] == "kermany"]
    a, short = undersample(rows, {"normal": 10, "bacterial": None, "viral": 5}, seed=1)
    assert a["label"].value_counts().to_dict() == {"bacterial": 150, "normal": 10, "viral": 5}
    b, _ = undersample(rows, {"normal": 10, "bacterial": None, "viral": 5}, seed=1)
    c, _ = undersample(rows, {"normal": 10, "bacterial": None, "viral": 5}, seed=2)
    assert a["image_id"].tolist() == b["image_id"].tolist()
    assert a["image_id"].tolist() != c["image_id"].tolist()
    assert short == {}


def test_patient_with_two_labels_stays_together() -> None:
    m = make_manifest({("kermany", "bacterial"): 40, ("kermany", "viral"): 40})
    # person k has both a bacterial and a viral image (as in Kermany's personN)
    m["patient_id"] = [f"kermany:person{i % 40}" for i in range(len(m))]
    t = grouped_split(m, 0.2, 0.125, seed=0)
    assert (t.groupby("patient_id")["split"].nunique() == 1).all()


def test_linked_patients_stay_in_one_split() -> None:
    """One film under two patient ids (found by ingest) joins those patients."""
    from cxrflow.data.split import link_groups

    m = make_manifest({("cohen", "covid"): 60}, images_per_patient=1)
    pids = sorted(m["patient_id"].unique())
    links = [(pids[i], pids[i + 1]) for i in range(0, 40, 2)]  # 20 linked pairs
    for seed in range(5):
        t = grouped_split(m, 0.3, 0.2, seed=seed, links=links)
        split_of = dict(zip(t["patient_id"], t["split"], strict=True))
        assert all(split_of[a] == split_of[b] for a, b in links)
        assert set(t["patient_id"]) == set(pids)  # ids are not rewritten
    groups = link_groups(["a", "b", "c", "d"], [("b", "c"), ("c", "d")])
    assert groups == {"a": "a", "b": "b", "c": "b", "d": "b"}


def test_population_confound_is_exposed_where_ages_are_unknown() -> None:
    """Cohen rows often lack an age: age_group then mixes, the source's population does not."""
    m = make_manifest(
        {("kermany", "normal"): 60, ("kermany", "bacterial"): 60, ("cohen", "covid"): 60}
    )
    m.loc[m["source"] == "cohen", "age_group"] = ["adult", "unknown"] * 30
    counts = {"normal": 60, "bacterial": 60, "covid": 60}
    _, report = split_manifest(m, SplitParams(dataset_1_counts=counts))
    warnings = report.confounds["dataset_1"]
    assert any("single population" in w for w in warnings)
    assert not any("single age_group" in w for w in warnings)
    assert report.crosstabs["dataset_1.population"] == {
        "bacterial|pediatric": 60,
        "covid|adult": 60,
        "normal|pediatric": 60,
    }


def test_datasets_take_what_each_source_contributes() -> None:
    """Dataset_0 takes no Cohen row; Dataset_1 no viral; an unregistered source is named."""
    m = make_manifest({("kermany", "viral"): 30, ("cohen", "covid"): 30, ("kermany", "normal"): 30})
    tables, _ = split_manifest(m, SplitParams())
    assert set(tables["dataset_0"]["source"]) == {"kermany"}
    assert set(tables["dataset_1"]["label"]) == {"normal", "covid"}
    with pytest.raises(ValueError, match=r"unknown source 'nih'"):
        split_manifest(make_manifest({("nih", "normal"): 30}), SplitParams())


def with_controls(manifest: pd.DataFrame) -> pd.DataFrame:
    """``manifest`` plus control rows of labels every dataset takes (from both sources)."""
    controls = make_manifest(
        {("cohen", "bacterial"): 9, ("cohen", "normal"): 6, ("kermany", "normal"): 6},
        cohort="control",
    )
    return pd.concat([manifest, controls], ignore_index=True)


PAPER_DATASETS = ("dataset_0", "dataset_1")


def test_controls_never_enter_the_papers_datasets(manifest: pd.DataFrame) -> None:
    """A control row is never selected for Dataset_0 or Dataset_1, whatever its source and
    label: not even with targets larger than the study rows, nor a control labelled like a
    Kermany study row (only Dataset_1_mixed takes some, by design)."""
    m = with_controls(manifest)
    control_ids = set(m.loc[m["cohort"] == "control", "image_id"])
    assert len(control_ids) == 21
    counts = {"normal": 10_000, "bacterial": 10_000, "covid": 10_000}
    tables, report = split_manifest(m, SplitParams(dataset_1_counts=counts))
    for name in PAPER_DATASETS:
        table = tables[name]
        assert not control_ids & set(table["image_id"]), name
        assert set(table["cohort"]) == {"study"}, name
        assert len(select_dataset_rows(m, name)) == len(select_dataset_rows(manifest, name))
    assert report.controls == {
        "cohen|bacterial|bacterial": 9,
        "cohen|normal|No Finding": 6,
        "kermany|normal|": 6,
    }
    assert report.to_dict()["controls"] == report.controls
    # the split of the study rows does not move when controls are added
    alone, _ = split_manifest(manifest, SplitParams(dataset_1_counts=counts))
    for name in PAPER_DATASETS:
        pd.testing.assert_frame_equal(tables[name], alone[name])


def test_the_mixed_dataset_adds_a_patient_grouped_share_of_adult_controls() -> None:
    """Dataset_1_mixed is Dataset_1 with its splits unchanged, plus about half the normal and
    bacterial control patients (all their images, in one split each); viral controls and
    patients who also have a Dataset_1 image stay controls."""
    study = make_manifest(
        {("kermany", "normal"): 60, ("kermany", "bacterial"): 60, ("cohen", "covid"): 60}
    )
    controls = make_manifest(
        {("cohen", "normal"): 12, ("cohen", "bacterial"): 24, ("cohen", "viral"): 9},
        images_per_patient=2,
        cohort="control",
    )
    # a control film of a patient who is in Dataset_1 (a COVID-19 patient's earlier film)
    covid_patient = study.loc[study["label"] == "covid", "patient_id"].iloc[0]
    shared = controls.iloc[[0]].assign(patient_id=covid_patient, image_id="f" * 16)
    m = pd.concat([study, controls, shared], ignore_index=True)
    params = SplitParams(dataset_1_counts={"normal": 60, "bacterial": 60, "covid": 60})
    tables, report = split_manifest(m, params)
    d1, mixed = tables["dataset_1"], tables["dataset_1_mixed"]
    assert set(mixed["dataset"]) == {"dataset_1_mixed"}
    kept = mixed[mixed["cohort"] == "study"].drop(columns=["dataset"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, d1.drop(columns=["dataset"]).reset_index(drop=True))
    added = mixed[mixed["cohort"] == "control"]
    assert set(added["label"]) == {"normal", "bacterial"}
    assert "f" * 16 not in set(added["image_id"])  # that patient is in Dataset_1
    patients = added.groupby("label")["patient_id"].nunique().to_dict()
    assert patients == {"normal": 3, "bacterial": 6}  # half of 6 and of 12 patients
    assert added.groupby("patient_id")["split"].nunique().max() == 1
    assert set(added["split"]) == {"train", "val", "test"}
    # every image of a chosen patient joins; an unchosen patient contributes nothing
    per_patient = controls[controls["patient_id"].isin(added["patient_id"])]
    assert sorted(per_patient["image_id"]) == sorted(added["image_id"])
    assert (
        report.counts["dataset_1_mixed"]["train"]["normal"]
        > report.counts["dataset_1"]["train"]["normal"]
    )
    # the source shortcut is no longer complete in the mixed dataset
    assert not any("single source" in w for w in report.confounds["dataset_1_mixed"])
    assert any("single source" in w for w in report.confounds["dataset_1"])
    # deterministic, and share 0 is Dataset_1 itself
    again, _ = split_manifest(m, params)
    pd.testing.assert_frame_equal(again["dataset_1_mixed"], mixed)
    none, _ = split_manifest(m, params.model_copy(update={"mixed_control_share": 0.0}))
    assert len(none["dataset_1_mixed"]) == len(d1)


def test_select_controls_leaves_out_patients_a_model_has_seen(manifest: pd.DataFrame) -> None:
    m = with_controls(manifest)
    controls = select_controls(m)
    assert len(controls) == 21 and set(controls["cohort"]) == {"control"}
    assert list(controls["image_id"]) == sorted(controls["image_id"])
    seen = controls["patient_id"].iloc[0]  # a patient of three control images
    assert len(select_controls(m, exclude_patients=[seen, "kermany:nobody"])) == 21 - 3
    assert select_controls(manifest).empty
    assert select_controls(manifest.drop(columns=["cohort"])).empty
