"""A phantom *external site*: another hospital's export, in the layout of a ``csv`` source.

:func:`write_external_site` writes ``labels.csv`` (``path,label,patient_id,view,age_group``)
and one image per row under ``studies/<yyyy>/<accession>/image.png`` (every
``dicom_every``-th image ``image.dcm`` instead: an 8-bit ``MONOCHROME2`` secondary capture
whose ``PatientID`` is the patient's MRN), read by
:class:`cxrflow.data.sources.csv_source.CsvSource`. Everything else about it is what makes it
*another* site:

- adults only, labelled ``normal``, ``bacterial`` and ``covid`` in the hospital's own words
  (``No Finding``, ``Bacterial pneumonia``, ``COVID-19``: synonyms the source maps), patient
  ids of its own (``MRN-123456``), ``images_per_patient`` images per patient;
- the same anatomy and class signal (:func:`cxrflow.data.phantom_render.render_radiograph`,
  the sizes and seed streams of :mod:`cxrflow.data.synthetic`) but another scanner's look
  (:data:`SCANNER`): a flatter contrast curve (gamma 0.8), a brighter background, more
  quantum noise plus fine pixel noise, and nothing burned in (no side marker, no journal
  annotation, no planted marker: a model that learnt a marker meets images without it).

The site draws from ``SynthParams.seed + seed_offset``, so it never repeats a patient of the
Kermany/Cohen phantom; the same params give byte-identical files (DICOM UIDs and dates are
derived from the seed). ``PHANTOM.md`` in the root says it is synthetic.
"""

from __future__ import annotations

import csv
import datetime as dt
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrflow.config import SynthParams
from cxrflow.data.phantom_render import render_radiograph, sample_traits
from cxrflow.data.synthetic import (
    PHANTOM_NOTE,
    cxrflow_version,
    jitter_size,
    patient_rng,
    sample_size,
    save_image,
)

SITE_LABELS: tuple[str, ...] = ("normal", "bacterial", "covid")
SITE_FINDINGS: dict[str, str] = {
    "normal": "No Finding",
    "bacterial": "Bacterial pneumonia",
    "covid": "COVID-19",
}
"""The ``label`` the site's CSV writes for each class (its own wording)."""
SITE_COLUMNS: tuple[str, ...] = ("path", "label", "patient_id", "view", "age_group")
SITE_LABELS_CSV = "labels.csv"
SITE_STUDIES = "studies"
SITE_INSTITUTION = "Phantom External Site"
SCANNER: dict[str, Any] = {"gamma": 0.8, "side_marker": False, "annotation": False}
"""Traits every site image is rendered with (the Kermany/Cohen phantom draws gamma 0.85-1.2)."""
SCANNER_BACKGROUND: tuple[float, float] = (0.32, 0.42)
"""Background level range (the Kermany/Cohen phantom: 0-0.25)."""
SCANNER_NOISE: tuple[float, float] = (0.04, 0.06)
"""Quantum-noise range (the Kermany/Cohen phantom: 0.008-0.03)."""
PIXEL_NOISE = 3.0
"""Standard deviation, in grey levels, of the detector noise added at full resolution."""
_VIEWS: tuple[str, ...] = ("PA", "AP")
_VIEW_P: tuple[float, ...] = (0.7, 0.3)
_FIRST_DAY = dt.date(2021, 1, 4)
_DAYS = 3 * 365


@dataclass(frozen=True)
class SiteSummary:
    """What :func:`write_external_site` wrote.

    Attributes:
        root: The site's root (the ``csv`` source's root).
        labels_csv: ``<root>/labels.csv``.
        counts: Images written per label (``normal``, ``bacterial``, ``covid``).
    """

    root: Path
    labels_csv: Path
    counts: dict[str, int]


@dataclass(frozen=True)
class _Image:
    label: str
    patient: int  # index within the label
    mrn: str
    accession: str
    day: dt.date
    dicom: bool

    @property
    def rel(self) -> str:
        ext = "dcm" if self.dicom else "png"
        return f"{SITE_STUDIES}/{self.day.year}/{self.accession}/image.{ext}"


