"""Tests of the phantom generator: real layouts, reproducibility, traps and class signal."""

from __future__ import annotations

import csv
import hashlib
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrflow.config import SynthParams
from cxrflow.data.phantom_render import render_radiograph
from cxrflow.data.synthetic import PhantomSummary, generate_phantom

REAL_COHEN_HEADER = [
    "patientid",
    "offset",
    "sex",
    "age",
    "finding",
    "survival",
    "intubated",
    "intubation_present",
    "went_icu",
    "in_icu",
    "needed_supplemental_O2",
    "extubated",
    "temperature",
    "pO2_saturation",
    "leukocyte_count",
    "neutrophil_count",
    "lymphocyte_count",
    "view",
    "modality",
    "date",
    "location",
    "folder",
    "filename",
    "doi",
    "url",
    "license",
    "clinical_notes",
    "other_notes",
    "",  # the real file ends its header with a comma: one unnamed column
]
REAL_COHEN_METADATA = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "cohen-2020-06-22" / "metadata.csv"
)

NORMAL_RE = re.compile(r"^(?P<patient>(?:NORMAL2-)?IM-\d{4,})-(?P<image>\d{4})\.jpeg$")
PNEUMONIA_RE = re.compile(r"^person(?P<patient>\d+)_(?P<kind>bacteria|virus)_(?P<image>\d+)\.jpeg$")
COHEN_FILE_RE = re.compile(r"^\d{6}-\d+\.(jpeg|jpg|png)$")
DATE_RE = re.compile(r"^(January|February|March|April|May|June|July|August) \d{1,2}, 2020$")
FRONTAL = {"PA", "AP", "AP Supine"}

