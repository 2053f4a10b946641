"""Ingest on tiny Kermany + Cohen trees written by the tests themselves (no synthetic.py)."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrflow.config import CohenFilter, IngestParams
from cxrflow.data.images import THUMB_SIDE
from cxrflow.data.ingest import ingest, summarize_report
from cxrflow.data.manifest import (
    DUPLICATE_COLUMNS,
    EXCLUDED_COLUMNS,
    EXCLUDED_FILE,
    MANIFEST_COLUMNS,
    QUARANTINE_COLUMNS,
    manifest_hash,
    read_manifest,
)
from cxrflow.data.neardup import NEAR_DUPLICATE_MAX_RMSE, near_duplicate_pairs
from cxrflow.data.sources import Candidate, Rejected
from cxrflow.data.sources.cohen import (
    CohenSource,
    cohen_age_group,
    cohen_control_label,
    discover_cohen,
)
from cxrflow.data.sources.kermany import (
    discover_kermany,
    find_kermany_root,
    kermany_label,
    kermany_patient_id,
)

COHEN_HEADER = [
    "patientid",
    "offset",
    "sex",
    "age",
    "finding",
    "view",
    "modality",
    "date",
    "folder",
    "filename",
    "license",
]


# ----------------------------------------------------------------------------------- helpers


def smooth_image(seed: int, size: tuple[int, int] = (96, 80), mode: str = "L") -> Image.Image:
    """A smooth random image: distinct seeds give perceptually distinct images."""
    rng = np.random.default_rng(seed)
    low = (rng.random((6, 6)) * 255).astype(np.uint8)
    im = Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)
    return im.convert(mode)


def jpeg_bytes(im: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_kermany(root: Path, files: dict[str, bytes]) -> Path:
    """``files`` maps ``split/FOLDER/name`` to bytes, under ``root/chest_xray``."""
    for rel, data in files.items():
        write(root / "chest_xray" / rel, data)
    return root


def make_cohen(root: Path, rows: list[dict[str, str]], files: dict[str, bytes]) -> Path:
    """``rows`` are metadata rows (missing keys blank); ``files`` maps ``images/name`` to bytes."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        write(root / rel, data)
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COHEN_HEADER)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COHEN_HEADER})
    return root


def cohen_row(pid: str, filename: str, **kw: str) -> dict[str, str]:
    row = {
        "patientid": pid,
        "finding": "COVID-19",
        "view": "PA",
        "modality": "X-ray",
        "folder": "images",
        "filename": filename,
        "age": "50",
    }
    row.update(kw)
    return row


