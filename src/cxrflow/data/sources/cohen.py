"""Cohen et al. (2020) COVID-19 image data collection: ``metadata.csv`` + ``images/``.

Each metadata row is one input. A row is *excluded* unless its ``finding`` contains
``CohenFilter.finding_contains`` (case-insensitively: ``covid-19`` is COVID-19; the latest
metadata writes hierarchical findings such as ``Pneumonia/Viral/COVID-19``), its ``modality`` is
one of ``CohenFilter.modalities`` and its ``view`` one of ``CohenFilter.views`` (both compared
with surrounding spaces trimmed and inner runs of spaces collapsed, on both sides). A kept row
is *rejected* when its ``folder/filename`` escapes the root or names no file; otherwise it is a
COVID-19 candidate of the ``study`` cohort.

*Controls.* A frontal X-ray row (same modality and view rule) whose finding is not COVID-19 but
names a bacterial pneumonia, a non-COVID viral pneumonia or no finding
(:func:`cohen_control_label`) is not excluded: it becomes a candidate of the ``control``
cohort, labelled ``bacterial``, ``viral`` or ``normal``, with the raw finding kept. These are
adults from the same collection (and often the same journals) as the COVID-19 images, so a
model that calls them COVID-19 has learnt the source, not the disease; the split never puts
them in a dataset (:func:`cxrflow.data.split.select_dataset_rows`). Any other finding
(``Pneumocystis``, ``Tuberculosis``, ``Lipoid``, ``ARDS``, unspecified ``Pneumonia``, ``todo``,
...) stays excluded.

Patient ids are ``cohen:<patientid>`` (one id space across snapshots of the collection). The
collection is adults with a few children; ``age_group`` comes from the ``age`` column.
"""

from __future__ import annotations

import io
import logging
import math
import posixpath
import re
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from cxrflow.data.sources import (
    CONTROL,
    STUDY,
    Candidate,
    Excluded,
    ReadFile,
    Record,
    Rejected,
    Unreferenced,
    count_records,
)

if TYPE_CHECKING:
    import pandas as pd

    from cxrflow.config import CohenFilter, IngestParams

log = logging.getLogger(__name__)

COHEN = "cohen"
COHEN_REQUIRED_COLUMNS: tuple[str, ...] = (
    "patientid",
    "finding",
    "view",
    "modality",
    "folder",
    "filename",
)
COHEN_METADATA = "metadata.csv"
COHEN_IMAGES_DIR = "images"
COVID = "covid"
OTHER_FINDING = "other"
"""Label recorded for a row whose finding is outside the filter (it is excluded)."""
POPULATION = "adult"

CONTROL_FINDINGS: dict[str, tuple[str, ...]] = {
    "bacterial": (
        "bacterial",
        "streptococcus",
        "staphylococcus",
        "mrsa",
        "klebsiella",
        "e.coli",
        "e. coli",
        "legionella",
        "mycoplasma",
        "chlamydophila",
        "chlamydia",
        "nocardia",
    ),
    "viral": ("viral", "sars", "mers", "mers-cov", "influenza", "h1n1", "varicella", "herpes"),
}
"""Words of a finding that make a row a control of that label (matched as whole words,
case-insensitively, in flat and hierarchical findings: ``Klebsiella``,
``Pneumonia/Bacterial/Klebsiella``, ``Mycoplasma Bacterial Pneumonia``). ``No Finding`` is a
``normal`` control."""
NO_FINDING = "no finding"
_CONTROL_WORDS = {
    label: re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, words)) + r")(?![\w])")
    for label, words in CONTROL_FINDINGS.items()
}
_COVID_LIKE = re.compile(r"covid|cov-?2|ncov")