PARAMS = SynthParams(
    patients_per_class=4, images_per_patient_max=3, min_side=64, max_side=96, seed=11
)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read_metadata(cohen_dir: Path) -> list[dict[str, str]]:
    with open(cohen_dir / "metadata.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _kermany_files(kermany_dir: Path) -> list[tuple[str, str, str, re.Match[str]]]:
    """(split, class folder, label, name match) for every Kermany image; fails on a bad name."""
    out = []
    for path in sorted(kermany_dir.rglob("*")):
        if path.is_dir():
            continue
        split, folder = path.parent.parent.name, path.parent.name
        if folder == "NORMAL":
            m = NORMAL_RE.match(path.name)
            label = "normal"
        else:
            m = PNEUMONIA_RE.match(path.name)
            label = "bacterial" if m and m["kind"] == "bacteria" else "viral"
        assert m, f"unexpected Kermany file name {path}"
        out.append((split, folder, label, m))
    return out


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> PhantomSummary:
    return generate_phantom(tmp_path_factory.mktemp("phantom"), PARAMS)


def test_summary_points_at_the_real_layout_roots(phantom: PhantomSummary) -> None:
    out = phantom.kermany_dir.parent.parent
    assert phantom.kermany_dir == out / "kermany" / "chest_xray"
    assert phantom.cohen_dir == out / "cohen"
    assert phantom.sources == {"kermany": [phantom.kermany_dir], "cohen": [phantom.cohen_dir]}
    assert sorted(p.name for p in phantom.kermany_dir.iterdir()) == ["test", "train"]
    for split in ("train", "test"):
        assert sorted(p.name for p in (phantom.kermany_dir / split).iterdir()) == [
            "NORMAL",
            "PNEUMONIA",
        ]
    assert sorted(p.name for p in phantom.cohen_dir.iterdir()) == [
        "PHANTOM.md",
        "images",
        "metadata.csv",
    ]
    assert set(phantom.counts) == {"normal", "bacterial", "viral", "covid", "cohen_other"}


def test_phantom_note_names_params_and_seed(phantom: PhantomSummary) -> None:
    note = (phantom.kermany_dir.parent.parent / "PHANTOM.md").read_text()
    assert "synthetic" in note.lower()
    assert "not real patients" in note
    assert f"`seed`: {PARAMS.seed}" in note
    assert f"`patients_per_class`: {PARAMS.patients_per_class}" in note
    assert "in progress" not in note


def test_kermany_names_follow_the_real_patterns(phantom: PhantomSummary) -> None:
    files = _kermany_files(phantom.kermany_dir)
    images_per_patient: dict[tuple[str, str], list[int]] = defaultdict(list)
    running: dict[str, list[int]] = defaultdict(list)
    kind_of_person: dict[str, set[str]] = defaultdict(set)
    for _split, _folder, label, m in files:
        images_per_patient[(label, m["patient"])].append(int(m["image"]))
        if label != "normal":
            running[m["kind"]].append(int(m["image"]))
            kind_of_person[m["patient"]].add(m["kind"])
    # Normals: one IM-xxxx per patient, images numbered -0001, -0002, ... without gaps.
    for (label, _), numbers in images_per_patient.items():
        if label == "normal":
            assert sorted(numbers) == list(range(1, len(numbers) + 1))
    assert max(len(v) for v in images_per_patient.values()) >= 2, "no multi-image patient"
    # Pneumonia: M runs 1..K within each kind, unique, as in the real data.
    for numbers in running.values():
        assert sorted(numbers) == list(range(1, len(numbers) + 1))
    # Each phantom patient has one diagnosis.
    assert all(len(kinds) == 1 for kinds in kind_of_person.values())


def test_kermany_images_are_grayscale_jpegs_within_size_limits(phantom: PhantomSummary) -> None:
    for path in phantom.kermany_dir.rglob("*.jpeg"):
        with Image.open(path) as im:
            assert im.format == "JPEG"
            assert im.mode == "L"
            w, h = im.size
        assert PARAMS.min_side <= min(w, h) and max(w, h) <= PARAMS.max_side, path
        assert 0.7 <= w / h <= 1.35, path


def test_patients_per_class_and_counts_match_the_files(phantom: PhantomSummary) -> None:
    files = _kermany_files(phantom.kermany_dir)
    per_label: dict[str, int] = defaultdict(int)
    patients: dict[str, set[str]] = defaultdict(set)
    for _split, _folder, label, m in files:
        per_label[label] += 1
        patients[label].add(m["patient"])
    rows = _read_metadata(phantom.cohen_dir)
    covid = [
        r
        for r in rows
        if r["finding"] == "COVID-19" and r["modality"] == "X-ray" and r["view"] in FRONTAL
    ]
    per_label["covid"] = len(covid)
    patients["covid"] = {r["patientid"] for r in covid}
    for label in ("normal", "bacterial", "viral", "covid"):
        assert per_label[label] == phantom.counts[label], label
        assert len(patients[label]) == PARAMS.patients_per_class, label
        assert PARAMS.patients_per_class <= per_label[label]
        assert per_label[label] <= PARAMS.patients_per_class * PARAMS.images_per_patient_max
    assert len(rows) - len(covid) == phantom.counts["cohen_other"]
    assert phantom.counts["cohen_other"] > 0


def test_a_patient_never_spans_train_and_test(phantom: PhantomSummary) -> None:
    splits: dict[tuple[str, str], set[str]] = defaultdict(set)
    for split, _folder, label, m in _kermany_files(phantom.kermany_dir):
        splits[(label, m["patient"])].add(split)
    assert all(len(s) == 1 for s in splits.values()), splits
    for label in ("normal", "bacterial", "viral"):
        per_split = {s for (lab, _), ss in splits.items() if lab == label for s in ss}
        assert per_split == {"train", "test"}, label


def test_metadata_header_is_exactly_the_real_one(phantom: PhantomSummary) -> None:
    first_line = (phantom.cohen_dir / "metadata.csv").read_text(encoding="utf-8").split("\n")[0]
    assert first_line.split(",") == REAL_COHEN_HEADER
    assert first_line.endswith("other_notes,")


@pytest.mark.realdata
def test_metadata_header_equals_the_real_file(phantom: PhantomSummary) -> None:
    if not REAL_COHEN_METADATA.is_file():
        pytest.skip(f"{REAL_COHEN_METADATA} not present")
    with open(REAL_COHEN_METADATA, newline="", encoding="utf-8") as fh:
        real_header = next(csv.reader(fh))
    with open(phantom.cohen_dir / "metadata.csv", newline="", encoding="utf-8") as fh:
        assert next(csv.reader(fh)) == real_header


def test_metadata_rows_and_files_agree(phantom: PhantomSummary) -> None:
    rows = _read_metadata(phantom.cohen_dir)
    names = [r["filename"] for r in rows]
    assert len(names) == len(set(names))
    on_disk = {p.name for p in (phantom.cohen_dir / "images").iterdir()}
    assert set(names) == on_disk
    assert all(COHEN_FILE_RE.match(n) for n in names), names
    assert {n.rsplit(".", 1)[1] for n in names} >= {"png", "jpg"}
    for r in rows:
        assert r["folder"] == "images"
        assert r["license"] == "CC0 (synthetic phantom)"
        assert r["clinical_notes"] == "PHANTOM synthetic image, not a real patient"
        assert 30 <= int(r["age"]) <= 85
        assert r["sex"] in {"M", "F"}
        assert DATE_RE.match(r["date"]), r["date"]
        assert r[""] == ""  # the unnamed trailing column stays empty
        with Image.open(phantom.cohen_dir / "images" / r["filename"]) as im:
            assert im.mode == "L"
            assert im.format == ("PNG" if r["filename"].endswith(".png") else "JPEG")


def test_cohen_covid_patients_have_follow_up_offsets(phantom: PhantomSummary) -> None:
    offsets: dict[str, list[int]] = defaultdict(list)
    for r in _read_metadata(phantom.cohen_dir):
        if r["finding"] == "COVID-19" and r["view"] in FRONTAL:
            offsets[r["patientid"]].append(int(r["offset"]))
    for values in offsets.values():
        assert values[0] == 0
        assert values == sorted(set(values))  # strictly increasing: 0, 3, 7, ...
    assert max(len(v) for v in offsets.values()) >= 2


def test_cohen_trap_rows_are_present(phantom: PhantomSummary) -> None:
    rows = _read_metadata(phantom.cohen_dir)
    covid_patients = {
        r["patientid"] for r in rows if r["finding"] == "COVID-19" and r["view"] in FRONTAL
    }
    lateral = [r for r in rows if r["view"] == "L"]
    ct = [r for r in rows if r["modality"] == "CT"]
    other = [r for r in rows if r["finding"] != "COVID-19"]
    n_frontal = phantom.counts["covid"]
    assert len(lateral) == max(1, round(PARAMS.covid_lateral_fraction * n_frontal))
    assert all(r["finding"] == "COVID-19" and r["modality"] == "X-ray" for r in lateral)
    assert {r["patientid"] for r in lateral} <= covid_patients
    assert len(ct) >= 2
    assert all(r["finding"] == "COVID-19" and r["view"] == "Axial" for r in ct)
    assert {"Streptococcus", "No Finding"} <= {r["finding"] for r in other}
    assert not {r["patientid"] for r in other} & covid_patients
    assert phantom.counts["cohen_other"] == len(lateral) + len(ct) + len(other)


def test_no_lateral_rows_when_the_fraction_is_zero(tmp_path: Path) -> None:
    params = SynthParams(
        patients_per_class=2, images_per_patient_max=2, min_side=32, max_side=48,
        covid_lateral_fraction=0.0,
    )  # fmt: skip
    summary = generate_phantom(tmp_path, params)
    assert not [r for r in _read_metadata(summary.cohen_dir) if r["view"] == "L"]


def test_same_params_give_byte_identical_files(phantom: PhantomSummary, tmp_path: Path) -> None:
    first = _tree_digest(phantom.kermany_dir.parent.parent)
    again = generate_phantom(tmp_path / "again", PARAMS)
    assert again.counts == phantom.counts
    assert _tree_digest(tmp_path / "again") == first
    # Regenerating over a previous phantom replaces it with the same bytes.
    generate_phantom(tmp_path / "again", PARAMS)
    assert _tree_digest(tmp_path / "again") == first


def test_another_seed_gives_other_images(phantom: PhantomSummary, tmp_path: Path) -> None:
    other = generate_phantom(tmp_path, SynthParams(**{**PARAMS.__dict__, "seed": PARAMS.seed + 1}))
    a = set(_tree_digest(phantom.cohen_dir / "images").values())
    b = set(_tree_digest(other.cohen_dir / "images").values())
    assert not a & b


def test_few_frontal_images_are_perceptual_near_duplicates(phantom: PhantomSummary) -> None:
    # Ingest collapses images within a perceptual-hash distance of 4: the phantom must vary
    # enough (pose, anatomy, exposure) that this removes few of its images.
    imagehash = pytest.importorskip("imagehash")
    rows = _read_metadata(phantom.cohen_dir)
    paths = sorted(phantom.kermany_dir.rglob("*.jpeg")) + [
        phantom.cohen_dir / "images" / r["filename"] for r in rows if r["view"] in FRONTAL
    ]
    hashes = []
    for path in paths:
        with Image.open(path) as im:
            hashes.append(imagehash.phash(im).hash.flatten())
    bits = np.array(hashes)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    np.fill_diagonal(dist, 64)
    assert (dist.min(1) <= 4).mean() < 0.1


def test_refuses_to_overwrite_a_folder_that_is_not_a_phantom(tmp_path: Path) -> None:
    real = tmp_path / "kermany" / "chest_xray" / "train" / "NORMAL" / "IM-0001-0001.jpeg"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"real image")
    with pytest.raises(FileExistsError, match=r"PHANTOM\.md"):
        generate_phantom(tmp_path, PARAMS)
    assert real.read_bytes() == b"real image"


