"""The ``csv`` source: a hospital's export (any folder layout plus a CSV of labels), one record
per row with its reason, hashed patient ids, and listing counts equal to discovery's."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections import Counter
from pathlib import Path

import pytest

from cxrflow.config import IngestParams
from cxrflow.data.dicom import SALT_ENV, hash_patient_id
from cxrflow.data.sources import (
    STUDY,
    UNKNOWN_LABEL,
    Candidate,
    Record,
    Rejected,
    Source,
    Unreferenced,
    count_records,
    register_source,
    unregister_source,
)
from cxrflow.data.sources.csv_source import (
    CsvSource,
    normalise_age_group,
    normalise_label,
    read_labels_csv,
)

SALT = "csv-source-test-salt"
PARAMS = IngestParams(workers=1)
HEADER = ["path", "label", "patient_id", "view", "age_group"]
PNG = b"\x89PNG\r\n\x1a\n not decoded by discovery"


@pytest.fixture(autouse=True)
def _salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SALT_ENV, SALT)


def export(root: Path, rows: list[list[str]], files: list[str], header: list[str] = HEADER) -> Path:
    """Write ``root/labels.csv`` (``header`` + ``rows``) and each of ``files`` (dummy bytes)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(PNG)
    return root


def discover(root: Path, source: CsvSource | None = None) -> list[Record]:
    return list((source or CsvSource("site")).discover(root, PARAMS))


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def values(rec: Record) -> list[str]:
    return [str(v) for v in dataclasses.asdict(rec).values()]


# --------------------------------------------------------------------------------- candidates


