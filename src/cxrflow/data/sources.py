"""Source layout readers: Kermany's folders and Cohen's ``metadata.csv`` -> candidate records.

Readers only look at names, folders and metadata; they never decode an image (that is
:func:`cxrflow.data.images.inspect_image`'s job, run in parallel by ingest). Every input they see
ends up as exactly one record:

- :class:`Candidate`: to be inspected (and then kept, quarantined or collapsed as a duplicate);
- :class:`Rejected`: quarantined from its name or metadata alone (unknown label, missing file,
  path escaping the source root);
- :class:`Excluded`: a Cohen row outside the configured filter (not COVID-19, CT, lateral view).
  Exclusion is a decision, not a data error, so it is counted but not quarantined.

``original_path`` is always the path relative to the *parent* of the source root, so it starts
with the root folder's name (``kermany/dataset/train/NORMAL/x.jpeg``,
``cohen-2020-06-22/images/y.jpg``) and tells several Cohen roots apart.

Patient ids (``<source>:<id>``) are the grouping key of the patient-level split:

- Kermany pneumonia: ``kermany:personN`` from ``personN_bacteria_M.jpeg`` /
  ``personN_virus_M.jpeg``.
- Kermany normal: file names (``IM-xxxx-yyyy``, ``NORMAL2-IM-xxxx-yyyy``) carry **no reliable
  patient id**. We group conservatively by the ``IM-xxxx`` (or ``NORMAL2-IM-xxxx``) prefix, i.e.
  all ``-yyyy`` variants of one study number count as one patient; different study numbers may
  still be one child, which no file name can reveal.
- Names matching neither pattern get ``kermany:file:<stem>`` (one patient per file) and are
  logged.
- Cohen: ``cohen:<patientid>`` (the same id space across snapshots of the collection).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cxrflow.config import CohenFilter

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

KERMANY = "kermany"
COHEN = "cohen"
KERMANY_SPLITS: tuple[str, ...] = ("train", "test", "val")
KERMANY_CONTAINERS: tuple[str, ...] = ("chest_xray", "dataset")
COHEN_REQUIRED_COLUMNS: tuple[str, ...] = (
    "patientid",
    "finding",
    "view",
    "modality",
    "folder",
    "filename",
)
COHEN_IMAGES_DIR = "images"
UNKNOWN_LABEL = "unknown"
"""Label recorded for an input whose label could not be derived (it is quarantined)."""
OTHER_FINDING = "other"
"""Label recorded for a Cohen row whose finding is outside the filter (it is excluded)."""

_PNEUMONIA_KIND = re.compile(r"_(bacteria|virus)(?=[_\s.\-]|$)", re.IGNORECASE)
_PERSON = re.compile(r"^(person\d+)(?=_)", re.IGNORECASE)
_NORMAL_STUDY = re.compile(r"^((?:NORMAL2-)?IM-\d+)(?=-)", re.IGNORECASE)


@dataclass(frozen=True)
class Candidate:
    """An input that passed the layout/metadata checks and now needs image inspection.

    Attributes:
        source: ``kermany`` or ``cohen``.
        path: Absolute path of the file to read.
        original_path: Path relative to the parent of the source root.
        label: ``normal``, ``bacterial``, ``viral`` or ``covid``.
        patient_id: ``<source>:<id>``.
        view: Radiographic view (``PA``, ``AP Supine``, ...); ``""`` when unknown.
        age_group: ``pediatric``, ``adult`` or ``unknown``.
        source_split: The source's own split (Kermany ``train``/``test``/``val``), else ``""``.
    """

    source: str
    path: str
    original_path: str
    label: str
    patient_id: str
    view: str = ""
    age_group: str = "unknown"
    source_split: str = ""


@dataclass(frozen=True)
class Rejected:
    """An input quarantined before inspection.

    Attributes:
        source: ``kermany`` or ``cohen``.
        original_path: Path relative to the parent of the source root (as written in the
            metadata for Cohen rows, even when it escapes the root).
        reason: ``unknown_label``, ``unknown_label_folder``, ``path_escape`` or ``missing_file``.
        detail: One line for a person.
        label: The label the input would have had, or :data:`UNKNOWN_LABEL`.
    """

    source: str
    original_path: str
    reason: str
    detail: str
    label: str = UNKNOWN_LABEL


@dataclass(frozen=True)
class Excluded:
    """A Cohen metadata row outside :class:`~cxrflow.config.CohenFilter` (not quarantined).

    Attributes:
        source: ``cohen``.
        original_path: Path relative to the parent of the source root.
        reason: ``not_covid_finding``, ``modality_not_xray`` or ``view_not_frontal``.
        detail: The offending value.
        label: ``covid`` when the finding matched (then modality or view failed), else
            :data:`OTHER_FINDING`.
        file_present: Whether the referenced file exists inside the root (for reporting only).
    """

    source: str
    original_path: str
    reason: str
    detail: str
    label: str
    file_present: bool


@dataclass
class CohenDiscovery:
    """Result of :func:`discover_cohen`: one record per metadata row, plus unreferenced images.

    ``rows == len(candidates) + len(excluded) + len(rejected)`` always holds.

    Attributes:
        root: The Cohen root that was read.
        metadata_csv: The metadata file that was read.
        rows: Number of metadata rows.
        candidates: Rows that passed the filter and point to an existing file inside the root.
        excluded: Rows outside the filter.
        rejected: Rows that passed the filter but point outside the root or to no file.
        unreferenced: ``original_path`` of files in ``images/`` that no row references (not
            candidates: with no metadata there is no label).
    """

    root: Path
    metadata_csv: Path
    rows: int
    candidates: list[Candidate] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    unreferenced: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ Kermany


def find_kermany_root(root: str | Path) -> Path:
    """The directory holding Kermany's split folders.

    Accepts the split parent itself (``train/``, ``test/``, optional ``val/``; at least one of
    them) or a directory containing ``chest_xray/`` or ``dataset/`` with them.

    Raises:
        FileNotFoundError: When none of these layouts is found.
    """
    root = Path(root)
    for cand in (root, *(root / c for c in KERMANY_CONTAINERS)):
        if any((cand / split).is_dir() for split in KERMANY_SPLITS):
            return cand
    raise FileNotFoundError(
        f"{root}: no Kermany layout found (expected train/, test/ or val/ in it, "
        f"or in {' or '.join(c + '/' for c in KERMANY_CONTAINERS)} below it)"
    )


def kermany_label(class_folder: str, filename: str) -> str | None:
    """Label of a Kermany file from its class folder and name; ``None`` when undecidable.

    ``NORMAL`` -> ``normal``; ``PNEUMONIA`` -> ``bacterial`` for ``_bacteria_`` in the name,
    ``viral`` for ``_virus_`` (the token may also end at a space, dot or dash), ``None`` when
    neither or both appear.
    """
    folder = class_folder.upper()
    if folder == "NORMAL":
        return "normal"
    if folder != "PNEUMONIA":
        return None
    kinds = {m.lower() for m in _PNEUMONIA_KIND.findall(filename)}
    if kinds == {"bacteria"}:
        return "bacterial"
    if kinds == {"virus"}:
        return "viral"
    return None


def kermany_patient_id(filename: str) -> str:
    """``kermany:personN`` (pneumonia), ``kermany:[NORMAL2-]IM-xxxx`` (normal, conservative
    grouping by study number) or ``kermany:file:<stem>`` when the name matches neither."""
    if m := _PERSON.match(filename):
        return f"{KERMANY}:{m.group(1).lower()}"
    if m := _NORMAL_STUDY.match(filename):
        return f"{KERMANY}:{m.group(1).upper()}"
    return f"{KERMANY}:file:{Path(filename).stem}"


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def discover_kermany(root: str | Path) -> Iterator[Candidate | Rejected]:
    """Walk Kermany's ``{train,test,val}/{NORMAL,PNEUMONIA}`` layout, in sorted order.

    Every file under a split folder yields one record: a :class:`Candidate`, or a
    :class:`Rejected` with reason ``unknown_label`` (a PNEUMONIA file named neither
    ``_bacteria_`` nor ``_virus_``) or ``unknown_label_folder`` (any other folder under a split,
    or a file directly in a split folder). Directories next to the split folders (``__MACOSX``,
    ...) are not part of the dataset; they are logged and skipped.

    Args:
        root: See :func:`find_kermany_root`.

    Raises:
        FileNotFoundError: When no Kermany layout is found.
    """
    base = find_kermany_root(root).absolute()
    base_resolved = base.resolve()
    parent = Path(root).absolute().parent
    others = sorted(
        p.name for p in base.iterdir() if p.is_dir() and p.name.lower() not in KERMANY_SPLITS
    )
    if others:
        log.info("kermany: %s: not split folders, skipped: %s", base, others)
    n_fallback = 0
    for split_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        split = split_dir.name.lower()
        if split not in KERMANY_SPLITS:
            continue
        for entry in sorted(split_dir.iterdir()):
            files = _files_under(entry) if entry.is_dir() else [entry] if entry.is_file() else []
            for f in files:
                rel = f.relative_to(parent).as_posix()
                if not f.resolve().is_relative_to(base_resolved):
                    yield Rejected(
                        KERMANY,
                        rel,
                        "path_escape",
                        f"symlink to {f.resolve()} outside the Kermany root",
                    )
                    continue
                if not entry.is_dir():
                    yield Rejected(
                        KERMANY,
                        rel,
                        "unknown_label_folder",
                        f"file directly in split folder {split_dir.name}/",
                    )
                    continue
                label = kermany_label(entry.name, f.name)
                if label is None:
                    if entry.name.upper() in ("NORMAL", "PNEUMONIA"):
                        yield Rejected(
                            KERMANY,
                            rel,
                            "unknown_label",
                            "PNEUMONIA file name has neither _bacteria_ nor _virus_",
                        )
                    else:
                        yield Rejected(
                            KERMANY,
                            rel,
                            "unknown_label_folder",
                            f"class folder {entry.name!r} is not NORMAL or PNEUMONIA",
                        )
                    continue
                pid = kermany_patient_id(f.name)
                if pid.startswith(f"{KERMANY}:file:"):
                    n_fallback += 1
                yield Candidate(
                    source=KERMANY,
                    path=str(f),
                    original_path=rel,
                    label=label,
                    patient_id=pid,
                    view="",
                    age_group="pediatric",
                    source_split=split,
                )
    if n_fallback:
        log.warning("kermany: %d file names carry no patient id; one patient per file", n_fallback)


# -------------------------------------------------------------------------------------- Cohen


def read_cohen_metadata(csv_path: str | Path) -> pd.DataFrame:
    """Read a Cohen ``metadata.csv`` as strings, by column name, checking required columns.

    Column names are stripped; every value is a string (empty for blanks). Works for the 2020-06
    versions and for the latest one (``RT_PCR_positive``, hierarchical findings).

    Raises:
        FileNotFoundError: When the file is absent.
        ValueError: Naming the first missing required column and the csv path.
    """
    import pandas as pd

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: Cohen metadata.csv not found")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="latin-1")
    df.columns = [str(c).strip() for c in df.columns]
    for col in COHEN_REQUIRED_COLUMNS:
        if col not in df.columns:
            raise ValueError(
                f"{csv_path}: required column {col!r} is missing "
                f"(required: {list(COHEN_REQUIRED_COLUMNS)})"
            )
    return df


def cohen_age_group(age: str) -> str:
    """``adult`` for age >= 18, ``pediatric`` below, ``unknown`` when blank or not a number."""
    try:
        value = float(age)
    except (TypeError, ValueError):
        return "unknown"
    if math.isnan(value) or value < 0:
        return "unknown"
    return "adult" if value >= 18 else "pediatric"


def cohen_filter_reason(row: dict[str, str], flt: CohenFilter) -> tuple[str, str] | None:
    """Why a Cohen metadata row is excluded, as ``(reason, detail)``; ``None`` if it is kept.

    Reasons: ``not_covid_finding``, ``modality_not_xray``, ``view_not_frontal`` (checked in
    that order, so each excluded row is counted once).
    """
    finding = row["finding"]
    if flt.finding_contains not in finding:
        return "not_covid_finding", f"finding={finding!r}"
    modality = row["modality"].strip()
    if modality not in flt.modalities:
        return "modality_not_xray", f"modality={modality!r}"
    view = row["view"].strip()
    if view not in flt.views:
        return "view_not_frontal", f"view={view!r}"
    return None


def _resolve_inside(root_resolved: Path, folder: str, filename: str) -> Path | None:
    """The file's path if it stays inside the root (after resolving ``..`` and symlinks)."""
    try:
        resolved = (root_resolved / folder / filename).resolve()
    except (OSError, ValueError, RuntimeError):
        return None
    return resolved if resolved.is_relative_to(root_resolved) else None


