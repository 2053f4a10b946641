"""Kermany et al. (2018) pediatric chest X-rays: ``{train,test,val}/{NORMAL,PNEUMONIA}/`` folders.

Labels come from the class folder and, for pneumonia, the file name (``_bacteria_`` /
``_virus_``). Patient ids (``kermany:<id>``):

- pneumonia: ``kermany:personN`` from ``personN_bacteria_M.jpeg`` / ``personN_virus_M.jpeg``;
- normal: file names (``IM-xxxx-yyyy``, ``NORMAL2-IM-xxxx-yyyy``) carry **no reliable patient
  id**. We group conservatively by the ``IM-xxxx`` (or ``NORMAL2-IM-xxxx``) prefix, i.e. all
  ``-yyyy`` variants of one study number count as one patient; different study numbers may
  still be one child, which no file name can reveal;
- names matching neither pattern get ``kermany:file:<stem>`` (one patient per file) and are
  logged;
- a DICOM file (``.dcm``, ``.dicom``) whose header has a ``PatientID`` gets
  ``kermany:dicom-<hash>``, a salted hash of it (:func:`cxrflow.data.dicom.dicom_patient_key`;
  the id itself is never recorded), before the file-name rules.

Every Kermany image is pediatric (the collection is children aged one to five).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, ClassVar

from cxrflow.data.sources import (
    Candidate,
    ReadFile,
    Record,
    Rejected,
    count_records,
)

if TYPE_CHECKING:
    from cxrflow.config import IngestParams

log = logging.getLogger(__name__)

KERMANY = "kermany"
KERMANY_SPLITS: tuple[str, ...] = ("train", "test", "val")
KERMANY_CONTAINERS: tuple[str, ...] = ("chest_xray", "dataset")
KERMANY_LABELS: tuple[str, ...] = ("normal", "bacterial", "viral")
POPULATION = "pediatric"

_CLASS_FOLDERS = ("NORMAL", "PNEUMONIA")
_PNEUMONIA_KIND = re.compile(r"_(bacteria|virus)(?=[_\s.\-]|$)", re.IGNORECASE)
_PERSON = re.compile(r"^(person\d+)(?=_)", re.IGNORECASE)
_NORMAL_STUDY = re.compile(r"^((?:NORMAL2-)?IM-\d+)(?=-)", re.IGNORECASE)


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


def _record(
    path: str,
    rel: str,
    split: str,
    class_folder: str | None,
    filename: str,
    patient_key: str | None = None,
) -> Candidate | Rejected:
    """The record of one file under a split folder (``class_folder`` None: directly in it).

    The one labelling rule, shared by :func:`discover_kermany` (a directory walk) and
    :meth:`KermanySource.count_labels` (a listing). ``patient_key`` (a DICOM's hashed
    ``PatientID``, from the walk only) takes precedence over the file-name patient id.
    """
    if class_folder is None:
        return Rejected(
            KERMANY, rel, "unknown_label_folder", f"file directly in split folder {split}/"
        )
    label = kermany_label(class_folder, filename)
    if label is None:
        if class_folder.upper() in _CLASS_FOLDERS:
            return Rejected(
                KERMANY,
                rel,
                "unknown_label",
                "PNEUMONIA file name has neither _bacteria_ nor _virus_",
            )
        return Rejected(
            KERMANY,
            rel,
            "unknown_label_folder",
            f"class folder {class_folder!r} is not NORMAL or PNEUMONIA",
        )
    return Candidate(
        source=KERMANY,
        path=path,
        original_path=rel,
        label=label,
        patient_id=f"{KERMANY}:{patient_key}" if patient_key else kermany_patient_id(filename),
        view="",
        age_group=POPULATION,
        source_split=split.lower(),
    )


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _log_fallbacks(
    records: Iterable[Candidate | Rejected],
) -> Iterator[Candidate | Rejected]:
    n_fallback = 0
    for rec in records:
        if isinstance(rec, Candidate) and rec.patient_id.startswith(f"{KERMANY}:file:"):
            n_fallback += 1
        yield rec
    if n_fallback:
        log.warning("kermany: %d file names carry no patient id; one patient per file", n_fallback)


def discover_kermany(root: str | Path) -> Iterator[Candidate | Rejected]:
    """Walk Kermany's ``{train,test,val}/{NORMAL,PNEUMONIA}`` layout, in sorted order.

    Every file under a split folder yields one record: a :class:`Candidate`, or a
    :class:`Rejected` with reason ``unknown_label`` (a PNEUMONIA file named neither
    ``_bacteria_`` nor ``_virus_``), ``unknown_label_folder`` (any other folder under a split,
    or a file directly in a split folder) or ``path_escape`` (a symlink out of the root).
    Directories next to the split folders (``__MACOSX``, ...) are not part of the dataset; they
    are logged and skipped.

    Args:
        root: See :func:`find_kermany_root`.

    Raises:
        FileNotFoundError: When no Kermany layout is found.
    """
    # imported here: the DICOM module brings the image stack, which listing sources does not need
    from cxrflow.data.dicom import DICOM_EXTENSIONS, dicom_patient_key

    base = find_kermany_root(root).absolute()
    base_resolved = base.resolve()
    parent = Path(root).absolute().parent
    others = sorted(
        p.name for p in base.iterdir() if p.is_dir() and p.name.lower() not in KERMANY_SPLITS
    )
    if others:
        log.info("kermany: %s: not split folders, skipped: %s", base, others)

    def walk() -> Iterator[Candidate | Rejected]:
        for split_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            if split_dir.name.lower() not in KERMANY_SPLITS:
                continue
            for entry in sorted(split_dir.iterdir()):
                files = (
                    _files_under(entry) if entry.is_dir() else [entry] if entry.is_file() else []
                )
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
                    folder = entry.name if entry.is_dir() else None
                    key = dicom_patient_key(f) if f.suffix.lower() in DICOM_EXTENSIONS else None
                    yield _record(str(f), rel, split_dir.name, folder, f.name, key)

    yield from _log_fallbacks(walk())


def _listing_records(files: Sequence[str], root_name: str) -> Iterator[Candidate | Rejected]:
    """The records :func:`discover_kermany` would yield for a root holding ``files``."""
    parts = sorted(PurePosixPath(f).parts for f in files)
    base: tuple[str, ...] | None = None
    for cand in ((), *((c,) for c in KERMANY_CONTAINERS)):
        n = len(cand)
        if any(len(p) > n + 1 and p[:n] == cand and p[n] in KERMANY_SPLITS for p in parts):
            base = cand
            break
    if base is None:
        return
    for p in parts:
        sub = p[len(base) :]
        if p[: len(base)] != base or len(sub) < 2 or sub[0].lower() not in KERMANY_SPLITS:
            continue
        rel = "/".join((root_name, *p))
        yield _record(rel, rel, sub[0], sub[1] if len(sub) >= 3 else None, sub[-1])


class KermanySource:
    """The Kermany source (see the module docstring)."""

    name: ClassVar[str] = KERMANY
    population: ClassVar[str] = POPULATION
    labels: ClassVar[tuple[str, ...]] = KERMANY_LABELS
    datasets: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "dataset_0": ("normal", "bacterial", "viral"),
        "dataset_1": ("normal", "bacterial"),
    }

    def discover(self, root: str | Path, params: IngestParams) -> Iterator[Record]:
        """See :func:`discover_kermany` (``params`` is not used: Kermany has no filter)."""
        return discover_kermany(root)

    def count_labels(
        self, files: Sequence[str], read_file: ReadFile, params: IngestParams
    ) -> dict[str, int]:
        """Label counts from the listing (``normal``, ``bacterial``, ``viral``, ``unknown``).

        Files next to the split folders are not counted; files of other folders under a split
        count as ``unknown``, as discovery quarantines them.
        """
        return count_records(_listing_records(files, "."), self.labels)

    def __repr__(self) -> str:
        return "KermanySource()"
