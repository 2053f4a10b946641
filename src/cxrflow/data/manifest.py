"""The manifest: one row per ingested image, the contract between every step.

A *dataset directory* (the output of ingest, a KFP ``Dataset`` artifact or a DVC output) holds:

- ``manifest.csv``: :data:`MANIFEST_COLUMNS`, one row per kept image, sorted by ``image_id``:
  the ``study`` cohort (what datasets are built from) and the ``control`` cohort (same-source
  images kept for the shortcut audit, never trained on);
- ``images/``: the kept images, content-addressed (``images/<sha[:2]>/<sha256>.<ext>``);
- ``quarantine.csv``: :data:`QUARANTINE_COLUMNS`, one row per rejected input with a reason;
- ``excluded.csv``: :data:`EXCLUDED_COLUMNS`, one row per input outside a source's filter
  (e.g. a Cohen row that is not a COVID-19 frontal X-ray), with the reason and offending value;
- ``duplicates.csv``: :data:`DUPLICATE_COLUMNS`, every exact or near duplicate collapsed;
- ``ingest_report.json``: counts per stage, source and label, and the manifest hash.

Paths in ``manifest.csv`` are relative to the dataset directory so that it can be moved (to an
object store, a PVC, a DVC cache) without rewriting.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from cxrflow.data.sources import STUDY

if TYPE_CHECKING:  # pandas is heavy-ish; only typing needs it at import time
    import pandas as pd

MANIFEST_FILE = "manifest.csv"
QUARANTINE_FILE = "quarantine.csv"
EXCLUDED_FILE = "excluded.csv"
DUPLICATES_FILE = "duplicates.csv"
INGEST_REPORT_FILE = "ingest_report.json"
IMAGES_DIR = "images"

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",  # sha256[:16] of the original bytes
    "path",  # relative to the dataset dir
    "label",  # normal | bacterial | viral | covid
    "source",  # a registered source's name (cxrflow.data.sources): kermany | cohen
    "origin",  # real | phantom
    "patient_id",  # "<source>:<id>"; grouping key for splits
    "view",  # PA, AP, AP Supine, ... ("" when unknown)
    "age_group",  # pediatric | adult | unknown (exposes the source shortcut)
    "width",
    "height",
    "mode",  # PIL mode as stored: L or RGB
    "original_mode",  # PIL mode of the input file (RGBA, I;16, CMYK, ...)
    "sha256",  # of the original file bytes
    "phash",  # 64-bit perceptual hash, hex
    "original_path",  # as found, relative to the parent of the source root (includes its name)
    "source_split",  # the source's own split (Kermany train/test), "" if none
    "cohort",  # study | control (audit controls: only dataset_1_mixed takes some; .sources)
    "finding",  # the source's raw finding (Cohen's `finding`), "" if none
)
LEGACY_COLUMN_DEFAULTS: dict[str, str] = {"cohort": STUDY, "finding": ""}
"""Columns added after the first manifests were written, and what an older manifest means:
one written before controls existed holds study rows only."""

QUARANTINE_COLUMNS: tuple[str, ...] = ("source", "original_path", "reason", "detail")

EXCLUDED_COLUMNS: tuple[str, ...] = (
    "source",
    "original_path",
    "label",  # the label it would have had, or the source's placeholder (Cohen: other)
    "reason",  # e.g. not_covid_finding | modality_not_xray | view_not_frontal
    "detail",  # the offending value, e.g. finding='SARS'
    "file_present",  # true | false: whether the referenced file exists
)

DUPLICATE_COLUMNS: tuple[str, ...] = (
    "kind",  # exact | near
    "kept_image_id",
    "dropped_original_path",
    "dropped_source",
    "kept_original_path",
    "kept_source",
    "distance",  # Hamming distance of the perceptual hashes (0 for exact)
)

SPLIT_COLUMNS: tuple[str, ...] = (*MANIFEST_COLUMNS, "dataset", "split")
"""Columns of ``dataset_0.csv`` / ``dataset_1.csv`` in a splits directory."""
SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Values of the ``split`` column."""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_hash(df: pd.DataFrame) -> str:
    """Content hash of a manifest: stable under row order, independent of the CSV writer.

    Hashes the sorted ``(image_id, label, patient_id, source, sha256)`` tuples, which is what
    determines the data a model sees.
    """
    cols = ["image_id", "label", "patient_id", "source", "sha256"]
    rows = sorted(map(tuple, df[cols].astype(str).itertuples(index=False, name=None)))
    h = hashlib.sha256()
    for row in rows:
        h.update(("\x1f".join(row) + "\n").encode())
    return h.hexdigest()


def read_manifest(dataset_dir: str | Path) -> pd.DataFrame:
    """Read ``manifest.csv`` from a dataset directory with the right dtypes.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming missing columns.
    """
    import pandas as pd

    path = Path(dataset_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found (run `cxrflow ingest` first)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col, value in LEGACY_COLUMN_DEFAULTS.items():
        if col not in df.columns:
            df[col] = value
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing manifest columns {missing}")
    df["width"] = df["width"].astype(int)
    df["height"] = df["height"].astype(int)
    return df


def write_table(df: pd.DataFrame, path: str | Path, columns: tuple[str, ...]) -> None:
    """Write a CSV with exactly ``columns`` in that order, atomically (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    df.reindex(columns=list(columns)).to_csv(tmp, index=False)
    tmp.replace(path)