def _plan(
    rng: np.random.Generator, n_patients: int, per_patient: int, dicom_every: int
) -> list[_Image]:
    """Every image, in rendering order (label, patient, image), with its name and date."""
    n_total = len(SITE_LABELS) * n_patients
    mrns = 100_000 + rng.choice(900_000, size=n_total, replace=False)
    accessions = 1_000_000 + rng.choice(9_000_000, size=n_total * per_patient, replace=False)
    days = rng.integers(0, _DAYS, size=n_total)
    images = []
    for p in range(n_total):
        label, i = SITE_LABELS[p // n_patients], p % n_patients
        for k in range(per_patient):
            n = p * per_patient + k
            day = _FIRST_DAY + dt.timedelta(days=int(days[p]) + 7 * k)
            dicom = dicom_every > 0 and (n + 1) % dicom_every == 0
            images.append(
                _Image(label, i, f"MRN-{mrns[p]:06d}", f"A{accessions[n]:07d}", day, dicom)
            )
    return images


def _write_dicom(path: Path, pixels: np.ndarray, image: _Image, sex: str, seed: int) -> None:
    """A minimal secondary-capture DICOM of 8-bit ``pixels``; UIDs derived from the seed."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    def uid(kind: str) -> UID:
        # a UUID-derived UID (PS3.5 B.2) of a name-based UUID: fixed by the seed and accession
        # (pydicom's generate_uid ignores its entropy sources under the 2.25 root)
        name = f"{SITE_INSTITUTION}/{seed}/{image.accession}/{kind}"
        return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid("instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.PatientName = "PHANTOM^SYNTHETIC"
    ds.PatientID = image.mrn
    ds.PatientBirthDate = ""
    ds.PatientSex = sex
    ds.StudyDate = ds.ContentDate = image.day.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = "120000"
    ds.AccessionNumber = image.accession
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.Modality = "DX"
    ds.ConversionType = "WSD"
    ds.InstitutionName = SITE_INSTITUTION
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _render_site(
    label: str, rng: np.random.Generator, size: tuple[int, int], traits: dict[str, Any]
) -> np.ndarray:
    img = render_radiograph(label, rng, size, traits).astype(np.float32)
    img += rng.standard_normal(img.shape, dtype=np.float32) * PIXEL_NOISE
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _site_note(params: SynthParams, settings: dict[str, int], counts: dict[str, int] | None) -> str:
    lines = [
        "# PHANTOM DATA: synthetic, not real patients",
        "",
        "Every image, patient id (MRN), accession number and row of `labels.csv` under this folder",
        f"is synthetic, generated by cxrflow {cxrflow_version()}",
        "(`cxrflow.data.phantom_site.write_external_site`): a phantom *external site*, another",
        "hospital's export. No image shows a real patient; none may be used for any clinical purpose.",
        "",
        "## Settings",
        "",
        f"- `seed`: {params.seed} + `seed_offset` {settings['seed_offset']}",
        *[f"- `{k}`: {v}" for k, v in settings.items() if k != "seed_offset"],
        f"- `min_side`, `max_side`: {params.min_side}, {params.max_side}",
        "",
        "The same settings give byte-identical files.",
        "",
        "## Layout",
        "",
        "- `labels.csv`: `path,label,patient_id,view,age_group` (labels `No Finding`,",
        "  `Bacterial pneumonia`, `COVID-19`; adults only)",
        "- `studies/<yyyy>/<accession>/image.png`, or `image.dcm` (8-bit MONOCHROME2 secondary",
        "  capture whose PatientID is the MRN)",
        "",
        "Scanner: gamma 0.8, brighter background, more noise, nothing burned in.",
        "",
    ]
    if counts is None:
        lines += ["Status: generation in progress (incomplete).", ""]
    else:
        lines += ["## Images written", "", *[f"- {k}: {v}" for k, v in counts.items()], ""]
    return "\n".join(lines)


def _prepare(out: Path) -> None:
    owned = [out / SITE_STUDIES, out / SITE_LABELS_CSV]
    present = [p for p in owned if p.exists()]
    if present and not (out / PHANTOM_NOTE).is_file():
        raise FileExistsError(
            f"{out}: {', '.join(p.name for p in present)} exist(s) without {PHANTOM_NOTE}; "
            "refusing to overwrite what may be real data"
        )
    shutil.rmtree(out / SITE_STUDIES, ignore_errors=True)
    (out / SITE_LABELS_CSV).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def write_external_site(
    out_dir: str | Path,
    params: SynthParams,
    *,
    n_patients_per_class: int = 6,
    images_per_patient: int = 2,
    seed_offset: int = 1000,
    dicom_every: int = 3,
) -> SiteSummary:
    """Write a phantom external site (see the module docstring) into ``out_dir``.

    A previous site in ``out_dir`` (recognised by its ``PHANTOM.md``) is replaced; a
    ``studies/`` or ``labels.csv`` there without it is left alone and raises.

    Args:
        out_dir: The site's root.
        params: Image sizes (``min_side``, ``max_side``) and ``seed``.
        n_patients_per_class: Patients per label (``normal``, ``bacterial``, ``covid``).
        images_per_patient: Images of each patient (one study each, a week apart).
        seed_offset: Added to ``params.seed``: the site's patients are not the phantom's.
        dicom_every: Every ``dicom_every``-th image (in label, patient, image order) is DICOM;
            0 writes PNG only.

    Returns:
        The root, the CSV and the images written per label.

    Raises:
        ValueError: A count below 1 or a negative ``dicom_every``.
        FileExistsError: ``out_dir`` holds ``studies/`` or ``labels.csv`` but no ``PHANTOM.md``.
    """
    if n_patients_per_class < 1 or images_per_patient < 1 or dicom_every < 0:
        raise ValueError(
            "n_patients_per_class and images_per_patient must be >= 1 and dicom_every >= 0, got "
            f"{n_patients_per_class}, {images_per_patient}, {dicom_every}"
        )
    out = Path(out_dir)
    _prepare(out)
    seed = params.seed + seed_offset
    settings = {
        "seed_offset": seed_offset,
        "n_patients_per_class": n_patients_per_class,
        "images_per_patient": images_per_patient,
        "dicom_every": dicom_every,
    }
    note = out / PHANTOM_NOTE
    note.write_text(_site_note(params, settings, None), encoding="utf-8")
    images = _plan(
        np.random.default_rng(seed), n_patients_per_class, images_per_patient, dicom_every
    )
    counts = dict.fromkeys(SITE_LABELS, 0)
    views: dict[tuple[str, int], str] = {}
    for first in range(0, len(images), images_per_patient):
        patient = images[first : first + images_per_patient]
        label = patient[0].label
        rng = patient_rng(seed, label, patient[0].patient)
        traits = {
            **sample_traits(label, rng, "adult"),
            **SCANNER,
            "background": rng.uniform(*SCANNER_BACKGROUND),
            "noise": rng.uniform(*SCANNER_NOISE),
            "view": _VIEWS[int(rng.choice(len(_VIEWS), p=_VIEW_P))],
        }
        views[label, patient[0].patient] = traits["view"]
        size = sample_size(rng, params)
        for image in patient:
            pixels = _render_site(label, rng, jitter_size(rng, size, params), traits)
            path = out / image.rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if image.dicom:
                _write_dicom(path, pixels, image, traits["sex"], seed)
            else:
                save_image(pixels, path)
            counts[label] += 1
    with open(out / SITE_LABELS_CSV, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(SITE_COLUMNS)
        for image in sorted(images, key=lambda im: im.accession):
            view = views[image.label, image.patient]
            writer.writerow([image.rel, SITE_FINDINGS[image.label], image.mrn, view, "adult"])
    note.write_text(_site_note(params, settings, counts), encoding="utf-8")
    return SiteSummary(root=out, labels_csv=out / SITE_LABELS_CSV, counts=counts)