def test_row_becomes_candidate_with_hashed_patient(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = export(
        tmp_path / "hospital-a",
        [
            ["scans/2020/0001/img.png", " COVID-19 ", "PID-SECRET-4417", " AP  Supine ", "Child"],
            ["scans/2020/0002/img.jpg", "normal", "PID-SECRET-9000", "PA", "adult"],
        ],
        ["scans/2020/0001/img.png", "scans/2020/0002/img.jpg"],
    )
    with caplog.at_level(logging.DEBUG):
        recs = discover(root)
    first, second = recs
    assert first == Candidate(
        source="site",
        path=str((root / "scans/2020/0001/img.png").resolve()),
        original_path="hospital-a/scans/2020/0001/img.png",
        label="covid",
        patient_id=f"site:{hash_patient_id('PID-SECRET-4417', SALT.encode())}",
        view="AP Supine",
        age_group="pediatric",
        source_split="",
        cohort=STUDY,
        finding="COVID-19",
    )
    assert isinstance(second, Candidate) and second.label == "normal"
    assert second.age_group == "adult" and second.patient_id != first.patient_id
    # the hospital's ids reach no record field and no log line
    for secret in ("PID-SECRET", "4417", "9000"):
        assert not any(secret in v for rec in recs for v in values(rec))
        assert secret not in caplog.text


def test_patient_hash_follows_the_salt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = export(tmp_path / "r", [["a.png", "normal", "P1"]], ["a.png"], HEADER[:3])
    one = discover(root)[0]
    monkeypatch.setenv(SALT_ENV, "another-salt")
    two = discover(root)[0]
    assert isinstance(one, Candidate) and isinstance(two, Candidate)
    assert one.patient_id != two.patient_id
    assert two.patient_id == f"site:{hash_patient_id('P1', b'another-salt')}"


@pytest.mark.parametrize(
    ("written", "label"),
    [
        ("normal", "normal"),
        ("NORMAL", "normal"),
        ("No Finding", "normal"),
        ("  no   finding ", "normal"),
        ("Bacteria", "bacterial"),
        ("bacterial pneumonia", "bacterial"),
        ("Virus", "viral"),
        ("Viral Pneumonia", "viral"),
        ("covid", "covid"),
        ("COVID-19", "covid"),
        ("covid19", "covid"),
        ("SARS-CoV-2", "covid"),
        ("pneumonia", None),
        ("covid 19", None),
        ("", None),
    ],
)
def test_label_synonyms(written: str, label: str | None) -> None:
    assert normalise_label(written) == label


@pytest.mark.parametrize(
    ("written", "group"),
    [
        ("pediatric", "pediatric"),
        ("Paediatric", "pediatric"),
        (" CHILD ", "pediatric"),
        ("adult", "adult"),
        ("Adult", "adult"),
        ("", "unknown"),
        ("elderly", "unknown"),
    ],
)
def test_age_group_synonyms(written: str, group: str) -> None:
    assert normalise_age_group(written) == group


def test_windows_separators_any_layout_and_extensionless_dicom(tmp_path: Path) -> None:
    files = ["PACS/2021/ACC1/IMG0001.DCM", "PACS/2021/ACC2/IMG0001", "x.jpeg"]
    rows = [
        ["PACS\\2021\\ACC1\\IMG0001.DCM", "viral", "p1"],
        [".\\PACS\\2021\\ACC2\\IMG0001", "bacterial", "p2"],
        ["./x.jpeg", "normal", "p3"],
    ]
    root = export(tmp_path / "site", rows, files, HEADER[:3])
    recs = discover(root)
    assert all(isinstance(r, Candidate) for r in recs)
    assert [r.original_path for r in recs] == [f"site/{f}" for f in files]
    assert [r.path for r in recs if isinstance(r, Candidate)] == [
        str((root / f).resolve()) for f in files
    ]
    assert [r.view for r in recs if isinstance(r, Candidate)] == ["", "", ""]
    assert {r.age_group for r in recs if isinstance(r, Candidate)} == {"unknown"}


# ---------------------------------------------------------------------------------- rejections


def test_every_rejection_reason_with_its_detail(tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(PNG)
    rows = [
        ["../outside.png", "normal", "p1"],  # line 2
        ["/etc/hostname", "normal", "p2"],  # line 3
        ["C:\\exports\\a.png", "covid", "p3"],  # line 4
        ["link.png", "normal", "p4"],  # line 5: a symlink out of the root
        ["gone/none.png", "viral", "p5"],  # line 6
        ["a.png", "Pneumonia", "p6"],  # line 7
        ["b.png", "normal", "  "],  # line 8
        ["c.png", "covid", "p8"],  # line 9
        ["sub\\..\\c.png", "normal", "p8"],  # line 10: the same file as line 9
        ["", "normal", "p9"],  # line 11
    ]
    root = export(tmp_path / "root", rows, ["a.png", "b.png", "c.png"], HEADER[:3])
    (root / "link.png").symlink_to(outside)
    recs = discover(root)
    assert len(recs) == len(rows)  # one record per row; nothing unreferenced
    by_line = dict(zip(range(2, 12), recs, strict=True))
    for line in (2, 3, 4, 5):
        rec = by_line[line]
        assert isinstance(rec, Rejected) and rec.reason == "path_escape", line
        assert f"line {line}:" in rec.detail
    assert by_line[2].original_path == "root/../outside.png"
    assert by_line[4].original_path == "root/C:/exports/a.png"
    missing = by_line[6]
    assert isinstance(missing, Rejected) and missing.reason == "missing_file"
    assert "line 6" in missing.detail and "gone/none.png" in missing.detail
    assert missing.label == "viral"  # a known label: not counted as unknown
    unknown = by_line[7]
    assert isinstance(unknown, Rejected) and unknown.reason == "unknown_label"
    assert unknown.label == UNKNOWN_LABEL and "line 7" in unknown.detail
    assert "'Pneumonia'" in unknown.detail
    no_patient = by_line[8]
    assert isinstance(no_patient, Rejected) and no_patient.reason == "missing_patient_id"
    assert "line 8" in no_patient.detail and no_patient.label == "normal"
    assert isinstance(by_line[9], Candidate) and by_line[9].label == "covid"
    dup = by_line[10]
    assert isinstance(dup, Rejected) and dup.reason == "duplicate_row"
    assert dup.original_path == "root/c.png"
    assert "line 10" in dup.detail and "line 9" in dup.detail
    assert "'covid' there, 'normal' here" in dup.detail  # a labelling conflict is said
    empty = by_line[11]
    assert isinstance(empty, Rejected) and empty.reason == "missing_file"
    assert {(rec.source, getattr(rec, "cohort", None)) for rec in recs} == {("site", STUDY)}


def test_unreferenced_images_sorted_after_rows(tmp_path: Path) -> None:
    files = ["z.png", "b/orphan.PNG", "a/deep/x.JPEG", "a/y.dicom", "a/k.dcm", "notes.txt"]
    files += ["img.jpg", "noext"]
    rows = [["z.png", "normal", "p1"], ["gone.png", "normal", "p2"], ["a/k.dcm", "covid", "p3"]]
    root = export(tmp_path / "r", rows, files, HEADER[:3])
    recs = discover(root)
    assert [type(r).__name__ for r in recs[:3]] == ["Candidate", "Rejected", "Candidate"]
    assert recs[3:] == [
        Unreferenced("site", f"r/{f}")
        for f in ("a/deep/x.JPEG", "a/y.dicom", "b/orphan.PNG", "img.jpg")
    ]
    assert discover(root) == recs  # deterministic


def test_order_is_csv_order(tmp_path: Path) -> None:
    names = [f"d{i % 3}/f{(7 * i) % 10}.png" for i in range(10)]
    rows = [[n, "normal", f"p{i}"] for i, n in enumerate(names)]
    recs = discover(export(tmp_path / "r", rows, names, HEADER[:3]))
    assert [r.original_path for r in recs] == [f"r/{n}" for n in names]


# ------------------------------------------------------------------------------- label counts


def test_count_labels_equals_discovery(tmp_path: Path) -> None:
    rows = [
        ["n1.png", "normal", "p1"],
        ["n2.png", "No Finding", "p2"],
        ["b1.png", "bacteria", "p3"],
        ["c1.png", "COVID-19", "p4"],
        ["c1.png", "COVID-19", "p4"],  # duplicate: not counted
        ["q.png", "tuberculosis", "p5"],  # unknown
        ["../x.png", "whatever", "p6"],  # escapes, unknown label: unknown
        ["gone.png", "viral", "p7"],  # missing, known label: not counted
        ["v.png", "viral", ""],  # no patient: not counted
    ]
    root = export(tmp_path / "r", rows, ["n1.png", "n2.png", "b1.png", "c1.png", "q.png", "v.png"])
    source = CsvSource("site")
    expected = count_records(discover(root, source), source.labels)
    assert expected == {"normal": 2, "bacterial": 1, "viral": 0, "covid": 1, UNKNOWN_LABEL: 2}
    read: list[str] = []

    def read_file(rel: str) -> bytes:
        read.append(rel)
        return (root / rel).read_bytes()

    assert source.count_labels(listing(root), read_file, PARAMS) == expected
    assert read == ["labels.csv"]  # the CSV only, never an image
    # a row whose file the listing lacks is not counted
    fewer = [f for f in listing(root) if f != "n2.png"]
    assert source.count_labels(fewer, read_file, PARAMS)["normal"] == 1
    with pytest.raises(FileNotFoundError, match=r"labels\.csv"):
        source.count_labels(["n1.png"], read_file, PARAMS)


# ---------------------------------------------------------------------------------- the CSV


def test_missing_columns_named_with_the_csv_and_found_columns(tmp_path: Path) -> None:
    root = export(tmp_path / "r", [["a.png", "normal"]], [], ["Path", "Diagnosis", "Label"])
    with pytest.raises(ValueError) as err:
        discover(root)
    msg = str(err.value)
    assert str(root / "labels.csv") in msg
    assert "['patient_id']" in msg and "'Diagnosis'" in msg and "'Path'" in msg


def test_missing_csv_or_root(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    with pytest.raises(FileNotFoundError, match=r"r/labels\.csv"):
        discover(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        discover(tmp_path / "nowhere")


def test_encoding_errors_name_the_file(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "labels.csv").write_bytes("path,label,patient_id\né.png,normal,p\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"labels\.csv: not UTF-8"):
        discover(root)
    huge = "a" * 200_000  # over the csv module's field limit
    (root / "labels.csv").write_text(f"path,label,patient_id\na.png,normal,p\n{huge},normal,p\n")
    with pytest.raises(ValueError, match=r"labels\.csv: line 3: not readable as CSV"):
        discover(root)


def test_header_case_spaces_bom_and_semicolons(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "x.png").write_bytes(PNG)
    text = " Patient_ID ; PATH;Label ;Extra\r\n\r\np1;x.png;Virus;ignored\r\n"
    (root / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    rows = read_labels_csv(root / "labels.csv")
    assert [(r.line, r.path, r.label, r.patient_id, r.view) for r in rows] == [
        (3, "x.png", "Virus", "p1", "")
    ]
    (rec,) = discover(root)
    assert isinstance(rec, Candidate) and rec.label == "viral" and rec.finding == "Virus"


def test_labels_file_elsewhere_paths_stay_root_relative(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "meta").mkdir(parents=True)
    (root / "img").mkdir()
    (root / "img" / "a.png").write_bytes(PNG)
    (root / "meta" / "export.csv").write_text("path,label,patient_id\nimg/a.png,covid,p\n")
    source = CsvSource("site", labels_file="meta/export.csv")
    (rec,) = discover(root, source)
    assert isinstance(rec, Candidate) and rec.original_path == "r/img/a.png"
    counts = source.count_labels(listing(root), lambda rel: (root / rel).read_bytes(), PARAMS)
    assert counts["covid"] == 1


# ------------------------------------------------------------------------------------- object


def test_source_settings_checked_and_shown() -> None:
    source = CsvSource("hospital_b", "export/labels.csv", "pediatric")
    assert repr(source) == (
        "CsvSource(name='hospital_b', labels_file='export/labels.csv', population='pediatric')"
    )
    assert source.labels == ("normal", "bacterial", "viral", "covid")
    assert dict(source.datasets) == {
        "dataset_0": ("normal", "bacterial", "viral"),
        "dataset_1": ("normal", "bacterial", "covid"),
    }
    with pytest.raises(ValueError, match="must match"):
        CsvSource("Hospital-B")
    with pytest.raises(ValueError, match="population"):
        CsvSource("hospital_b", population="geriatric")
    for bad in ("../labels.csv", "/tmp/labels.csv", "."):
        with pytest.raises(ValueError, match="labels_file"):
            CsvSource("hospital_b", labels_file=bad)


def test_satisfies_the_source_protocol(tmp_path: Path) -> None:
    source: Source = CsvSource("csv_protocol_check")
    assert register_source(source) is source
    try:
        root = export(tmp_path / "r", [["a.png", "bacterial", "p"]], ["a.png"])
        assert Counter(type(r).__name__ for r in source.discover(root, PARAMS)) == {"Candidate": 1}
    finally:
        unregister_source("csv_protocol_check")
    assert os.environ[SALT_ENV] == SALT