# ---------------------------------------------------------------------------------------------
# Rendering: shape, determinism, anatomy and class signal

SIZE = (128, 128)
FIXED_POSE = {"position": (0.0, 0.0), "zoom": 1.0, "side_marker": False, "annotation": False}


def _render(label: str, seed: int, **traits: object) -> np.ndarray:
    return render_radiograph(label, np.random.default_rng(seed), SIZE, {**FIXED_POSE, **traits})


def _lung_mask(label: str, seed: int, **traits: object) -> np.ndarray:
    """Where the lungs are: the only pixels that change with the lung darkness trait."""
    bright = _render(label, seed, **traits, lung_dark=0.0).astype(int)
    dark = _render(label, seed, **traits, lung_dark=0.4).astype(int)
    return (bright - dark) > 12


def test_render_returns_uint8_of_the_requested_size() -> None:
    img = render_radiograph("covid", np.random.default_rng(0), (70, 90))
    assert img.dtype == np.uint8
    assert img.shape == (70, 90)
    assert 20 < img.mean() < 235 and img.std() > 20  # not blank
    assert np.array_equal(img, render_radiograph("covid", np.random.default_rng(0), (70, 90)))


@pytest.mark.parametrize(
    "traits", [{"view": "L"}, {"modality": "CT", "view": "Axial"}, {"view": "AP Supine"}]
)
def test_render_other_views_and_modalities(traits: dict[str, str]) -> None:
    img = render_radiograph("covid", np.random.default_rng(3), (64, 64), traits)
    assert img.shape == (64, 64) and img.std() > 10