@dataclass
class CohenDiscovery:
    """Result of :func:`discover_cohen`: one record per metadata row, plus unreferenced images.

    ``rows == len(candidates) + len(controls) + len(excluded) + len(rejected)`` always holds.

    Attributes:
        root: The Cohen root that was read.
        metadata_csv: The metadata file that was read.
        rows: Number of metadata rows.
        candidates: Study rows (passed the filter) pointing to an existing file inside the root.
        controls: Control rows (see the module docstring) pointing to an existing file.
        excluded: Rows outside the filter that are no control.
        rejected: Study or control rows that point outside the root or to no file.
        unreferenced: ``original_path`` of files in ``images/`` that no row references (not
            candidates: with no metadata there is no label).
    """

    root: Path
    metadata_csv: Path
    rows: int
    candidates: list[Candidate] = field(default_factory=list)
    controls: list[Candidate] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    unreferenced: list[str] = field(default_factory=list)


def read_cohen_metadata(csv_path: str | Path, data: bytes | None = None) -> pd.DataFrame:
    """Read a Cohen ``metadata.csv`` as strings, by column name, checking required columns.

    Column names are stripped; every value is a string (empty for blanks). Works for the 2020-06
    versions and for the latest one (``RT_PCR_positive``, hierarchical findings).

    Args:
        csv_path: The file; with ``data``, only named in messages.
        data: The file's bytes, when already read (e.g. from a DVC listing).

    Raises:
        FileNotFoundError: When the file is absent.
        ValueError: Naming the first missing required column and the csv path.
    """
    import pandas as pd

    csv_path = Path(csv_path)
    if data is None:
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path}: Cohen metadata.csv not found")
        data = csv_path.read_bytes()
    try:
        df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError:
        df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding="latin-1")
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


def _norm_space(value: str) -> str:
    return " ".join(str(value).split())


def cohen_control_label(finding: str) -> str | None:
    """The control label of a non-COVID finding: ``bacterial``, ``viral``, ``normal`` or None.

    ``No Finding`` is ``normal``; a finding naming a bacterial pneumonia (a word of
    :data:`CONTROL_FINDINGS` ``["bacterial"]``: ``Streptococcus``, ``Klebsiella``, ``E.Coli``,
    ``Legionella``, ``Mycoplasma``, ...) is ``bacterial``; one naming a non-COVID viral
    pneumonia (``SARS``, ``MERS-CoV``, ``Influenza``, ``Varicella``, ``Herpes``, ...) is
    ``viral``. None for anything else (fungal, tuberculosis, lipoid, ARDS, unspecified
    pneumonia, ``todo``), for a finding naming both kinds, and for anything that looks like
    SARS-CoV-2 (``COVID``, ``CoV-2``, ``nCoV``): such a row must never become a control.
    """
    text = " ".join(finding.casefold().split())
    if not text or _COVID_LIKE.search(text):
        return None
    if text == NO_FINDING:
        return "normal"
    hits = [label for label, words in _CONTROL_WORDS.items() if words.search(text)]
    return hits[0] if len(hits) == 1 else None


def _frontal_xray_reason(row: Mapping[str, str], flt: CohenFilter) -> tuple[str, str] | None:
    modality = _norm_space(row["modality"])
    if modality not in {_norm_space(m) for m in flt.modalities}:
        return "modality_not_xray", f"modality={modality!r}"
    view = _norm_space(row["view"])
    if view not in {_norm_space(v) for v in flt.views}:
        return "view_not_frontal", f"view={view!r}"
    return None


def cohen_filter_reason(row: Mapping[str, str], flt: CohenFilter) -> tuple[str, str] | None:
    """Why a Cohen metadata row is not a COVID-19 study row, as ``(reason, detail)``; ``None``
    if it is one.

    Reasons: ``not_covid_finding`` (the finding does not contain ``flt.finding_contains``,
    compared case-insensitively), ``modality_not_xray``, ``view_not_frontal`` (exact match
    after trimming and collapsing spaces on both sides), checked in that order, so each excluded
    row is counted once. A ``not_covid_finding`` row may still be a control (see
    :func:`cohen_control_label`).
    """
    finding = row["finding"]
    if flt.finding_contains.casefold() not in finding.casefold():
        return "not_covid_finding", f"finding={finding!r}"
    return _frontal_xray_reason(row, flt)


