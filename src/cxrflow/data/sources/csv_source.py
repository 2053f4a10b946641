"""A hospital's PACS export: image files in any folder layout plus one CSV of labels.

The CSV (``labels.csv`` at the root unless configured; UTF-8, ``,`` ``;`` or tab separated) has
the columns ``path``, ``label``, ``patient_id`` and optionally ``view``, ``age_group`` (header
names case-insensitive, trimmed; other columns ignored). ``path`` is relative to the root, with
``/`` or ``\\`` separators, and names a PNG, JPEG or DICOM file (with or without an extension:
the image inspector decides; nothing is decoded here). Each row is one record, by the first
check it fails: ``path_escape`` (absolute, ``..`` or a symlink out of the root),
``missing_file``, ``duplicate_row`` (an earlier row names the same file and keeps it),
``unknown_label`` (none of :data:`LABEL_SYNONYMS`), ``missing_patient_id`` (the split groups by
patient); else a ``study`` :class:`~cxrflow.data.sources.Candidate`. Image files
(:data:`IMAGE_EXTENSIONS`) no row names are :class:`~cxrflow.data.sources.Unreferenced`.
Records come in CSV order, then the unreferenced files sorted by path.

A hospital's patient ids are identifiers: a candidate's patient id is ``<name>:<hash>``, the
salted HMAC of :func:`cxrflow.data.dicom.hash_patient_id`, and no record, log line or error
carries the id itself. One class serves any number of exports: each is a :class:`CsvSource`
with its own name, CSV and population, registered by whoever configures it.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from cxrflow.config import ALL_LABELS, DATASET_0_CLASSES, DATASET_1_CLASSES
from cxrflow.data.sources import (
    _NAME,
    POPULATIONS,
    STUDY,
    UNKNOWN_LABEL,
    Candidate,
    ReadFile,
    Record,
    Rejected,
    Unreferenced,
    count_records,
)

if TYPE_CHECKING:
    from cxrflow.config import IngestParams

log = logging.getLogger(__name__)

LABELS_CSV = "labels.csv"
CSV_REQUIRED_COLUMNS: tuple[str, ...] = ("path", "label", "patient_id")
CSV_OPTIONAL_COLUMNS: tuple[str, ...] = ("view", "age_group")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
"""Extensions (lower case) of the files reported as unreferenced when no row names them."""

LABEL_SYNONYMS: dict[str, str] = {
    **{label: label for label in ALL_LABELS},
    **dict.fromkeys(("covid-19", "covid19", "sars-cov-2"), "covid"),
    **dict.fromkeys(("bacteria", "bacterial pneumonia"), "bacterial"),
    **dict.fromkeys(("virus", "viral pneumonia"), "viral"),
    "no finding": "normal",
}
"""Accepted ``label`` values (compared case-insensitively, spaces trimmed and collapsed)."""
AGE_GROUP_SYNONYMS: dict[str, str] = {
    **dict.fromkeys(("pediatric", "paediatric", "child"), "pediatric"),
    "adult": "adult",
}
"""Accepted ``age_group`` values; anything else (or no column) is ``unknown``."""

_DELIMITERS = (",", ";", "\t")
BACKSLASH = "\\"
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class CsvRow:
    """One data row of a labels CSV (trimmed; ``""`` for an absent optional column), with the
    line it starts on (the header is line 1)."""

    line: int
    path: str
    label: str
    patient_id: str
    view: str = ""
    age_group: str = ""


def _squash(value: str) -> str:
    return " ".join(value.split())


def normalise_label(value: str) -> str | None:
    """The label a CSV ``label`` value means (see :data:`LABEL_SYNONYMS`); None if unknown."""
    return LABEL_SYNONYMS.get(_squash(value).casefold())


def normalise_age_group(value: str) -> str:
    """``pediatric``, ``adult`` or ``unknown`` for a CSV ``age_group`` value."""
    return AGE_GROUP_SYNONYMS.get(_squash(value).casefold(), "unknown")


def read_labels_csv(csv_path: str | Path, data: bytes | None = None) -> list[CsvRow]:
    """Read a labels CSV (``csv_path``, or its bytes ``data`` if given); blank lines skipped.

    Raises:
        FileNotFoundError: When the file is absent.
        ValueError: Not UTF-8 text, not CSV, or a required column missing (naming the file,
            the missing columns and the columns found).
    """
    if data is None:
        if not Path(csv_path).is_file():
            raise FileNotFoundError(f"{csv_path}: labels CSV not found")
        data = Path(csv_path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{csv_path}: not UTF-8 text (byte {exc.start}); export the labels CSV as UTF-8"
        ) from None
    first = text.split("\n", 1)[0]
    delimiter = max(_DELIMITERS, key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    written = [h.strip() for h in next(reader, [])]
    header = [h.casefold() for h in written]
    missing = [c for c in CSV_REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{csv_path}: required column(s) {missing} missing "
            f"(found: {[h for h in written if h]}; required: {list(CSV_REQUIRED_COLUMNS)})"
        )
    index = {
        c: header.index(c) for c in (*CSV_REQUIRED_COLUMNS, *CSV_OPTIONAL_COLUMNS) if c in header
    }
    rows: list[CsvRow] = []
    start = reader.line_num + 1
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                values = {c: cells[i].strip() if i < len(cells) else "" for c, i in index.items()}
                rows.append(CsvRow(line=start, **values))
            start = reader.line_num + 1
    except csv.Error as exc:  # a NUL byte, an unterminated quote at the end, ...
        raise ValueError(f"{csv_path}: line {start}: not readable as CSV ({exc})") from None
    return rows


# rel -> (whether it stays inside the root, e.g. no symlink out; its path, None if no file)
Locate = Callable[[str], tuple[bool, str | None]]


def _relative(path: str) -> str | None:
    """``path`` as a normalised root-relative POSIX path; None when absolute or escaping."""
    p = path.replace(BACKSLASH, "/")
    if p.startswith("/") or _DRIVE.match(p):
        return None
    norm = posixpath.normpath(p) if p else ""
    if norm == ".." or norm.startswith("../"):
        return None
    return "" if norm == "." else norm


def _row_records(
    rows: Sequence[CsvRow],
    name: str,
    root_name: str,
    locate: Locate,
    patient_key: Callable[[str], str],
) -> Iterator[tuple[Candidate | Rejected, str | None]]:
    """One record per CSV row, with the root-relative path it names (None: not inside).

    The one row rule, shared by :meth:`CsvSource.discover` (a directory) and
    :meth:`CsvSource.count_labels` (a listing).
    """
    seen: dict[str, CsvRow] = {}
    for row in rows:
        label = normalise_label(row.label)
        known = label if label is not None else UNKNOWN_LABEL
        rel = _relative(row.path)
        inside, path = locate(rel) if rel else (rel is not None, None)
        if rel is None or not inside:
            original = f"{root_name}/{row.path.replace(BACKSLASH, '/')}"
            detail = f"line {row.line}: {row.path!r} resolves outside {root_name}/"
            yield Rejected(name, original, "path_escape", detail, known), rel
            continue
        original = f"{root_name}/{rel}" if rel else f"{root_name}/"
        if path is None:
            what = f"no file {rel}" if rel else "empty path"
            yield Rejected(name, original, "missing_file", f"line {row.line}: {what}", known), rel
            continue
        if (first := seen.get(rel)) is not None:
            detail = f"line {row.line}: {rel} is already named on line {first.line}"
            if normalise_label(first.label) != label:
                detail += f" (label {first.label!r} there, {row.label!r} here)"
            yield Rejected(name, original, "duplicate_row", detail, known), rel
            continue
        seen[rel] = row
        if label is None:
            detail = f"line {row.line}: label {row.label!r} is none of {list(ALL_LABELS)}"
            yield Rejected(name, original, "unknown_label", detail), rel
            continue
        if not row.patient_id:
            detail = f"line {row.line}: empty patient_id (the split groups by patient)"
            yield Rejected(name, original, "missing_patient_id", detail, label), rel
            continue
        cand = Candidate(
            source=name,
            path=path,
            original_path=original,
            label=label,
            patient_id=f"{name}:{patient_key(row.patient_id)}",
            view=_squash(row.view),
            age_group=normalise_age_group(row.age_group),
            cohort=STUDY,
            finding=row.label,
        )
        yield cand, rel


def _locate_in_dir(root_resolved: Path) -> Locate:
    def locate(rel: str) -> tuple[bool, str | None]:
        try:
            resolved = (root_resolved / rel).resolve()
        except (OSError, ValueError, RuntimeError):
            return False, None
        if not resolved.is_relative_to(root_resolved):  # a symlink out of the root
            return False, None
        return True, str(resolved) if resolved.is_file() else None

    return locate


def _image_files(root: Path) -> list[str]:
    """Root-relative POSIX paths of every image-named file under ``root``, sorted."""
    found = (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    return sorted(p.relative_to(root).as_posix() for p in found)


@dataclass(frozen=True)
class CsvSource:
    """A labelled export: image files plus a CSV of labels (see the module docstring).

    Attributes:
        name: The manifest's ``source`` value and patient-id prefix (``[a-z][a-z0-9_]*``).
        labels_file: The CSV's path relative to each root.
        population: Who the export was drawn from: ``adult`` or ``pediatric``.

    Raises:
        ValueError: A bad name, population, or a ``labels_file`` outside the root.
    """

    name: str
    labels_file: str = LABELS_CSV
    population: str = "adult"
    labels: ClassVar[tuple[str, ...]] = ALL_LABELS
    datasets: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "dataset_0": DATASET_0_CLASSES,
        "dataset_1": DATASET_1_CLASSES,
    }

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"source name {self.name!r}: must match {_NAME.pattern}")
        if self.population not in POPULATIONS:
            raise ValueError(f"source {self.name}: population must be one of {list(POPULATIONS)}")
        if not _relative(self.labels_file):
            raise ValueError(f"source {self.name}: labels_file {self.labels_file!r} not in root")

    @property
    def _csv_rel(self) -> str:
        return _relative(self.labels_file) or self.labels_file

    def discover(self, root: str | Path, params: IngestParams) -> Iterator[Record]:
        """Every CSV row of ``root`` as a record, then its unreferenced image files (``params``
        is not used: an export has no filter).

        Raises:
            FileNotFoundError: When ``root`` or its labels CSV is absent.
            ValueError: When the CSV is not UTF-8 or lacks a required column.
        """
        # imported here: the DICOM module brings the image stack, which listing does not need
        from cxrflow.data.dicom import hash_patient_id

        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: {self.name} root not found")
        csv_path = root / self._csv_rel
        rows = read_labels_csv(csv_path)
        root_name = Path(os.path.abspath(root)).name
        base = root.resolve()
        referenced: set[str] = {self._csv_rel}
        locate = _locate_in_dir(base)
        for rec, rel in _row_records(rows, self.name, root_name, locate, hash_patient_id):
            referenced.add(rel or "")
            yield rec
        unref = [rel for rel in _image_files(base) if rel not in referenced]
        log.info("%s: %s: %d rows, %d files unreferenced", self.name, root, len(rows), len(unref))
        for rel in unref:
            yield Unreferenced(self.name, f"{root_name}/{rel}")

    def count_labels(
        self, files: Sequence[str], read_file: ReadFile, params: IngestParams
    ) -> dict[str, int]:
        """Label counts of the rows :meth:`discover` makes candidates (a row must name a file
        of ``files``), plus ``unknown``; only the CSV is read (``read_file(labels_file)``).

        Raises:
            FileNotFoundError: When the listing has no labels CSV.
        """
        listed = {posixpath.normpath(f) for f in files}
        if self._csv_rel not in listed:
            raise FileNotFoundError(f"{self.labels_file}: {self.name} labels CSV not found")
        rows = read_labels_csv(self._csv_rel, read_file(self._csv_rel))

        def locate(rel: str) -> tuple[bool, str | None]:
            return True, rel if rel in listed else None

        # patient ids are not counted: no hash needed (and no salt warning)
        records = (rec for rec, _ in _row_records(rows, self.name, ".", locate, lambda _: ""))
        return count_records(records, self.labels)