def test_render_rejects_unknown_labels_and_tiny_sizes() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="label"):
        render_radiograph("covid-19", rng, (64, 64))
    with pytest.raises(ValueError, match="size"):
        render_radiograph("normal", rng, (4, 64))


def test_lungs_are_darker_than_the_mediastinum() -> None:
    img = _render("normal", 5, age_group="adult").astype(float)
    lungs = _lung_mask("normal", 5, age_group="adult")
    assert 0.12 < lungs.mean() < 0.5
    mediastinum = img[40:90, 60:68]  # image centre column: spine, heart
    assert img[lungs].mean() + 30 < mediastinum.mean()
    assert img[lungs].mean() > img[:, :3].mean() - 10  # background is darkest


def test_pediatric_thorax_is_smaller_and_rounder_than_adult() -> None:
    def extent(age_group: str) -> tuple[float, float]:
        heights, ratios = [], []
        for seed in range(8):
            mask = _lung_mask("normal", seed, age_group=age_group)
            rows, cols = np.nonzero(mask)
            h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
            heights.append(h / SIZE[0])
            ratios.append(w / h)
        return float(np.mean(heights)), float(np.mean(ratios))

    ped_height, ped_ratio = extent("pediatric")
    adult_height, adult_ratio = extent("adult")
    assert ped_height + 0.08 < adult_height
    assert ped_ratio > adult_ratio + 0.1