def cohen_cohort(row: Mapping[str, str], flt: CohenFilter) -> tuple[str, str] | tuple[str, None]:
    """``(cohort, label)`` of a row that is kept, or ``("", None)`` for an excluded row.

    A row passing :func:`cohen_filter_reason` is ``("study", "covid")``; a frontal X-ray whose
    non-COVID finding has a :func:`cohen_control_label` is ``("control", <label>)``.
    """
    excl = cohen_filter_reason(row, flt)
    if excl is None:
        return STUDY, COVID
    if excl[0] != "not_covid_finding":
        return "", None
    label = cohen_control_label(row["finding"])
    if label is None or _frontal_xray_reason(row, flt) is not None:
        return "", None
    return CONTROL, label


Locate = Callable[[str, str], tuple[Hashable | None, str | None]]
"""``(folder, filename) -> (key, path)``: a key identifying the file inside the root (``None``
when the name escapes the root) and its path for reading (``None`` when no such file)."""


def _row_records(
    df: pd.DataFrame, root_name: str, flt: CohenFilter, locate: Locate
) -> Iterator[tuple[Candidate | Rejected | Excluded, Hashable | None]]:
    """One record per metadata row, with the located file's key.

    The one row rule, shared by :func:`discover_cohen` (a directory) and
    :meth:`CohenSource.count_labels` (a listing).
    """
    has_age = "age" in df.columns
    for i, row in enumerate(df.to_dict("records")):
        folder, filename = row["folder"], row["filename"]
        original = f"{root_name}/{folder}/{filename}"
        key, path = locate(folder, filename)
        cohort, label = cohen_cohort(row, flt)
        if label is None:
            excl = cohen_filter_reason(row, flt)
            assert excl is not None
            placeholder = COVID if excl[0] != "not_covid_finding" else OTHER_FINDING
            yield Excluded(COHEN, original, excl[0], excl[1], placeholder, path is not None), key
            continue
        what = "" if cohort == STUDY else f" (control, finding={row['finding']!r})"
        if key is None:
            detail = f"row {i}: {folder}/{filename} resolves outside {root_name}/{what}"
            yield Rejected(COHEN, original, "path_escape", detail, label, cohort), key
            continue
        if path is None:
            detail = f"row {i}: no file {folder}/{filename} in {root_name}/{what}"
            yield Rejected(COHEN, original, "missing_file", detail, label, cohort), key
            continue
        pid = str(row["patientid"]).strip()
        cand = Candidate(
            source=COHEN,
            path=path,
            original_path=original,
            label=label,
            patient_id=f"{COHEN}:{pid}" if pid else f"{COHEN}:row-{root_name}-{i}",
            view=_norm_space(row["view"]),
            age_group=cohen_age_group(row["age"]) if has_age else "unknown",
            source_split="",
            cohort=cohort,
            finding=_norm_space(row["finding"]),
        )
        yield cand, key


def _locate_in_dir(root_resolved: Path) -> Locate:
    def locate(folder: str, filename: str) -> tuple[Hashable | None, str | None]:
        try:
            resolved = (root_resolved / folder / filename).resolve()
        except (OSError, ValueError, RuntimeError):
            return None, None
        if not resolved.is_relative_to(root_resolved):  # "..", an absolute path, a symlink out
            return None, None
        return resolved, str(resolved) if resolved.is_file() else None

    return locate


