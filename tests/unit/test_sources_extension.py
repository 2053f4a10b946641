"""Adding a public dataset is one Source class plus a ``data.sources`` entry.

The RSNA Pneumonia Detection Challenge ships an images folder and a CSV of ``patientId,class``.
The source below is defined *only here*: ingest, validation, the split and the listing-based
label counts take it through the registry, with no change to the library.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrflow.config import IngestParams, SplitParams, SynthParams, ValidateParams
from cxrflow.data.ingest import ingest
from cxrflow.data.manifest import EXCLUDED_FILE, read_manifest
from cxrflow.data.phantom_render import render_radiograph
from cxrflow.data.sources import (
    Candidate,
    Excluded,
    ReadFile,
    Record,
    Rejected,
    Source,
    Unreferenced,
    count_records,
    register_source,
    unregister_source,
)
from cxrflow.data.split import split_manifest
from cxrflow.data.synthetic import generate_phantom
from cxrflow.data.validate import validate_manifest

LABELS_CSV = "stage_2_detailed_class_info.csv"
IMAGES = "images"


class RsnaSource:
    """RSNA Pneumonia: ``images/<patientId>.png`` and ``stage_2_detailed_class_info.csv``.

    ``Normal`` rows are adult normals; ``Lung Opacity`` is pneumonia of unknown cause (neither
    bacterial nor viral can be told), so it is excluded; any other class is undecidable.
    """

    name: ClassVar[str] = "rsna"
    population: ClassVar[str] = "adult"
    labels: ClassVar[tuple[str, ...]] = ("normal",)
    datasets: ClassVar[Mapping[str, tuple[str, ...]]] = {"dataset_1": ("normal",)}

    def discover(self, root: str | Path, params: IngestParams) -> Iterator[Record]:
        root = Path(root)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        base = root.resolve()
        yield from self._records(root.name, files, lambda rel: (root / rel).read_bytes(), base)

    def count_labels(
        self, files: Sequence[str], read_file: ReadFile, params: IngestParams
    ) -> dict[str, int]:
        return count_records(self._records(".", files, read_file, None), self.labels)

    def _records(
        self, root_name: str, files: Sequence[str], read_file: ReadFile, base: Path | None
    ) -> Iterator[Record]:
        table = pd.read_csv(io.BytesIO(read_file(LABELS_CSV)), dtype=str, keep_default_na=False)
        listed = set(files)
        referenced = set()
        for pid, cls in zip(table["patientId"], table["class"], strict=True):
            rel = f"{IMAGES}/{pid}.png"
            referenced.add(rel)
            original = f"{root_name}/{rel}"
            if cls == "Lung Opacity":
                detail = f"class={cls!r}"
                yield Excluded(
                    "rsna", original, "pneumonia_cause_unknown", detail, "other", rel in listed
                )
            elif cls != "Normal":
                yield Rejected("rsna", original, "unknown_label", f"class={cls!r}")
            elif rel not in listed:
                yield Rejected("rsna", original, "missing_file", f"no {rel}", "normal")
            else:
                path = str(base / rel) if base is not None else rel
                yield Candidate("rsna", path, original, "normal", f"rsna:{pid}", "PA", "adult")
        for rel in sorted(f for f in listed if f.startswith(f"{IMAGES}/") and f not in referenced):
            yield Unreferenced("rsna", f"{root_name}/{rel}")


def make_rsna(
    root: Path, rows: list[tuple[str, str]], missing: frozenset[str] = frozenset()
) -> Path:
    """Write ``rows`` (patientId, class) and one adult radiograph per row (unless ``missing``)."""
    (root / IMAGES).mkdir(parents=True)
    with open(root / LABELS_CSV, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patientId", "class"])
        w.writerows(rows)
    for i, (pid, _) in enumerate([*rows, ("orphan", "")]):
        if pid in missing:
            continue
        rng = np.random.default_rng(1000 + i)
        img = render_radiograph("normal", rng, (96, 96), {"age_group": "adult"})
        Image.fromarray(img).save(root / IMAGES / f"{pid}.png")
    return root


@pytest.fixture
def rsna() -> Iterator[Source]:
    source = register_source(RsnaSource())
    yield source
    unregister_source("rsna")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    params = SynthParams(patients_per_class=8, images_per_patient_max=2, min_side=96, max_side=128)
    generate_phantom(out, params)
    return out


@pytest.fixture
def rsna_root(tmp_path: Path) -> Path:
    rows = [(f"p{i:02d}", "Normal") for i in range(6)]
    rows += [("opac1", "Lung Opacity"), ("opac2", "Lung Opacity"), ("odd", "Not Normal")]
    rows += [("gone", "Normal")]
    return make_rsna(tmp_path / "rsna-stage2", rows, missing=frozenset({"gone", "odd"}))


def test_unregistered_source_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.sources\.rsna: unknown source 'rsna'.*kermany"):
        ingest(tmp_path / "ds", IngestParams(workers=1), {"rsna": [tmp_path]})


def test_third_source_through_ingest_validate_and_split(
    rsna: Source, rsna_root: Path, phantom: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    sources = {"kermany": [phantom / "kermany"], "rsna": [rsna_root]}
    rep = ingest(out, IngestParams(workers=1), sources, origin="phantom")

    assert rep.sources == {"kermany": [str(phantom / "kermany")], "rsna": [str(rsna_root)]}
    assert rep.considered == rep.kept + rep.quarantined + rep.excluded_by_filter + (
        rep.duplicates_collapsed
    )
    assert rep.considered_by_source["rsna"] == 10
    assert rep.stages["after_dedupe"]["rsna"] == {"normal": 6}
    assert rep.quarantine_by_source["rsna"] == {"missing_file": 1, "unknown_label": 1}
    assert rep.excluded_reasons == {"rsna": {"pneumonia_cause_unknown": 2}}
    assert rep.unreferenced_paths == ["rsna-stage2/images/orphan.png"]
    excluded = pd.read_csv(out / EXCLUDED_FILE, dtype=str, keep_default_na=False)
    assert excluded["original_path"].tolist() == [
        "rsna-stage2/images/opac1.png",
        "rsna-stage2/images/opac2.png",
    ]

    manifest = read_manifest(out)
    rsna_rows = manifest[manifest["source"] == "rsna"]
    assert rsna_rows["patient_id"].str.fullmatch(r"rsna:p\d\d").all()
    assert set(rsna_rows["age_group"]) == {"adult"}

    summary = validate_manifest(manifest, ValidateParams(min_per_class=3))
    assert summary.success, summary.failed

    tables, report = split_manifest(manifest, SplitParams())
    d1 = tables["dataset_1"]
    assert set(d1.loc[d1["source"] == "rsna", "label"]) == {"normal"}
    assert "rsna" not in set(tables["dataset_0"]["source"])  # RSNA gives dataset_0 nothing
    assert (d1.groupby("patient_id")["split"].nunique() == 1).all()
    # adult RSNA normals next to pediatric Kermany normals: normal no longer comes from one
    # population (bacterial still does)
    assert report.crosstabs["dataset_1.population"]["normal|adult"] == 6
    assert not any("single population" in w for w in report.confounds["dataset_1"])


def test_listing_counts_follow_discovery(rsna: Source, rsna_root: Path) -> None:
    files = sorted(p.relative_to(rsna_root).as_posix() for p in rsna_root.rglob("*") if p.is_file())
    counts = rsna.count_labels(files, lambda rel: (rsna_root / rel).read_bytes(), IngestParams())
    assert counts == count_records(rsna.discover(rsna_root, IngestParams()), rsna.labels)
    assert counts == {"normal": 6, "unknown": 1}


def test_manifest_of_an_unregistered_source_fails_validation(
    rsna: Source, rsna_root: Path, tmp_path: Path
) -> None:
    ingest(tmp_path / "ds", IngestParams(workers=1), [("rsna", rsna_root)], origin="phantom")
    manifest = read_manifest(tmp_path / "ds")
    unregister_source("rsna")
    try:
        summary = validate_manifest(manifest, ValidateParams(min_per_class=3))
        failed = {(f.expectation, f.column) for f in summary.failed}
        assert failed == {("expect_column_values_to_be_in_set", "source")}
    finally:
        register_source(rsna)
