"""DICOM files for tests, made with pydicom: the unit tests of the reader and the served
model's HTTP test write their files with :func:`make_dicom`. Every file carries planted patient
identifiers (:data:`PLANTED`) that must never reach an output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

PLANTED = {
    "PatientName": "Plantedname^Zebulon",
    "PatientID": "PID-7731-SECRET",
    "PatientBirthDate": "19230417",
    "AccessionNumber": "ACC99188271",
    "OtherPatientIDs": "OTHER-55102",
    "InstitutionName": "Planted General Hospital",
}
"""Identifiers planted in every test DICOM; none may reach an output."""
NEEDLES = ("Plantedname", "Zebulon", "PID-7731", "19230417", "ACC99188271", "OTHER-55102")


def smooth(seed: int, shape: tuple[int, int] = (64, 72), top: int = 255) -> np.ndarray:
    """A smooth random image in ``0..top`` (distinct seeds: perceptually distinct)."""
    rng = np.random.default_rng(seed)
    low = rng.random((6, 6)).astype(np.float32)
    im = Image.fromarray(low, "F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    arr = np.clip(np.asarray(im), 0, 1)
    return np.rint(arr * top).astype(np.uint16 if top > 255 else np.uint8)


def make_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    frames: int = 1,
    syntax: Any = ExplicitVRLittleEndian,
    **elements: Any,
) -> Path:
    """Write a DICOM file with pydicom; ``pixels`` None = no pixel data (a non-image object)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    for k, v in PLANTED.items():
        setattr(ds, k, v)
    if pixels is not None:
        arr = np.asarray(pixels)
        allocated = 8 if arr.dtype == np.uint8 else 16
        ds.Rows, ds.Columns = arr.shape[-2], arr.shape[-1]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = allocated
        ds.BitsStored = bits_stored or allocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = arr.tobytes()
    for k, v in elements.items():
        setattr(ds, k, v)
    if syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    elif syntax != ExplicitVRLittleEndian:
        # an encapsulated stream of a syntax nothing installed decodes (the bytes never decode)
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 64])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