def discover_cohen(
    root: str | Path, flt: CohenFilter, metadata_csv: Path | None = None
) -> CohenDiscovery:
    """Read one Cohen root: filter metadata rows, resolve their files, find unreferenced images.

    Each row is, in this order: *excluded* by :func:`cohen_filter_reason` unless it is a
    control (:func:`cohen_cohort`); *rejected* with ``path_escape`` when ``folder/filename``
    resolves outside the root (``..``, absolute path, symlink out) or with ``missing_file`` when
    no regular file is there; otherwise a *candidate* labelled ``covid`` or a *control*.

    Args:
        root: Directory with ``metadata.csv`` and ``images/``.
        flt: The row filter.
        metadata_csv: Another version of ``metadata.csv`` to read instead of the root's own.

    Raises:
        FileNotFoundError: When the metadata file is absent.
        ValueError: When a required column is missing (naming it and the csv).
    """
    root = Path(root)
    csv_path = Path(metadata_csv) if metadata_csv is not None else root / COHEN_METADATA
    df = read_cohen_metadata(csv_path)
    out = CohenDiscovery(root=root, metadata_csv=csv_path, rows=len(df))
    referenced: set[Hashable] = set()
    for rec, key in _row_records(df, root.name, flt, _locate_in_dir(root.resolve())):
        if key is not None:
            referenced.add(key)
        if isinstance(rec, Candidate):
            (out.candidates if rec.cohort == STUDY else out.controls).append(rec)
        elif isinstance(rec, Excluded):
            out.excluded.append(rec)
        else:
            out.rejected.append(rec)
    images = root / COHEN_IMAGES_DIR
    if images.is_dir():
        for f in sorted(p for p in images.rglob("*") if p.is_file()):
            if f.resolve() not in referenced:
                out.unreferenced.append(f"{root.name}/{f.relative_to(root).as_posix()}")
    if out.rows != len(out.candidates) + len(out.controls) + len(out.excluded) + len(out.rejected):
        raise RuntimeError(f"{csv_path}: internal error, rows do not add up")  # pragma: no cover
    log.info(
        "cohen: %s (%s): %d rows -> %d candidates, %d controls, %d excluded, %d rejected, "
        "%d unreferenced",
        root,
        csv_path.name,
        out.rows,
        len(out.candidates),
        len(out.controls),
        len(out.excluded),
        len(out.rejected),
        len(out.unreferenced),
    )
    return out


@dataclass(frozen=True)
class CohenSource:
    """The Cohen source (see the module docstring).

    Attributes:
        metadata_csv: Read this ``metadata.csv`` instead of each root's own (e.g. another
            version of the file); ``None`` reads the root's.
    """

    metadata_csv: Path | None = None
    name: ClassVar[str] = COHEN
    population: ClassVar[str] = POPULATION
    labels: ClassVar[tuple[str, ...]] = (COVID,)
    datasets: ClassVar[Mapping[str, tuple[str, ...]]] = {"dataset_1": (COVID,)}

    def discover(self, root: str | Path, params: IngestParams) -> Iterator[Record]:
        """Every metadata row of ``root`` as a record, then its unreferenced images.

        See :func:`discover_cohen`; the filter is ``params.cohen``.
        """
        disc = discover_cohen(root, params.cohen, self.metadata_csv)
        yield from disc.candidates
        yield from disc.controls
        yield from disc.rejected
        yield from disc.excluded
        for path in disc.unreferenced:
            yield Unreferenced(COHEN, path)

    def count_labels(
        self, files: Sequence[str], read_file: ReadFile, params: IngestParams
    ) -> dict[str, int]:
        """``{"covid": n}``: rows of the root's ``metadata.csv`` that discovery makes candidates.

        A row counts when it passes ``params.cohen`` and names a file of the listing; controls
        are not counted (:func:`~cxrflow.data.sources.count_records`).

        Raises:
            FileNotFoundError: When the listing has no ``metadata.csv``.
        """
        listed = {posixpath.normpath(f) for f in files}
        if COHEN_METADATA not in listed:
            raise FileNotFoundError(f"{COHEN_METADATA}: Cohen metadata.csv not found")
        df = read_cohen_metadata(COHEN_METADATA, read_file(COHEN_METADATA))

        def locate(folder: str, filename: str) -> tuple[Hashable | None, str | None]:
            target = posixpath.normpath(posixpath.join(folder, filename))
            if target.startswith(("../", "/")) or target == "..":
                return None, None
            return target, target if target in listed else None

        records = (rec for rec, _ in _row_records(df, ".", params.cohen, locate))
        return count_records(records, self.labels)
