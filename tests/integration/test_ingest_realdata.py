"""Ingest on the real sample data in ../shared/data (see its PROVENANCE.md).

The figures asserted here are the ones PROVENANCE.md states for the sample, so a change in
discovery, filtering or counting shows up as a failure naming the number that moved.

Controls. Of the 2020-06-22 snapshot's 213 rows whose finding is not COVID-19, the 75 frontal
X-rays with a bacterial, non-COVID viral or no finding are now the audit's same-source controls
(never in a dataset): 67 with their file (bacterial 32: Streptococcus 11, Klebsiella 7, E.Coli 4,
Legionella 4, Mycoplasma 4, Bacterial 2; No Finding 14; viral 21: SARS 16, Varicella 4,
Influenza 1: the 32 and 14 the audit's issue measured) and 8 quarantined as missing files (No
Finding 5, Streptococcus 2, Chlamydophila 1). The other 138 stay excluded as
``not_covid_finding``: todo 78, Pneumocystis 17, Pneumonia 14, Lipoid 5, ARDS 4, and 20 lateral
or CT rows of control findings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrflow.config import CohenFilter, IngestParams
from cxrflow.data.ingest import IngestReport, ingest, summarize_report
from cxrflow.data.manifest import EXCLUDED_FILE, read_manifest
from cxrflow.data.sources.cohen import CohenSource, discover_cohen

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
KERMANY = DATA / "kermany"
COHEN = DATA / "cohen-2020-06-22"
SUPPLEMENT = DATA / "cohen-supplement-2020-08"
METADATA_VERSIONS = sorted((DATA / "cohen-metadata").glob("*.csv"))
PARAMS = IngestParams(workers=2)

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not KERMANY.is_dir(), reason=f"real sample data not found at {DATA}"),
]


def adds_up(rep: IngestReport) -> bool:
    return rep.considered == (
        rep.kept + rep.quarantined + rep.excluded_by_filter + rep.duplicates_collapsed
    )


@pytest.fixture(scope="module")
def kermany_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, IngestReport]:
    out = tmp_path_factory.mktemp("kermany")
    return out, ingest(out, PARAMS, [("kermany", KERMANY)], copy_images=False)


def test_kermany_counts(kermany_run: tuple[Path, IngestReport]) -> None:
    _, rep = kermany_run
    assert rep.considered == 5840 and adds_up(rep)
    assert rep.stages["discovered"] == {
        "kermany": {"bacterial": 2772, "normal": 1575, "viral": 1493}
    }
    assert rep.stages["after_quarantine"] == rep.stages["discovered"]  # no broken file
    assert rep.excluded_by_filter == 0 and rep.quarantined == 0
    # the sample holds 34 byte-identical pairs (e.g. person1372_bacteria_3501..3503):
    # 32 copies collapse; no distinct radiograph is collapsed as a "near duplicate"
    assert rep.duplicates["exact"] == 32 and rep.duplicates["near"] == 0
    assert rep.kept == 5840 - 32
    assert rep.stages["after_dedupe"]["kermany"] == {
        "bacterial": 2752,
        "normal": 1571,
        "viral": 1485,
    }
    print(summarize_report(rep))


def test_kermany_manifest(kermany_run: tuple[Path, IngestReport]) -> None:
    out, rep = kermany_run
    m = read_manifest(out)
    assert len(m) == rep.kept and m["image_id"].is_unique
    assert set(m["source_split"]) == {"train", "test"}
    assert set(m["age_group"]) == {"pediatric"}
    pneumonia = m[m["label"] != "normal"]
    assert pneumonia["patient_id"].str.fullmatch(r"kermany:person\d+").all()
    normal = m[m["label"] == "normal"]
    assert normal["patient_id"].str.fullmatch(r"kermany:(NORMAL2-)?IM-\d+").all()
    assert (m["width"] == 224).all() and (m["height"] == 224).all()
    # 224x224 RGB or L JPEGs, all copied as they are
    assert set(m["mode"]) <= {"L", "RGB"} and (m["mode"] == m["original_mode"]).all()


def test_phash64_alone_would_merge_distinct_patients(
    kermany_run: tuple[Path, IngestReport],
) -> None:
    """Why near duplicates need a second opinion: the 64-bit phash puts ~200 pairs of
    different Kermany radiographs (distinct patients) within distance 4."""
    out, _ = kermany_run
    m = read_manifest(out)
    h = np.array([int(x, 16) for x in m["phash"]], dtype=np.uint64)
    pid = m["patient_id"].to_numpy()
    close = 0
    for start in range(0, len(h), 512):
        d = np.bitwise_count(h[start : start + 512, None] ^ h[None, :])
        i, j = np.nonzero(d <= 4)
        keep = (i + start) < j
        close += int((pid[i[keep] + start] != pid[j[keep]]).sum())
    assert close >= 150, close  # measured: 192


def test_cohen_discovery_matches_provenance() -> None:
    disc = discover_cohen(COHEN, CohenFilter())
    assert disc.rows == 751
    assert len(disc.candidates) == 400
    assert len({c.patient_id for c in disc.candidates}) == 244
    assert {v: sum(c.view == v for c in disc.candidates) for v in ("PA", "AP Supine", "AP")} == {
        "PA": 208,
        "AP Supine": 112,
        "AP": 80,
    }
    by_reason: dict[tuple[str, bool], int] = {}
    for e in disc.excluded:
        by_reason[(e.reason, e.file_present)] = by_reason.get((e.reason, e.file_present), 0) + 1
    assert by_reason[("view_not_frontal", True)] == 24  # COVID-19 laterals present
    assert by_reason.get(("view_not_frontal", False), 0) == 0
    assert by_reason[("modality_not_xray", True)] == 55  # COVID-19 CT present
    assert by_reason[("modality_not_xray", False)] == 25  # CT rows whose file is absent
    rejected = [(r.reason, r.cohort) for r in disc.rejected]
    assert rejected.count(("missing_file", "study")) == 34  # COVID frontal, no file
    assert rejected.count(("missing_file", "control")) == 8  # 5 No Finding, 3 bacterial
    assert len(rejected) == 34 + 8
    assert len(disc.unreferenced) == 13
    # the audit's controls: adult non-COVID frontal X-rays whose file is present
    labels = [c.label for c in disc.controls]
    assert (labels.count("bacterial"), labels.count("normal"), labels.count("viral")) == (
        32,
        14,
        21,
    )
    assert len({c.patient_id for c in disc.controls}) == 38
    assert {c.cohort for c in disc.controls} == {"control"}
    assert by_reason[("not_covid_finding", True)] == 134
    assert by_reason[("not_covid_finding", False)] == 4
    assert disc.rows == len(disc.candidates) + len(disc.controls) + 242 + 42


def test_cohen_ingest(tmp_path: Path) -> None:
    rep = ingest(tmp_path, PARAMS, [("cohen", COHEN)])
    assert rep.considered == 751 and adds_up(rep)
    controls = {"control:bacterial": 35, "control:normal": 19, "control:viral": 21}
    assert rep.stages["after_filter"] == {"cohen": {"covid": 434, **controls}}
    controls = {"control:bacterial": 32, "control:normal": 14, "control:viral": 21}
    assert rep.stages["after_quarantine"] == {"cohen": {"covid": 400, **controls}}
    assert rep.patients["after_quarantine"] == {
        "cohen": {"covid": 244, "control:bacterial": 16, "control:normal": 12, "control:viral": 10}
    }
    assert rep.quarantine_reasons == {"missing_file": 34 + 8}
    # 213 rows of other findings before controls existed: 75 are controls now, 138 stay out
    assert rep.excluded_reasons == {
        "cohen": {"modality_not_xray": 80, "not_covid_finding": 138, "view_not_frontal": 24}
    }
    assert rep.excluded_file_present["cohen"]["modality_not_xray"] == 55
    excluded = pd.read_csv(tmp_path / EXCLUDED_FILE, dtype=str, keep_default_na=False)
    assert len(excluded) == rep.excluded_by_filter == 80 + 138 + 24  # listed by file
    kept_findings = set(excluded.loc[excluded["reason"] == "not_covid_finding", "detail"])
    assert "finding='Pneumocystis'" in kept_findings and "finding='todo'" in kept_findings
    assert excluded.groupby("reason").size().to_dict() == rep.excluded_reasons["cohen"]
    assert (excluded["file_present"] == "true").sum() == sum(
        rep.excluded_file_present["cohen"].values()
    )
    assert rep.unreferenced == 13
    # the same radiograph posted twice (e.g. Radiopaedia and Eurorad) collapses: 7 COVID-19
    # films, and one Legionella file that two metadata rows (patients 287 and 340) name
    assert rep.kept + rep.duplicates_collapsed == 400 + 67 and rep.duplicates_collapsed == 8
    assert rep.stages["after_dedupe"]["cohen"] == {
        "covid": 393,
        "control:bacterial": 31,
        "control:normal": 14,
        "control:viral": 21,
    }
    assert rep.controls_by_finding["cohen"] == {
        "Bacterial": 2,
        "E.Coli": 4,
        "Influenza": 1,
        "Klebsiella": 7,
        "Legionella": 3,
        "Mycoplasma Bacterial Pneumonia": 4,
        "No Finding": 14,
        "SARS": 16,
        "Streptococcus": 11,
        "Varicella": 4,
    }
    dups = pd.read_csv(tmp_path / "duplicates.csv", dtype=str, keep_default_na=False)
    assert dups["kind"].value_counts().to_dict() == {"near": 7, "exact": 1}
    assert (dups["distance"].astype(int) <= 4).all()
    m = read_manifest(tmp_path)
    study = m[m["cohort"] == "study"]
    assert set(study["label"]) == {"covid"} and set(m["source"]) == {"cohen"}
    assert set(study["finding"]) == {"COVID-19", "COVID-19, ARDS"}
    assert set(m["view"]) == {"PA", "AP Supine", "AP"}
    assert m["original_path"].str.startswith("cohen-2020-06-22/images/").all()
    assert all((tmp_path / p).is_file() for p in m["path"])  # copied
    assert {"adult", "unknown"} <= set(m["age_group"])
    control = m[m["cohort"] == "control"]
    assert control["label"].value_counts().to_dict() == {"bacterial": 31, "viral": 21, "normal": 14}
    assert set(control["age_group"]) == {"adult", "unknown"}


def test_cohen_two_roots(tmp_path: Path) -> None:
    rep = ingest(tmp_path, PARAMS, [("cohen", COHEN), ("cohen", SUPPLEMENT)], copy_images=False)
    assert rep.considered == 751 + 758 and adds_up(rep)
    assert rep.unreferenced == 13 + 4
    assert rep.stages["after_quarantine"] == {
        "cohen": {"covid": 401, "control:bacterial": 34, "control:normal": 14, "control:viral": 21}
    }
    # the supplement is a partial copy: its other rows are reported as missing files (its 2
    # new controls, Chlamydophila and Streptococcus, are among its 30 images)
    assert rep.quarantine_by_source["cohen"] == {"missing_file": 34 + 428 + 8 + 66}
    assert rep.controls_by_finding["cohen"]["Chlamydophila"] == 1


@pytest.mark.parametrize("csv_path", METADATA_VERSIONS, ids=lambda p: p.name[:10])
def test_every_metadata_version_reads(tmp_path: Path, csv_path: Path) -> None:
    rep = ingest(tmp_path, PARAMS, [(CohenSource(metadata_csv=csv_path), COHEN)], copy_images=False)
    assert adds_up(rep)
    assert rep.considered == len(pd.read_csv(csv_path, dtype=str))
    assert rep.stages["after_quarantine"]["cohen"]["covid"] >= 390
    assert rep.quarantine_reasons.keys() <= {"missing_file"}


def test_latest_metadata_hierarchical_findings() -> None:
    latest = next(p for p in METADATA_VERSIONS if p.name.startswith("latest"))
    disc = discover_cohen(COHEN, CohenFilter(), latest)
    assert disc.rows == 950
    frontal_covid = len(disc.candidates) + sum(r.cohort == "study" for r in disc.rejected)
    assert frontal_covid == 478  # PROVENANCE: 478 COVID-19 frontal X-ray rows
    assert {r.reason for r in disc.rejected} <= {"missing_file"}
    # hierarchical findings (Pneumonia/Bacterial/Klebsiella, ...) make controls as flat ones do
    assert len(disc.controls) == 66 and {c.label for c in disc.controls} == {
        "bacterial",
        "normal",
        "viral",
    }


def test_metadata_without_finding_names_the_column(tmp_path: Path) -> None:
    df = pd.read_csv(COHEN / "metadata.csv", dtype=str, keep_default_na=False)
    bad = tmp_path / "no-finding.csv"
    df.drop(columns=["finding"]).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"no-finding\.csv: required column 'finding'"):
        ingest(tmp_path / "out", PARAMS, [(CohenSource(metadata_csv=bad), COHEN)])
