"""DICOM files: pixels as 8-bit grayscale, and a patient key that carries no identifier.

:func:`read_dicom` is the one way cxrflow turns a DICOM file into pixels: ingest's inspection
(:func:`cxrflow.data.images.inspect_image`), the training decode
(:func:`cxrflow.datasets.preprocess_image`) and ``cxrflow predict`` all call it, so a DICOM and
a PNG of the pixels it displays give the same array. The display pipeline of DICOM PS3.4 N.2,
for a single-frame grayscale image:

1. the Modality LUT or rescale (``RescaleSlope`` / ``RescaleIntercept``);
2. the VOI LUT or, when there is none, the first window (``WindowCenter`` / ``WindowWidth``),
   through :func:`pydicom.pixels.apply_voi_lut`; the result is mapped from the window's output
   range to 0-255, so the window the modality chose is what the model sees;
3. with neither, an image of more than 8 bits (or rescaled, or signed) is min-max scaled to
   0-255, the same rule as a 16-bit PNG (a 12-bit image in a 16-bit container would be nearly
   black shifted right by 8); an unsigned 8-bit image is kept as it is;
4. ``MONOCHROME1`` (0 is white) is inverted, so that bone is bright as in ``MONOCHROME2`` and
   in every PNG and JPEG of the paper's data.

Colour images (``RGB``, ``YBR_*``, converted to RGB by pydicom) become grayscale with Pillow's
``L`` conversion, as an RGB PNG does. Anything else raises
:class:`~cxrflow.data.images.ImageRejected` with a reason ingest writes to ``quarantine.csv``:
no pixel data (a structured report, a presentation state), several frames, a compressed
transfer syntax with no installed decoder (naming the syntax), an unsupported photometric
interpretation, or a file pydicom cannot parse.

Nothing read from a DICOM header other than pixel-describing attributes leaves this module:
errors name the transfer syntax, frame count or SOP class, never a patient attribute, and
pydicom's own warnings (which can quote element values) are silenced while a file is read.
The patient grouping uses :func:`dicom_patient_key`, a keyed hash (HMAC-SHA-256) of
``PatientID`` whose salt comes from the environment variable :data:`SALT_ENV` (not from
params: params are logged to MLflow, and a known salt lets anyone re-derive a hash from a
guessed id).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrflow.data.images import ImageRejected

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom")
"""Extensions (lower case) of DICOM files; a file with the ``DICM`` preamble is DICOM too."""

DICOM_REASONS: tuple[str, ...] = (
    "dicom_no_pixel_data",  # a non-image object: SR, presentation state, KOS, ...
    "dicom_multi_frame",  # NumberOfFrames > 1: a cine or tomosynthesis, not one radiograph
    "dicom_no_decoder",  # a compressed transfer syntax no installed plugin decodes
    "dicom_unsupported",  # photometric interpretation / pixel layout we do not convert
    "dicom_invalid",  # pydicom cannot parse the file or decode its pixels
)
"""Quarantine reasons :func:`read_dicom` can give besides ``decompression_bomb``."""

SALT_ENV = "CXRFLOW_PATIENT_SALT"
"""Environment variable holding the secret salt of :func:`dicom_patient_key`."""

DEFAULT_SALT = "cxrflow-default-patient-salt"
"""Used when :data:`SALT_ENV` is unset (with a warning): hashes stay stable but guessable."""

_PREAMBLE = 128
_MAGIC = b"DICM"
_PIXEL_ELEMENTS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_warned_default_salt = False


def is_dicom(path: str | Path, head: bytes | None = None) -> bool:
    """Whether a file is DICOM: a DICOM extension, or ``DICM`` after the 128-byte preamble.

    Args:
        path: The file (only its name is used when ``head`` is given).
        head: The file's first bytes, when already read (at least 132 for the magic check).
    """
    if Path(path).suffix.lower() in DICOM_EXTENSIONS:
        return True
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(_PREAMBLE + len(_MAGIC))
        except OSError:
            return False
    return head[_PREAMBLE : _PREAMBLE + len(_MAGIC)] == _MAGIC


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence pydicom's warnings and log records: they can quote element values (names).

    pydicom's logger is switched off for good rather than restored: decoding threads enter
    this concurrently, and a restore could switch it back on under another thread's read.
    """
    logging.getLogger("pydicom").disabled = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _parse(data: bytes) -> Dataset:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        # no preamble: a bare data set (some PACS exports) is still tried, as pydicom's force
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception:
            raise ImageRejected("dicom_invalid", "not a DICOM file (no DICM preamble)") from exc
        if not any(k in ds for k in ("SOPClassUID", "Rows", *_PIXEL_ELEMENTS)):
            raise ImageRejected("dicom_invalid", "not a DICOM file (no DICM preamble)") from exc
        return ds
    except Exception as exc:
        raise ImageRejected("dicom_invalid", f"unreadable DICOM: {type(exc).__name__}") from exc