def serial(**kw: object) -> IngestParams:
    return IngestParams(workers=1, **kw)  # type: ignore[arg-type]


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A small two-source layout with exact and near duplicates and every exclusion."""
    base = smooth_image(1)
    kermany = make_kermany(
        tmp_path / "kermany",
        {
            "train/NORMAL/IM-0001-0001.jpeg": jpeg_bytes(base),
            "test/NORMAL/IM-0001-0002.jpeg": jpeg_bytes(base),  # exact duplicate of the above
            "train/NORMAL/NORMAL2-IM-0002-0001.jpeg": jpeg_bytes(smooth_image(2)),
            "train/PNEUMONIA/person1_bacteria_1.jpeg": jpeg_bytes(smooth_image(3)),
            "train/PNEUMONIA/person1_virus_2.jpeg": jpeg_bytes(smooth_image(4)),
            "test/PNEUMONIA/person2_virus_3.jpeg": jpeg_bytes(smooth_image(5)),
            "test/PNEUMONIA/person3_bacteria_4.jpeg": jpeg_bytes(smooth_image(6)),
        },
    )
    covid = smooth_image(10)
    cohen = make_cohen(
        tmp_path / "cohen-v1",
        [
            cohen_row("7", "a.jpg"),
            cohen_row("7", "a-again.jpg"),  # re-encoded a.jpg: a near duplicate
            cohen_row("8", "b.png", view="AP Supine", age="12"),
            cohen_row("9", "c.jpg", finding="Pneumonia/Viral/COVID-19", view=" AP "),
            cohen_row("9", "lat.jpg", view="L"),
            cohen_row("9", "ct.jpg", modality="CT", view="Axial"),
            cohen_row("10", "sars.jpg", finding="SARS"),  # an adult non-COVID X-ray: a control
            cohen_row("12", "pcp.jpg", finding="Pneumocystis"),  # no control label: excluded
            cohen_row("11", "gone.jpg"),
        ],
        {
            "images/a.jpg": jpeg_bytes(covid, 95),
            "images/a-again.jpg": jpeg_bytes(covid, 70),
            "images/b.png": _png(smooth_image(11)),
            "images/c.jpg": jpeg_bytes(smooth_image(12)),
            "images/lat.jpg": jpeg_bytes(smooth_image(13)),
            "images/ct.jpg": jpeg_bytes(smooth_image(14)),
            "images/sars.jpg": jpeg_bytes(smooth_image(15)),
            "images/pcp.jpg": jpeg_bytes(smooth_image(17)),
            "images/orphan.jpg": jpeg_bytes(smooth_image(16)),
        },
    )
    return kermany, cohen


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- source parsing


@pytest.mark.parametrize(
    ("folder", "name", "label"),
    [
        ("NORMAL", "IM-0001-0001.jpeg", "normal"),
        ("PNEUMONIA", "person1_bacteria_1.jpeg", "bacterial"),
        ("PNEUMONIA", "person1_virus_6.jpeg", "viral"),
        ("PNEUMONIA", "person99_virus 12 é.jpeg", "viral"),
        ("pneumonia", "PERSON3_BACTERIA_2.JPEG", "bacterial"),
        ("PNEUMONIA", "person1_1.jpeg", None),
        ("PNEUMONIA", "person1_bacteria_virus_1.jpeg", None),
        ("PNEUMONIA", "person1_virusish_1.jpeg", None),
        ("COVID", "x.jpeg", None),
    ],
)
def test_kermany_label(folder: str, name: str, label: str | None) -> None:
    assert kermany_label(folder, name) == label


@pytest.mark.parametrize(
    ("name", "pid"),
    [
        ("person1_bacteria_1.jpeg", "kermany:person1"),
        ("person1430_virus_2423.jpeg", "kermany:person1430"),
        ("IM-0001-0001.jpeg", "kermany:IM-0001"),
        ("IM-0001-0002.jpeg", "kermany:IM-0001"),
        ("NORMAL2-IM-0246-0001-0002.jpeg", "kermany:NORMAL2-IM-0246"),
        ("scan.jpeg", "kermany:file:scan"),
    ],
)
def test_kermany_patient_id(name: str, pid: str) -> None:
    assert kermany_patient_id(name) == pid


@pytest.mark.parametrize("container", ["", "chest_xray", "dataset"])
def test_find_kermany_root_accepts_the_three_layouts(tmp_path: Path, container: str) -> None:
    base = tmp_path / container if container else tmp_path
    (base / "train").mkdir(parents=True)
    (base / "test").mkdir()
    assert find_kermany_root(tmp_path) == base


def test_find_kermany_root_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no Kermany layout"):
        find_kermany_root(tmp_path)


def test_discover_kermany_records(tmp_path: Path) -> None:
    jpg = jpeg_bytes(smooth_image(1))
    root = make_kermany(
        tmp_path / "k",
        {
            "train/NORMAL/IM-0001-0001.jpeg": jpg,
            "train/PNEUMONIA/person1_bacteria_1.jpeg": jpg,
            "val/PNEUMONIA/person2_virus_1.jpeg": jpg,
            "train/PNEUMONIA/person3_unknown_1.jpeg": jpg,
            "train/COVID/a.jpeg": jpg,
            "train/COVID/b.jpeg": jpg,
            "train/stray.jpeg": jpg,
        },
    )
    write(root / "chest_xray" / "__MACOSX" / "junk.jpeg", jpg)  # not under a split: skipped
    recs = list(discover_kermany(root))
    assert len(recs) == 7
    cands = {Path(r.original_path).name: r for r in recs if isinstance(r, Candidate)}
    rejected = sorted(
        (Path(r.original_path).name, r.reason) for r in recs if isinstance(r, Rejected)
    )
    assert rejected == [
        ("a.jpeg", "unknown_label_folder"),
        ("b.jpeg", "unknown_label_folder"),
        ("person3_unknown_1.jpeg", "unknown_label"),
        ("stray.jpeg", "unknown_label_folder"),
    ]
    c = cands["person2_virus_1.jpeg"]
    assert (c.label, c.patient_id, c.source_split, c.age_group, c.view) == (
        "viral",
        "kermany:person2",
        "val",
        "pediatric",
        "",
    )
    assert c.original_path == "k/chest_xray/val/PNEUMONIA/person2_virus_1.jpeg"
    assert cands["IM-0001-0001.jpeg"].patient_id == "kermany:IM-0001"


@pytest.mark.parametrize(
    ("age", "group"),
    [
        ("45", "adult"),
        ("18", "adult"),
        ("17", "pediatric"),
        ("0.5", "pediatric"),
        ("", "unknown"),
        ("n/a", "unknown"),
        ("nan", "unknown"),
    ],
)
def test_cohen_age_group(age: str, group: str) -> None:
    assert cohen_age_group(age) == group


def test_discover_cohen_filters_and_counts(layout: tuple[Path, Path]) -> None:
    _, cohen = layout
    disc = discover_cohen(cohen, CohenFilter())
    assert disc.rows == 9
    by_name = {Path(c.original_path).name: c for c in disc.candidates}
    assert sorted(by_name) == ["a-again.jpg", "a.jpg", "b.png", "c.jpg"]
    assert {c.cohort for c in disc.candidates} == {"study"}
    assert by_name["c.jpg"].finding == "Pneumonia/Viral/COVID-19"
    (control,) = disc.controls
    assert (control.original_path, control.label, control.cohort, control.finding) == (
        "cohen-v1/images/sars.jpg",
        "viral",
        "control",
        "SARS",
    )
    assert (control.patient_id, control.view, control.age_group) == ("cohen:10", "PA", "adult")
    assert by_name["c.jpg"].view == "AP"  # stripped; hierarchical finding matched
    assert by_name["b.png"].age_group == "pediatric"
    assert by_name["a.jpg"].patient_id == "cohen:7"
    assert by_name["a.jpg"].original_path == "cohen-v1/images/a.jpg"
    assert sorted((e.reason, e.label, e.file_present) for e in disc.excluded) == [
        ("modality_not_xray", "covid", True),
        ("not_covid_finding", "other", True),
        ("view_not_frontal", "covid", True),
    ]
    assert [(r.reason, r.original_path) for r in disc.rejected] == [
        ("missing_file", "cohen-v1/images/gone.jpg")
    ]
    assert disc.unreferenced == ["cohen-v1/images/orphan.jpg"]


def test_cohen_filter_ignores_case_of_finding_and_spaces(tmp_path: Path) -> None:
    rows = [
        cohen_row("1", "lower.jpg", finding="covid-19"),
        cohen_row("2", "mixed.jpg", finding="Pneumonia/Viral/Covid-19"),
        cohen_row("3", "spaced.jpg", modality=" X-ray ", view="  AP  Supine "),
        cohen_row("4", "sars.jpg", finding="sars"),  # a control, however written
        cohen_row("4", "sars-lat.jpg", finding="sars", view="L"),  # a control must be frontal
        cohen_row("5", "ct.jpg", finding="COVID-19", modality=" CT ", view="Axial"),
        cohen_row("6", "todo.jpg", finding="todo"),
    ]
    files = {f"images/{r['filename']}": jpeg_bytes(smooth_image(i)) for i, r in enumerate(rows)}
    root = make_cohen(tmp_path / "c", rows, files)
    disc = discover_cohen(root, CohenFilter())
    assert sorted(Path(c.original_path).name for c in disc.candidates) == [
        "lower.jpg",
        "mixed.jpg",
        "spaced.jpg",
    ]
    assert {c.view for c in disc.candidates} == {"PA", "AP Supine"}
    assert sorted((e.reason, e.detail) for e in disc.excluded) == [
        ("modality_not_xray", "modality='CT'"),
        ("not_covid_finding", "finding='sars'"),
        ("not_covid_finding", "finding='todo'"),
    ]
    assert [(Path(c.original_path).name, c.label) for c in disc.controls] == [("sars.jpg", "viral")]
    # the configured values are compared the same way
    flt = CohenFilter(finding_contains="covid-19", modalities=(" X-ray",), views=("PA ",))
    got = discover_cohen(root, flt)
    assert {Path(c.original_path).name for c in got.candidates} == {"lower.jpg", "mixed.jpg"}


# every non-COVID finding of the real collection (2020-06 flat and latest hierarchical forms)
@pytest.mark.parametrize(
    ("finding", "label"),
    [
        ("Streptococcus", "bacterial"),
        ("Klebsiella", "bacterial"),
        ("E.Coli", "bacterial"),
        ("Legionella", "bacterial"),
        ("Chlamydophila", "bacterial"),
        ("Mycoplasma Bacterial Pneumonia", "bacterial"),
        ("Bacterial", "bacterial"),
        ("Pneumonia/Bacterial/Staphylococcus/MRSA", "bacterial"),
        ("Pneumonia/Bacterial/Nocardia", "bacterial"),
        ("No Finding", "normal"),
        (" no  finding ", "normal"),
        ("SARS", "viral"),
        ("Influenza", "viral"),
        ("Varicella", "viral"),
        ("Pneumonia/Viral/MERS-CoV", "viral"),
        ("Pneumonia/Viral/Influenza/H1N1", "viral"),
        ("Pneumonia/Viral/Herpes", "viral"),
        ("Pneumocystis", None),
        ("Pneumonia/Fungal/Aspergillosis", None),
        ("Tuberculosis", None),
        ("Lipoid", None),
        ("ARDS", None),
        ("Pneumonia", None),
        ("Pneumonia/Aspiration", None),
        ("todo", None),
        ("Unknown", None),
        ("", None),
        ("SARS-CoV-2", None),  # never a control, even without the words COVID-19
        ("Pneumonia/Viral/nCoV", None),
        ("Bacterial/Viral", None),  # both kinds: undecidable
    ],
)
def test_cohen_control_label(finding: str, label: str | None) -> None:
    assert cohen_control_label(finding) == label


def test_controls_are_quarantined_like_study_rows_and_not_counted(tmp_path: Path) -> None:
    rows = [
        cohen_row("1", "covid.jpg"),
        cohen_row("2", "strep.jpg", finding="Streptococcus", view="AP"),
        cohen_row("3", "gone.jpg", finding="No Finding"),
        cohen_row("4", "strep-copy.jpg", finding="Klebsiella"),  # the Kermany film, re-filed
    ]
    bacterial = jpeg_bytes(smooth_image(3))
    files = {
        "images/covid.jpg": jpeg_bytes(smooth_image(1)),
        "images/strep.jpg": jpeg_bytes(smooth_image(2)),
        "images/strep-copy.jpg": bacterial,
    }
    cohen = make_cohen(tmp_path / "c", rows, files)
    kermany = make_kermany(tmp_path / "k", {"train/PNEUMONIA/person1_bacteria_1.jpeg": bacterial})
    disc = discover_cohen(cohen, CohenFilter())
    assert [(r.reason, r.label, r.cohort) for r in disc.rejected] == [
        ("missing_file", "normal", "control")
    ]
    assert "control, finding='No Finding'" in disc.rejected[0].detail
    # the data-version listing counts study rows only, as discovery's count_records does
    listing = ["metadata.csv", *files]
    counts = CohenSource().count_labels(
        listing, lambda rel: (cohen / rel).read_bytes(), IngestParams()
    )
    assert counts == {"covid": 1}
    # a control identical to a study image of the same label: the study image is kept
    rep = ingest(tmp_path / "ds", serial(), [("cohen", cohen), ("kermany", kermany)])
    assert rep.stages["after_dedupe"] == {
        "cohen": {"control:bacterial": 1, "covid": 1},
        "kermany": {"bacterial": 1},
    }
    assert rep.quarantine_reasons == {"missing_file": 1}
    m = read_manifest(tmp_path / "ds")
    assert sorted(m.loc[m["cohort"] == "control", "finding"]) == ["Streptococcus"]
    d = pd.read_csv(tmp_path / "ds" / "duplicates.csv", dtype=str, keep_default_na=False)
    assert d[["kept_source", "dropped_original_path"]].values.tolist() == [
        ["kermany", "c/images/strep-copy.jpg"]
    ]


def test_a_manifest_without_cohort_reads_as_study(
    layout: tuple[Path, Path], tmp_path: Path
) -> None:
    kermany, _ = layout
    ingest(tmp_path, serial(), [("kermany", kermany)])
    path = tmp_path / "manifest.csv"
    old = pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns=["cohort", "finding"])
    old.to_csv(path, index=False)
    m = read_manifest(tmp_path)
    assert set(m["cohort"]) == {"study"} and set(m["finding"]) == {""}


def test_cohen_filter_is_configurable(layout: tuple[Path, Path]) -> None:
    _, cohen = layout
    disc = discover_cohen(cohen, CohenFilter(views=("PA", "AP", "AP Supine", "L")))
    assert "cohen-v1/images/lat.jpg" in {c.original_path for c in disc.candidates}


@pytest.mark.parametrize(
    "column", ["patientid", "finding", "view", "modality", "folder", "filename"]
)
def test_cohen_missing_column_is_named(layout: tuple[Path, Path], column: str) -> None:
    _, cohen = layout
    df = pd.read_csv(cohen / "metadata.csv", dtype=str, keep_default_na=False)
    bad = cohen / "bad.csv"
    df.drop(columns=[column]).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=rf"bad\.csv: required column '{column}' is missing"):
        discover_cohen(cohen, CohenFilter(), bad)


# ------------------------------------------------------------------------------------- ingest


def test_ingest_end_to_end(layout: tuple[Path, Path], tmp_path: Path) -> None:
    kermany, cohen = layout
    out = tmp_path / "ds"
    rep = ingest(out, serial(), [("kermany", kermany), ("cohen", cohen)])

    # every input accounted for exactly once
    assert rep.considered == 7 + 9
    assert rep.considered == (
        rep.kept + rep.quarantined + rep.excluded_by_filter + rep.duplicates_collapsed
    )
    assert (rep.kept, rep.quarantined, rep.excluded_by_filter, rep.duplicates_collapsed) == (
        6 + 3 + 1,  # the SARS row is kept, as a control
        1,
        3,
        2,
    )
    assert rep.quarantine_reasons == {"missing_file": 1}
    assert rep.excluded_reasons == {
        "cohen": {"modality_not_xray": 1, "not_covid_finding": 1, "view_not_frontal": 1}
    }
    assert rep.unreferenced == 1
    assert rep.stages["discovered"]["kermany"] == {"bacterial": 2, "normal": 3, "viral": 2}
    assert rep.stages["discovered"]["cohen"] == {"control:viral": 1, "covid": 7, "other": 1}
    assert rep.stages["after_filter"]["cohen"] == {"control:viral": 1, "covid": 5}
    assert rep.stages["after_quarantine"]["cohen"] == {"control:viral": 1, "covid": 4}
    assert rep.stages["after_dedupe"] == {
        "cohen": {"control:viral": 1, "covid": 3},
        "kermany": {"bacterial": 2, "normal": 2, "viral": 2},
    }
    assert rep.patients["after_dedupe"]["cohen"] == {"control:viral": 1, "covid": 3}
    assert rep.controls_by_finding == {"cohen": {"SARS": 1}}

    # manifest: exact columns, sorted, relative content-addressed paths that exist
    text = (out / "manifest.csv").read_text()
    assert text.splitlines()[0] == ",".join(MANIFEST_COLUMNS)
    m = read_manifest(out)
    assert list(m["image_id"]) == sorted(m["image_id"])
    assert m["image_id"].is_unique
    for row in m.itertuples():
        assert row.path == f"images/{row.sha256[:2]}/{row.sha256}.{row.path.rsplit('.', 1)[1]}"
        assert (out / row.path).is_file()
        assert row.image_id == row.sha256[:16]
        assert len(row.phash) == 16
    assert set(m["origin"]) == {"real"}
    k = m[m["source"] == "kermany"]
    assert set(k["age_group"]) == {"pediatric"} and set(k["view"]) == {""}
    assert set(k["source_split"]) == {"train", "test"}
    b = m[m["original_path"] == "cohen-v1/images/b.png"].iloc[0]
    assert (b["view"], b["age_group"], b["source_split"]) == ("AP Supine", "pediatric", "")
    assert (b["cohort"], b["finding"]) == ("study", "COVID-19")
    assert set(k["cohort"]) == {"study"} and set(k["finding"]) == {""}
    controls = m[m["cohort"] == "control"]
    assert controls[["original_path", "label", "finding"]].values.tolist() == [
        ["cohen-v1/images/sars.jpg", "viral", "SARS"]
    ]
    assert len(list((out / "images").rglob("*.*"))) == len(m)  # nothing stray stored

    # side files
    q = pd.read_csv(out / "quarantine.csv", dtype=str, keep_default_na=False)
    assert tuple(q.columns) == QUARANTINE_COLUMNS
    d = pd.read_csv(out / "duplicates.csv", dtype=str, keep_default_na=False)
    assert tuple(d.columns) == DUPLICATE_COLUMNS
    # every excluded row is listed by file, next to quarantine.csv
    x = pd.read_csv(out / EXCLUDED_FILE, dtype=str, keep_default_na=False)
    assert tuple(x.columns) == EXCLUDED_COLUMNS and len(x) == rep.excluded_by_filter
    assert x[["original_path", "label", "reason", "detail", "file_present"]].values.tolist() == [
        ["cohen-v1/images/ct.jpg", "covid", "modality_not_xray", "modality='CT'", "true"],
        ["cohen-v1/images/lat.jpg", "covid", "view_not_frontal", "view='L'", "true"],
        [
            "cohen-v1/images/pcp.jpg",
            "other",
            "not_covid_finding",
            "finding='Pneumocystis'",
            "true",
        ],
    ]
    assert set(x["source"]) == {"cohen"}
    saved = json.loads((out / "ingest_report.json").read_text())
    assert saved == json.loads(json.dumps(rep.to_dict()))
    assert saved["manifest_hash"] == manifest_hash(m)
    assert rep.images_per_s > 0 and rep.elapsed_s > 0

    summary = summarize_report(rep)
    assert "considered 16 = kept 10 + quarantined 1 + excluded 3 + duplicates 2" in summary
    assert "controls kept (cohen, never in a dataset): SARS 1" in summary
    assert summarize_report(saved) == summary


def test_exact_and_near_duplicates_collapse(layout: tuple[Path, Path], tmp_path: Path) -> None:
    kermany, cohen = layout
    out = tmp_path / "ds"
    ingest(out, serial(), [("kermany", kermany), ("cohen", cohen)])
    d = pd.read_csv(out / "duplicates.csv", dtype=str, keep_default_na=False)
    rows = {r.kind: r for r in d.itertuples()}
    assert sorted(rows) == ["exact", "near"]
    exact, near = rows["exact"], rows["near"]
    # deterministic choice: lowest original_path is kept
    assert exact.kept_original_path == "kermany/chest_xray/test/NORMAL/IM-0001-0002.jpeg"
    assert exact.dropped_original_path == "kermany/chest_xray/train/NORMAL/IM-0001-0001.jpeg"
    assert exact.distance == "0"
    assert near.kept_original_path == "cohen-v1/images/a-again.jpg"
    assert near.dropped_original_path == "cohen-v1/images/a.jpg"
    assert 0 <= int(near.distance) <= 4
    m = read_manifest(out)
    assert near.kept_image_id in set(m["image_id"])
    assert "cohen-v1/images/a.jpg" not in set(m["original_path"])


def test_same_image_in_kermany_and_cohen_is_a_conflict(tmp_path: Path) -> None:
    img = jpeg_bytes(smooth_image(42))
    kermany = make_kermany(tmp_path / "k", {"train/NORMAL/IM-0009-0001.jpeg": img})
    cohen = make_cohen(tmp_path / "c", [cohen_row("1", "x.jpg")], {"images/x.jpg": img})
    out = tmp_path / "ds"
    rep = ingest(out, serial(), [("kermany", kermany), ("cohen", cohen)])
    assert rep.quarantine_reasons == {"duplicate_label_conflict": 2}
    assert rep.duplicates["conflict_groups"] == 1 and rep.kept == 0
    q = pd.read_csv(out / "quarantine.csv", dtype=str, keep_default_na=False)
    k_row = q[q["source"] == "kermany"].iloc[0]
    assert "labelled normal but identical to cohen:c/images/x.jpg labelled covid" in k_row["detail"]


def test_label_conflict_quarantines_every_member(tmp_path: Path) -> None:
    img = smooth_image(7)
    kermany = make_kermany(
        tmp_path / "k",
        {
            "train/NORMAL/IM-0007-0001.jpeg": jpeg_bytes(img),
            "train/PNEUMONIA/person7_virus_1.jpeg": jpeg_bytes(img),  # same bytes, other label
            "test/PNEUMONIA/person7_virus_2.jpeg": jpeg_bytes(img, 80),  # near duplicate too
            "train/NORMAL/IM-0008-0001.jpeg": jpeg_bytes(smooth_image(8)),
        },
    )
    out = tmp_path / "ds"
    rep = ingest(out, serial(), [("kermany", kermany)])
    assert (rep.kept, rep.quarantined, rep.duplicates_collapsed) == (1, 3, 0)
    q = pd.read_csv(out / "quarantine.csv", dtype=str, keep_default_na=False)
    assert set(q["reason"]) == {"duplicate_label_conflict"}
    normal = q[q["original_path"].str.contains("IM-0007")].iloc[0]
    assert "person7_virus_1.jpeg" in normal["detail"] and "labelled viral" in normal["detail"]
    assert "\n" not in "".join(q["detail"])


def test_distinct_images_are_not_collapsed(tmp_path: Path) -> None:
    files = {
        f"train/NORMAL/IM-{i:04d}-0001.jpeg": jpeg_bytes(smooth_image(100 + i)) for i in range(40)
    }
    rep = ingest(tmp_path / "ds", serial(), [("kermany", make_kermany(tmp_path / "k", files))])
    assert (rep.kept, rep.duplicates_collapsed, rep.quarantined) == (40, 0, 0)


def test_runs_are_reproducible_and_parallel_equals_serial(
    layout: tuple[Path, Path], tmp_path: Path
) -> None:
    kermany, cohen = layout
    outs = []
    for name, params in [
        ("a", IngestParams(workers=1)),
        ("b", IngestParams(workers=1)),
        ("c", IngestParams(workers=2, chunk_size=2)),
    ]:
        out = tmp_path / name
        rep = ingest(out, params, [("kermany", kermany), ("cohen", cohen)])
        outs.append((out, rep))
    files = ("manifest.csv", "quarantine.csv", "duplicates.csv")
    ref_out, ref = outs[0]
    for out, rep in outs[1:]:
        for f in files:
            assert (out / f).read_bytes() == (ref_out / f).read_bytes(), f
        assert rep.manifest_hash == ref.manifest_hash
        assert rep.stages == ref.stages
        assert sorted(p.relative_to(out) for p in (out / "images").rglob("*")) == sorted(
            p.relative_to(ref_out) for p in (ref_out / "images").rglob("*")
        )
    assert outs[2][1].workers == 2


def test_rerun_prunes_images_no_longer_kept(layout: tuple[Path, Path], tmp_path: Path) -> None:
    kermany, cohen = layout
    out = tmp_path / "ds"
    ingest(out, serial(), [("kermany", kermany), ("cohen", cohen)])
    before = set((out / "images").rglob("*.*"))
    (kermany / "chest_xray" / "test" / "PNEUMONIA" / "person2_virus_3.jpeg").unlink()
    rep = ingest(out, serial(), [("kermany", kermany), ("cohen", cohen)])
    after = set((out / "images").rglob("*.*"))
    assert len(after) == rep.kept == len(before) - 1


def test_copy_images_false_writes_no_images(layout: tuple[Path, Path], tmp_path: Path) -> None:
    kermany, cohen = layout
    a = ingest(tmp_path / "a", serial(), [("kermany", kermany), ("cohen", cohen)])
    b = ingest(
        tmp_path / "b", serial(), [("kermany", kermany), ("cohen", cohen)], copy_images=False
    )
    assert not (tmp_path / "b" / "images").exists()
    assert b.manifest_hash == a.manifest_hash and not b.images_copied
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (
        tmp_path / "b" / "manifest.csv"
    ).read_bytes()


def test_ingest_argument_errors(layout: tuple[Path, Path], tmp_path: Path) -> None:
    _, cohen = layout
    with pytest.raises(ValueError, match="no source"):
        ingest(tmp_path / "x", serial(), [])
    with pytest.raises(ValueError, match=r"data\.sources\.nih: unknown source.*kermany, cohen"):
        ingest(tmp_path / "x", serial(), [("cohen", cohen), ("nih", cohen)])
    with pytest.raises(ValueError, match="origin"):
        ingest(tmp_path / "x", serial(), [("cohen", cohen)], origin="fake")
    assert not (tmp_path / "x" / "manifest.csv").exists()


def test_sources_mapping_equals_pairs(layout: tuple[Path, Path], tmp_path: Path) -> None:
    """``data.sources`` ({name: [roots]}) reads the same as ordered (name, root) pairs."""
    kermany, cohen = layout
    a = ingest(tmp_path / "a", serial(), [("kermany", kermany), ("cohen", cohen)])
    b = ingest(tmp_path / "b", serial(), {"kermany": [kermany], "cohen": [cohen]})
    assert a.manifest_hash == b.manifest_hash
    assert b.sources == {"kermany": [str(kermany)], "cohen": [str(cohen)]}


def test_cohen_metadata_version_is_a_source_object(
    layout: tuple[Path, Path], tmp_path: Path
) -> None:
    _, cohen = layout
    other = cohen.parent / "metadata-v0.csv"
    df = pd.read_csv(cohen / "metadata.csv", dtype=str, keep_default_na=False)
    df.iloc[:2].to_csv(other, index=False)
    rep = ingest(tmp_path / "ds", serial(), [(CohenSource(metadata_csv=other), cohen)])
    assert rep.considered == 2 and rep.sources == {"cohen": [str(cohen)]}


def test_failed_run_leaves_no_complete_looking_dataset(
    layout: tuple[Path, Path], tmp_path: Path
) -> None:
    kermany, cohen = layout
    out = tmp_path / "ds"
    ingest(out, serial(), [("kermany", kermany), ("cohen", cohen)])
    assert (out / "manifest.csv").is_file()
    (cohen / "metadata.csv").write_text("patientid,view\n1,PA\n")
    with pytest.raises(ValueError, match="finding"):
        ingest(out, serial(), [("kermany", kermany), ("cohen", cohen)])
    assert not (out / "manifest.csv").exists()
    assert not (out / "ingest_report.json").exists()


def test_origin_is_copied(layout: tuple[Path, Path], tmp_path: Path) -> None:
    kermany, _ = layout
    ingest(tmp_path / "ds", serial(), [("kermany", kermany)], origin="phantom")
    assert set(read_manifest(tmp_path / "ds")["origin"]) == {"phantom"}


# ---------------------------------------------------------------------- near-duplicate search


def _zrmse(a: np.ndarray, b: np.ndarray) -> float:
    za = (a - a.mean()) / max(a.std(), 1e-6)
    zb = (b - b.mean()) / max(b.std(), 1e-6)
    return float(np.sqrt(np.mean((za - zb) ** 2)))


def _brute_force(h64: list[str], thumbs: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    out = []
    t = thumbs.astype(np.float64)
    for i in range(len(h64)):
        for j in range(i + 1, len(h64)):
            d64 = (int(h64[i], 16) ^ int(h64[j], 16)).bit_count()
            if d64 <= k and _zrmse(t[i], t[j]) <= NEAR_DUPLICATE_MAX_RMSE:
                out.append((i, j, d64))
    return out


def _flip(value: int, flips: int, rnd: random.Random) -> int:
    for b in rnd.sample(range(64), flips):
        value ^= 1 << b
    return value


@pytest.mark.parametrize("k", [0, 1, 2, 4, 6])
def test_near_duplicate_pairs_equals_brute_force(k: int) -> None:
    rnd = random.Random(k)
    rng = np.random.default_rng(k)
    h64: list[int] = []
    thumbs: list[np.ndarray] = []
    for _ in range(60):  # clusters of close hashes, as chest X-rays give
        c64 = rnd.getrandbits(64)
        center = rng.normal(128, 40, THUMB_SIDE * THUMB_SIDE)
        for _ in range(rnd.randint(1, 5)):
            h64.append(_flip(c64, rnd.randint(0, 2 * k + 2), rnd))
            noise = rng.normal(0, rnd.choice([1.0, 6.0, 12.0]), center.shape)  # rmse ~.03-.3
            thumbs.append(np.clip(center + noise, 0, 255).astype(np.uint8))
    hex64 = [f"{h:016x}" for h in h64]
    arr = np.stack(thumbs)
    got = near_duplicate_pairs(hex64, arr, k)
    assert [g[:3] for g in got] == _brute_force(hex64, arr, k)
    assert all(0 <= g[3] <= NEAR_DUPLICATE_MAX_RMSE for g in got)
    assert got


def test_near_duplicate_pairs_trivial_inputs() -> None:
    side = THUMB_SIDE * THUMB_SIDE
    assert near_duplicate_pairs([], np.zeros((0, side), np.uint8), 4) == []
    assert near_duplicate_pairs(["0" * 16], np.zeros((1, side), np.uint8), 4) == []
    same = np.tile(np.arange(side, dtype=np.uint8), (2, 1))
    assert near_duplicate_pairs(["0" * 16] * 2, same, 0) == [(0, 1, 0, 0.0)]
    other = same.copy()
    other[1] = other[1][::-1]  # same phash, different picture: not a near duplicate
    assert near_duplicate_pairs(["0" * 16] * 2, other, 4) == []