def _paired_lung_means(
    label: str, age_group: str, seeds: range
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per seed: lung mean (diseased - normal) for the image-left and image-right lungs, and
    the lower-lateral minus upper-medial difference of that excess."""
    left, right, periph = [], [], []
    for seed in seeds:
        traits = {"age_group": age_group, "severity": 0.8}
        mask = _lung_mask(label, seed, **traits)
        diff = _render(label, seed, **traits).astype(float) - _render("normal", seed, **traits)
        cols = np.arange(SIZE[1])[None, :]
        rows = np.arange(SIZE[0])[:, None]
        lm, rm = mask & (cols < SIZE[1] // 2), mask & (cols >= SIZE[1] // 2)
        left.append(diff[lm].mean())
        right.append(diff[rm].mean())
        # Lower half of the lung fields, outer third of the image vs upper half, inner part.
        r0, r1 = np.nonzero(mask.any(1))[0][[0, -1]]
        lower = rows > (r0 + r1) / 2
        lateral = np.abs(cols - SIZE[1] / 2) > SIZE[1] * 0.25
        periph.append(diff[mask & lower & lateral].mean() - diff[mask & ~lower & ~lateral].mean())
    return np.array(left), np.array(right), np.array(periph)


def test_bacterial_consolidates_one_lung() -> None:
    left, right = _paired_lung_means("bacterial", "pediatric", range(16))[:2]
    worse, better = np.maximum(left, right), np.minimum(left, right)
    assert worse.mean() > 12  # a dense opacity in the affected lung
    assert worse.mean() > 3 * max(better.mean(), 1.0)  # the other lung is (nearly) clear


def test_viral_is_bilateral_and_diffuse() -> None:
    left, right = _paired_lung_means("viral", "pediatric", range(16))[:2]
    assert left.mean() > 6 and right.mean() > 6
    assert np.mean(np.minimum(left, right) / np.maximum(left, right)) > 0.5


def test_covid_is_bilateral_peripheral_and_lower_zone() -> None:
    left, right, periph = _paired_lung_means("covid", "adult", range(16))
    assert left.mean() > 6 and right.mean() > 6
    assert periph.mean() > 5  # lower-zone periphery brighter than upper inner lung
    assert (periph > 0).mean() >= 0.75


def test_phantom_label_travels_with_each_source_tree(tmp_path: Path) -> None:
    from cxrflow.data.synthetic import is_phantom

    phantom = generate_phantom(tmp_path / "ph", SynthParams(patients_per_class=2, seed=3))
    assert is_phantom(phantom.kermany_dir)
    assert is_phantom(phantom.cohen_dir)
    assert (phantom.kermany_dir.parent / "PHANTOM.md").is_file()
    assert not is_phantom(tmp_path)


# ---------------------------------------------------------------------------------------------
# Audit options: controls, no source shortcut, a planted marker


def test_other_findings_become_controls_at_ingest(phantom: PhantomSummary, tmp_path: Path) -> None:
    """Streptococcus / No Finding / SARS rows are frontal adult X-rays: the audit's controls."""
    from cxrflow.config import IngestParams
    from cxrflow.data.ingest import ingest
    from cxrflow.data.manifest import read_manifest

    rep = ingest(tmp_path, IngestParams(workers=1), phantom.sources, origin="phantom")
    rows = _read_metadata(phantom.cohen_dir)
    other = [r for r in rows if r["finding"] != "COVID-19"]
    assert all(r["view"] in FRONTAL and r["modality"] == "X-ray" for r in other)
    m = read_manifest(tmp_path)
    controls = m[m["cohort"] == "control"]
    assert set(controls["source"]) == {"cohen"} and set(controls["age_group"]) == {"adult"}
    expected = {f: sum(r["finding"] == f for r in other) for f in {r["finding"] for r in other}}
    assert rep.controls_by_finding["cohen"] == expected  # no duplicate among them
    label = {"Streptococcus": "bacterial", "No Finding": "normal", "SARS": "viral"}
    pairs = zip(controls["finding"], controls["label"], strict=True)
    assert all(label[f] == lab for f, lab in pairs)
    assert rep.excluded_reasons["cohen"].get("not_covid_finding", 0) == 0  # PARAMS: 2 findings


def test_control_fraction_sets_the_other_findings(tmp_path: Path) -> None:
    params = SynthParams(
        patients_per_class=8, images_per_patient_max=1, min_side=32, max_side=40,
        control_fraction=0.5, seed=4,
    )  # fmt: skip
    rows = _read_metadata(generate_phantom(tmp_path, params).cohen_dir)
    patients = {r["patientid"]: r["finding"] for r in rows if r["finding"] != "COVID-19"}
    assert sorted(patients.values()) == sorted(
        ["Streptococcus", "No Finding", "SARS", "Pneumocystis"]
    )


def test_planted_marker_is_burned_into_one_label_only(tmp_path: Path) -> None:
    from cxrflow.data.synthetic import MARKER_COLS, MARKER_ROWS

    marked = generate_phantom(
        tmp_path / "m", SynthParams(**{**PARAMS.__dict__, "planted_marker": "covid"})
    )
    plain = generate_phantom(tmp_path / "p", PARAMS)
    assert marked.counts == plain.counts
    a, b = _tree_digest(tmp_path / "m"), _tree_digest(tmp_path / "p")
    changed = {k for k in a if a[k] != b[k] and not k.endswith("PHANTOM.md")}
    covid = {f"cohen/images/{r['filename']}" for r in _read_metadata(marked.cohen_dir)
             if r["finding"] == "COVID-19"}  # fmt: skip
    assert changed == covid  # frontal, lateral and CT: every covid image, nothing else
    for rel in sorted(changed):
        with Image.open(tmp_path / "m" / rel) as im1, Image.open(tmp_path / "p" / rel) as im2:
            x, y = np.asarray(im1, dtype=float), np.asarray(im2, dtype=float)
        h, w = x.shape
        r0, r1 = (round(f * h) for f in MARKER_ROWS)
        c0, c1 = (round(f * w) for f in MARKER_COLS)
        assert x[r0 + 1 : r1 - 1, c0 + 1 : c1 - 1].min() > 235, rel  # white (JPEG ringing aside)
        outside = np.ones_like(x, dtype=bool)
        outside[max(r0 - 8, 0) : r1 + 8, max(c0 - 8, 0) : c1 + 8] = False
        assert np.abs(x - y)[outside].max() <= 24, rel  # the rest is the same radiograph
    assert "Planted shortcut: every `covid` image" in (tmp_path / "m" / "PHANTOM.md").read_text()


def test_without_source_shortcut_ages_and_views_are_not_tied_to_the_source(
    tmp_path: Path,
) -> None:
    params = SynthParams(**{**PARAMS.__dict__, "patients_per_class": 12, "source_shortcut": False})
    summary = generate_phantom(tmp_path, params)
    rows = _read_metadata(summary.cohen_dir)
    frontal = [r for r in rows if r["view"] in FRONTAL]
    ages = [int(r["age"]) for r in frontal]
    assert min(ages) < 18 <= 30 <= max(ages)  # children and adults in Cohen's collection
    assert {r["view"] for r in frontal if r["finding"] != "COVID-19"} >= {"PA"}
    assert "None by anatomy" in (tmp_path / "PHANTOM.md").read_text()
    # the same files and names as with the shortcut: only pixels (and ages, views) differ
    plain = generate_phantom(
        tmp_path / "plain", SynthParams(**{**params.__dict__, "source_shortcut": True})
    )
    assert set(_tree_digest(summary.kermany_dir)) == set(_tree_digest(plain.kermany_dir))
    assert summary.counts == plain.counts


def test_marker_param_must_name_a_label() -> None:
    from cxrflow.config import ParamsError, params_from_dict

    with pytest.raises(ParamsError, match=r"data\.synth\.planted_marker"):
        params_from_dict({"data": {"synth": {"planted_marker": "dog"}}})