def _syntax(ds: Dataset) -> Any:
    """The transfer syntax UID (implicit little endian when the file meta has none)."""
    from pydicom.uid import UID, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return UID(str(uid)) if uid else ImplicitVRLittleEndian


def _check_decoder(ds: Dataset) -> None:
    """Reject a transfer syntax that no installed plugin decodes, naming it."""
    from pydicom.pixels import get_decoder

    uid = _syntax(ds)
    name = f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise ImageRejected(
            "dicom_no_decoder", f"transfer syntax {name}: pydicom has no decoder for it"
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise ImageRejected(
            "dicom_no_decoder",
            f"compressed transfer syntax {name}: no installed decoder ({missing})",
        )


def _to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of ``[lo, hi]`` to 0-255 (a constant image maps to 0)."""
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = np.rint((np.clip(arr, lo, hi) - lo) * (255.0 / (hi - lo)))
    return scaled.astype(np.uint8)


def _voi_range(ds: Dataset) -> tuple[float, float] | None:
    """The output range of the VOI transform :func:`apply_voi_lut` applies, ``None`` if none.

    A VOI LUT outputs ``0 .. 2**bits - 1`` (bits from its descriptor); a window outputs the
    range pydicom's ``apply_windowing`` maps to (the stored range after the rescale).
    """
    voi = ds.get("VOILUTSequence")
    if voi:
        bits = int(voi[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowWidth" not in ds and "WindowCenter" not in ds:
        return None
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.PixelRepresentation) == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = sorted(
            (y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept))
        )
    return y_min, y_max


def _grayscale(ds: Dataset, arr: np.ndarray) -> tuple[np.ndarray, str]:
    """The display pipeline of the module docstring on one grayscale frame."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(ds.PhotometricInterpretation).upper()
    bits = int(ds.get("BitsStored", 8))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    steps = [f"{photometric} {bits}-bit"]
    rescaled = bool(ds.get("ModalityLUTSequence")) or (
        float(ds.get("RescaleSlope", 1) or 1) != 1.0
        or float(ds.get("RescaleIntercept", 0) or 0) != 0.0
    )
    values = apply_modality_lut(arr, ds)
    voi = _voi_range(ds)
    if voi is not None:
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        out = _to_uint8(np.asarray(values, dtype=np.float64), *voi)
        steps.append("VOI LUT" if ds.get("VOILUTSequence") else "window")
    elif bits <= 8 and not signed and not rescaled:
        out = np.asarray(values).astype(np.uint8)
    else:
        v = np.asarray(values, dtype=np.float64)
        out = _to_uint8(v, float(v.min()), float(v.max()))
        steps.append("min-max")
    if photometric == "MONOCHROME1":
        out = 255 - out
        steps.append("inverted")
    return out, " ".join(steps)


def _read(data: bytes, max_pixels: int | None) -> tuple[np.ndarray, str]:
    ds = _parse(data)
    if not any(k in ds for k in _PIXEL_ELEMENTS):
        sop = ds.get("SOPClassUID")
        what = f"{sop.name}" if sop is not None and hasattr(sop, "name") else "no SOP class"
        raise ImageRejected("dicom_no_pixel_data", f"DICOM object without pixel data ({what})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageRejected(
            "dicom_multi_frame", f"{frames} frames: one radiograph per file is expected"
        )
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageRejected("dicom_invalid", "pixel data without Rows / Columns") from exc
    if max_pixels is not None and rows * cols > max_pixels:
        raise ImageRejected(
            "decompression_bomb",
            f"{cols}x{rows} = {rows * cols} pixels > max_pixels {max_pixels}",
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB") and not photometric.startswith(
        "YBR"
    ):
        raise ImageRejected(
            "dicom_unsupported", f"photometric interpretation {photometric or 'missing'!r}"
        )
    _check_decoder(ds)
    try:
        # as_rgb (the default) turns YBR_* into RGB
        arr = ds.pixel_array
    except ImageRejected:
        raise
    except Exception as exc:
        uid = _syntax(ds)
        raise ImageRejected(
            "dicom_invalid", f"pixel data not decodable ({uid.name}): {type(exc).__name__}"
        ) from exc
    if photometric.startswith("MONOCHROME"):
        if arr.ndim != 2:
            raise ImageRejected("dicom_unsupported", f"grayscale pixel array of shape {arr.shape}")
        return _grayscale(ds, arr)
    from PIL import Image

    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageRejected("dicom_unsupported", f"colour pixel array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        v = arr.astype(np.float64)
        arr = _to_uint8(v, float(v.min()), float(v.max()))
    gray = np.asarray(Image.fromarray(np.ascontiguousarray(arr), "RGB").convert("L"))
    return gray, f"{photometric}->L"


def read_dicom(source: str | Path | bytes, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """Decode a single-frame DICOM image to 8-bit grayscale as it is meant to be displayed.

    Args:
        source: The file, or its bytes.
        max_pixels: Refuse images of more pixels than this (checked from the header, before
            the pixel data is decoded); ``None`` = no limit.

    Returns:
        A 2-D ``uint8`` array (rows, columns) and a short description of the conversion
        (e.g. ``MONOCHROME1 12-bit window inverted``), which carries no header value other
        than the photometric interpretation and bit depth.

    Raises:
        ImageRejected: With a reason from :data:`DICOM_REASONS` or ``decompression_bomb``; the
            detail never quotes a patient attribute.
    """
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ImageRejected("unreadable", f"{type(exc).__name__}: {exc}") from exc
    with _quiet():
        return _read(data, max_pixels)


def patient_salt() -> bytes:
    """The salt of :func:`dicom_patient_key`: ``$CXRFLOW_PATIENT_SALT``, else the default.

    The default is public, so hashes made with it can be matched against guessed ids: a
    warning (once per process) says so.
    """
    global _warned_default_salt
    salt = os.environ.get(SALT_ENV, "")
    if salt:
        return salt.encode()
    if not _warned_default_salt:
        _warned_default_salt = True
        log.warning(
            "%s is not set: DICOM patient ids are hashed with the public default salt; set it "
            "to a secret (the same one for every ingest of a data set) before ingesting real "
            "patients",
            SALT_ENV,
        )
    return DEFAULT_SALT.encode()


def hash_patient_id(patient_id: str, salt: bytes | None = None) -> str:
    """A keyed hash of a patient id: 16 hex digits of HMAC-SHA-256 (``salt`` or
    :func:`patient_salt`)."""
    key = patient_salt() if salt is None else salt
    return hmac.new(key, patient_id.strip().encode(), hashlib.sha256).hexdigest()[:16]


def dicom_patient_key(path: str | Path, salt: bytes | None = None) -> str | None:
    """``dicom-<hash>`` of a DICOM file's ``PatientID`` (header only); ``None`` without one.

    Only the ``PatientID`` element is read (pixels and every other element are skipped); the
    id itself never leaves this function.

    Args:
        path: The DICOM file.
        salt: See :func:`hash_patient_id`.
    """
    import pydicom

    try:
        with _quiet():
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["PatientID"], force=True
            )
        pid = str(ds.get("PatientID", "") or "").strip()
    except Exception:
        return None
    return f"dicom-{hash_patient_id(pid, salt)}" if pid else None