def discover_cohen(
    root: str | Path, flt: CohenFilter, metadata_csv: Path | None = None
) -> CohenDiscovery:
    """Read one Cohen root: filter metadata rows, resolve their files, find unreferenced images.

    Each row is, in this order: *excluded* if its ``finding`` does not contain
    ``flt.finding_contains`` (``not_covid_finding``), its ``modality`` is not in
    ``flt.modalities`` (``modality_not_xray``) or its ``view`` is not in ``flt.views``
    (``view_not_frontal``; exact match after stripping); *rejected* with ``path_escape`` when
    ``folder/filename`` resolves outside the root (``..``, absolute path, symlink out) or with
    ``missing_file`` when no regular file is there; otherwise a *candidate* labelled ``covid``.

    Args:
        root: Directory with ``metadata.csv`` and ``images/``.
        flt: The row filter.
        metadata_csv: Another version of ``metadata.csv`` to read instead of the root's own.

    Raises:
        FileNotFoundError: When the metadata file is absent.
        ValueError: When a required column is missing (naming it and the csv).
    """
    root = Path(root)
    root_resolved = root.resolve()
    csv_path = Path(metadata_csv) if metadata_csv is not None else root / "metadata.csv"
    df = read_cohen_metadata(csv_path)
    out = CohenDiscovery(root=root, metadata_csv=csv_path, rows=len(df))
    has_age = "age" in df.columns
    referenced: set[Path] = set()
    for i, row in enumerate(df.to_dict("records")):
        folder, filename = row["folder"], row["filename"]
        original = f"{root.name}/{folder}/{filename}"
        target = _resolve_inside(root_resolved, folder, filename)
        present = target is not None and target.is_file()
        if target is not None:
            referenced.add(target)
        excl = cohen_filter_reason(row, flt)
        if excl is not None:
            label = "covid" if excl[0] != "not_covid_finding" else OTHER_FINDING
            out.excluded.append(Excluded(COHEN, original, excl[0], excl[1], label, present))
            continue
        if target is None:
            out.rejected.append(
                Rejected(
                    COHEN,
                    original,
                    "path_escape",
                    f"row {i}: {folder}/{filename} resolves outside {root.name}/",
                    "covid",
                )
            )
            continue
        if not present:
            out.rejected.append(
                Rejected(
                    COHEN,
                    original,
                    "missing_file",
                    f"row {i}: no file {folder}/{filename} in {root.name}/",
                    "covid",
                )
            )
            continue
        pid = str(row["patientid"]).strip()
        out.candidates.append(
            Candidate(
                source=COHEN,
                path=str(target),
                original_path=original,
                label="covid",
                patient_id=f"{COHEN}:{pid}" if pid else f"{COHEN}:row-{root.name}-{i}",
                view=row["view"].strip(),
                age_group=cohen_age_group(row["age"]) if has_age else "unknown",
                source_split="",
            )
        )
    images = root / COHEN_IMAGES_DIR
    if images.is_dir():
        for f in _files_under(images):
            if f.resolve() not in referenced:
                out.unreferenced.append(f"{root.name}/{f.relative_to(root).as_posix()}")
    if out.rows != len(out.candidates) + len(out.excluded) + len(out.rejected):
        raise RuntimeError(f"{csv_path}: internal error, rows do not add up")  # pragma: no cover
    log.info(
        "cohen: %s (%s): %d rows -> %d candidates, %d excluded, %d rejected, %d unreferenced",
        root,
        csv_path.name,
        out.rows,
        len(out.candidates),
        len(out.excluded),
        len(out.rejected),
        len(out.unreferenced),
    )
    return out
