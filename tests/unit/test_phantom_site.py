"""The phantom external site: another hospital's export (CSV + nested folders, PNG and DICOM,
another scanner's look), byte-reproducible, and read whole by the ``csv`` source."""

from __future__ import annotations

import csv
import dataclasses
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrflow.config import IngestParams, SynthParams
from cxrflow.data.dicom import SALT_ENV, dicom_patient_key, read_dicom
from cxrflow.data.images import inspect_image
from cxrflow.data.phantom_render import render_radiograph
from cxrflow.data.phantom_site import SiteSummary, write_external_site
from cxrflow.data.sources import Candidate, count_records
from cxrflow.data.sources.csv_source import CsvSource

pydicom = pytest.importorskip("pydicom")

PARAMS = SynthParams(min_side=64, max_side=96, seed=11)
SITE = {"n_patients_per_class": 3, "images_per_patient": 2, "dicom_every": 3}
N_IMAGES = 3 * 3 * 2
IMAGE_PATH = re.compile(r"^studies/(\d{4})/A\d{7}/image\.(png|dcm)$")


@pytest.fixture(autouse=True)
def _salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SALT_ENV, "phantom-site-test-salt")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> SiteSummary:
    return write_external_site(tmp_path_factory.mktemp("s") / "site", PARAMS, **SITE)


def rows(summary: SiteSummary) -> list[dict[str, str]]:
    with open(summary.labels_csv, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def pixels(path: Path) -> np.ndarray:
    return read_dicom(path)[0] if path.suffix == ".dcm" else np.asarray(Image.open(path))


def test_layout(site: SiteSummary) -> None:
    root = site.root
    assert site.labels_csv == root / "labels.csv"
    assert site.counts == {"normal": 6, "bacterial": 6, "covid": 6}
    table = rows(site)
    assert list(table[0]) == ["path", "label", "patient_id", "view", "age_group"]
    assert len(table) == N_IMAGES
    assert Counter(r["label"] for r in table) == {
        "No Finding": 6,
        "Bacterial pneumonia": 6,
        "COVID-19": 6,
    }
    assert {r["age_group"] for r in table} == {"adult"}
    assert {r["view"] for r in table} <= {"PA", "AP"}
    patients = Counter(r["patient_id"] for r in table)
    assert len(patients) == 9 and set(patients.values()) == {2}
    assert all(re.fullmatch(r"MRN-\d{6}", p) for p in patients)
    # one image per row, named studies/<yyyy>/<accession>/image.<ext>, nothing else but the note
    on_disk = files(root)
    assert set(on_disk) == {r["path"] for r in table} | {"labels.csv", "PHANTOM.md"}
    assert all(IMAGE_PATH.match(r["path"]) for r in table)
    assert sum(r["path"].endswith(".dcm") for r in table) == N_IMAGES // SITE["dicom_every"]
    note = (root / "PHANTOM.md").read_text()
    assert "synthetic" in note and "not real patients" in note and "- covid: 6" in note


def test_byte_identical_for_the_same_seed(site: SiteSummary, tmp_path: Path) -> None:
    again = write_external_site(tmp_path / "again", PARAMS, **SITE)
    assert files(again.root) == files(site.root)
    other = write_external_site(
        tmp_path / "other",
        PARAMS,
        **SITE,
        seed_offset=1001,
    )
    assert set(files(other.root)).isdisjoint(set(files(site.root)) - {"labels.csv", "PHANTOM.md"})


def test_rewrites_its_own_folder_but_not_real_data(tmp_path: Path) -> None:
    out = tmp_path / "site"
    first = files(write_external_site(out, PARAMS, n_patients_per_class=1).root)
    assert files(write_external_site(out, PARAMS, n_patients_per_class=1).root) == first
    real = tmp_path / "real"
    real.mkdir()
    (real / "labels.csv").write_text("path,label,patient_id\n")
    with pytest.raises(FileExistsError, match=r"PHANTOM\.md"):
        write_external_site(real, PARAMS)
    with pytest.raises(ValueError, match="dicom_every"):
        write_external_site(tmp_path / "x", PARAMS, dicom_every=-1)


def test_dicom_files_decode_and_carry_the_mrn(site: SiteSummary) -> None:
    table = rows(site)
    dicoms = [r for r in table if r["path"].endswith(".dcm")]
    assert dicoms
    for row in dicoms:
        path = site.root / row["path"]
        info = inspect_image(path, IngestParams(min_side=32))
        assert (info.format, info.mode, info.original_mode) == ("DICOM", "L", "MONOCHROME2")
        assert PARAMS.min_side * 0.9 <= min(info.width, info.height) <= PARAMS.max_side * 1.1
        ds = pydicom.dcmread(path)
        assert ds.PatientID == row["patient_id"]
        assert (ds.BitsAllocated, ds.SOPClassUID.name) == (8, "Secondary Capture Image Storage")
        assert ds.StudyDate[:4] == IMAGE_PATH.match(row["path"]).group(1)  # type: ignore[union-attr]
        assert dicom_patient_key(path) is not None
        assert ds.SOPInstanceUID.is_valid and ds.SOPInstanceUID != ds.StudyInstanceUID


def test_csv_source_discovers_every_image(site: SiteSummary) -> None:
    source = CsvSource("phantom_site")
    recs = list(source.discover(site.root, IngestParams()))
    assert len(recs) == N_IMAGES and all(isinstance(r, Candidate) for r in recs)
    cands = [r for r in recs if isinstance(r, Candidate)]
    expected = {"No Finding": "normal", "Bacterial pneumonia": "bacterial", "COVID-19": "covid"}
    table = rows(site)
    assert [(c.original_path, c.label) for c in cands] == [
        (f"site/{r['path']}", expected[r["label"]]) for r in table
    ]
    assert Counter(c.label for c in cands) == site.counts
    assert len({c.patient_id for c in cands}) == 9
    mrns = {r["patient_id"] for r in table}
    assert not any(m in str(v) for c in cands for v in dataclasses.asdict(c).values() for m in mrns)
    listing = list(files(site.root))
    counted = source.count_labels(
        listing, lambda rel: (site.root / rel).read_bytes(), IngestParams()
    )
    assert counted == count_records(recs, source.labels) == {**site.counts, "viral": 0}


def test_another_scanners_look(site: SiteSummary) -> None:
    """Brighter corners and more pixel noise than the Kermany/Cohen phantom's adults."""

    def look(img: np.ndarray) -> tuple[float, float]:
        h, w = img.shape
        corner = float(img[: h // 8, : w // 8].mean())
        grain = float(np.median(np.abs(np.diff(img.astype(np.float64), axis=1))))
        return corner, grain

    ours = np.array([look(pixels(site.root / r["path"])) for r in rows(site)])
    theirs = np.array(
        [
            look(
                render_radiograph(label, np.random.default_rng(i), (80, 80), {"age_group": "adult"})
            )
            for i, label in enumerate(["normal", "bacterial", "covid"] * 6)
        ]
    )
    assert ours[:, 0].mean() > theirs[:, 0].mean() + 25
    assert ours[:, 1].mean() > 1.5 * theirs[:, 1].mean()
