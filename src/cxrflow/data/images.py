"""Safe image inspection: decode limits, integrity checks, normalised storage and hashes.

:func:`inspect_image` is the only place where ingest decodes an untrusted file. It

1. reads the file's bytes once (SHA-256 of exactly those bytes, empty files rejected);
2. opens the image *lazily* (header only) with PIL's decompression-bomb limit set to
   ``IngestParams.max_pixels`` and PIL's bomb warning turned into an error, and checks
   ``width * height`` and the shortest side before any pixel is decoded;
3. verifies PNG chunk CRCs (``Image.verify``; a plain ``load`` ignores bad CRCs) and then fully
   decodes the image (``load``), which catches truncated JPEG and PNG streams;
   A DICOM file (a ``.dcm``/``.dicom`` name or the ``DICM`` preamble) is decoded by
   :func:`cxrflow.data.dicom.read_dicom` instead (rescale, VOI LUT or window, MONOCHROME1
   inverted, 8-bit) and always stored as a PNG of those pixels: no header, hence no patient
   attribute, reaches the dataset;
4. normalises the pixel mode: ``L`` and ``RGB`` JPEG/PNG files are stored byte for byte; every
   other mode is converted to 8-bit ``L`` and stored as PNG (see :func:`to_storable`);
5. computes a 64-bit perceptual hash (``imagehash.phash``, the manifest's ``phash``) and a
   32x32 grayscale thumbnail (box-filtered, 1 KiB) that ingest uses to confirm near duplicates
   (see :mod:`cxrflow.data.ingest`), both of the image as stored.

Anything wrong raises :class:`ImageRejected` with a one-word reason from
:data:`REJECT_REASONS` and a one-line human detail; nothing else escapes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cxrflow.config import IngestParams
from cxrflow.data.manifest import IMAGES_DIR

if TYPE_CHECKING:
    from PIL import Image as PILImage

REJECT_REASONS: tuple[str, ...] = (
    "unreadable",  # the OS would not let us read the file (permissions, vanished, a directory)
    "zero_byte",  # empty file
    "not_an_image",  # no image format recognised (e.g. a text file named .png)
    "truncated",  # the pixel stream ends early (cut-off JPEG / PNG)
    "corrupt",  # bad PNG CRC, broken compressed stream, undecodable header of a known format
    "decompression_bomb",  # width * height > IngestParams.max_pixels (checked before decoding)
    "too_small",  # shortest side < IngestParams.min_side
    "unsupported_mode",  # a pixel mode we do not convert (LAB, HSV, ...)
    # DICOM (see cxrflow.data.dicom)
    "dicom_no_pixel_data",  # a non-image object: SR, presentation state, KOS, ...
    "dicom_multi_frame",  # NumberOfFrames > 1
    "dicom_no_decoder",  # a compressed transfer syntax with no installed decoder
    "dicom_unsupported",  # photometric interpretation we do not convert (PALETTE COLOR, ...)
    "dicom_invalid",  # pydicom cannot parse the file or decode its pixels
)
"""Quarantine reasons :func:`inspect_image` can give."""

KEPT_MODES: tuple[str, ...] = ("L", "RGB")
"""Pixel modes stored as they are."""

COPY_FORMATS: dict[str, str] = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png"}
"""Formats stored byte for byte (when the mode is kept), mapped to the stored extension.

Everything else (TIFF, BMP, GIF, WebP, ...) is re-encoded as PNG so that every stored file can
be decoded by ``tf.io.decode_image``.
"""

SIXTEEN_BIT_MODES: frozenset[str] = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
ALPHA_MODES: frozenset[str] = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
CONVERTIBLE_MODES: frozenset[str] = frozenset(
    {"1", "P", "CMYK", "YCbCr", "RGBX", *ALPHA_MODES, *SIXTEEN_BIT_MODES}
)

# Magic numbers of formats PIL would normally recognise: a file that starts like one of these but
# does not open is a *corrupt* image, not "not an image".
_MAGIC: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)
THUMB_SIDE = 32
"""Side of the near-duplicate thumbnail (32x32 = 1 KiB per image)."""

_BYTES_PER_PIXEL_MAX = 8  # 16-bit RGBA: the widest common uncompressed pixel
_EXIF_ORIENTATION = 0x0112


class ImageRejected(Exception):
    """An input file that cannot be ingested.

    Attributes:
        reason: One of :data:`REJECT_REASONS`.
        detail: One line for a person.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = " ".join(str(detail).split())[:300]

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class ImageInfo:
    """What ingest needs to know about one accepted image (small and picklable).

    Attributes:
        width: Width in pixels as stored.
        height: Height in pixels as stored.
        mode: PIL mode as stored: ``L`` or ``RGB``.
        original_mode: PIL mode of the input file (``RGBA``, ``I;16``, ``CMYK``, ...).
        format: PIL format of the input file (``JPEG``, ``PNG``, ...).
        sha256: Hex SHA-256 of the original file bytes.
        phash: 64-bit ``imagehash.phash`` of the grayscale image as stored, 16 hex digits.
        thumb: ``THUMB_SIDE`` x ``THUMB_SIDE`` grayscale thumbnail, uint8 bytes, row-major;
            confirms near duplicates.
        ext: Extension of the stored file (``jpg`` or ``png``).
        stored_as: ``copied`` (original bytes) or ``converted`` (re-encoded PNG).
        conversion: How it was converted (``""`` when copied), e.g. ``I;16->L min-max``.
    """

    width: int
    height: int
    mode: str
    original_mode: str
    format: str
    sha256: str
    phash: str
    thumb: bytes = field(repr=False)
    ext: str
    stored_as: str
    conversion: str = ""

    @property
    def image_id(self) -> str:
        """Manifest ``image_id``: the first 16 hex digits of the SHA-256."""
        return self.sha256[:16]

    @property
    def rel_path(self) -> str:
        """Path of the stored file relative to the dataset directory."""
        return stored_rel_path(self.sha256, self.ext)


def stored_rel_path(sha256: str, ext: str) -> str:
    """Content-addressed location of a stored image: ``images/<sha[:2]>/<sha256>.<ext>``."""
    return f"{IMAGES_DIR}/{sha256[:2]}/{sha256}.{ext}"


@contextlib.contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Make PIL refuse images above ``max_pixels`` and never accept truncated data.

    PIL warns above ``MAX_IMAGE_PIXELS`` and raises above twice that; here the warning is an
    error too. Both globals are restored on exit (they are process-wide).
    """
    from PIL import Image, ImageFile

    old_max, old_trunc = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old_max
        ImageFile.LOAD_TRUNCATED_IMAGES = old_trunc


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _classify_decode_error(exc: BaseException) -> ImageRejected:
    from PIL import Image

    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageRejected("decompression_bomb", _one_line(exc))
    msg = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in msg:
        return ImageRejected("truncated", _one_line(exc))
    if isinstance(exc, ValueError) and "decompressed data too large" in msg:
        return ImageRejected("decompression_bomb", _one_line(exc))
    return ImageRejected("corrupt", _one_line(exc))


def _open(data: bytes) -> PILImage.Image:
    """Open lazily (header only); map every failure to an :class:`ImageRejected`."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        if data.startswith(_MAGIC):
            raise ImageRejected("corrupt", f"header of a known format is broken: {exc}") from exc
        raise ImageRejected("not_an_image", "no image format recognised") from exc
    except Exception as exc:
        raise _classify_decode_error(exc) from exc


def _orientation(im: PILImage.Image) -> int:
    """EXIF orientation (1 = upright); a broken EXIF block counts as upright, not as corrupt."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) else 1


def _scale_to_8bit(im: PILImage.Image) -> PILImage.Image:
    """16-bit / 32-bit / float grayscale to 8-bit ``L`` by min-max scaling of the actual range.

    Min-max rather than ``>> 8``: radiographs are often 10-12-bit values in a 16-bit container,
    which ``>> 8`` would leave nearly black. A constant image maps to 0.
    """
    import numpy as np
    from PIL import Image

    arr = np.asarray(im).astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = np.rint((arr - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(scaled.astype(np.uint8))  # 2-D uint8 -> mode L


def to_storable(im: PILImage.Image) -> tuple[PILImage.Image, str]:
    """Convert a decoded image to a stored mode (``L`` or ``RGB``).

    ``L`` and ``RGB`` are returned unchanged. Alpha modes (``RGBA``, ``LA``, ``PA``, and ``P``
    with transparency) are composited onto black (the empty background of a radiograph) and
    converted to ``L``; ``P``, ``1``, ``CMYK``, ``YCbCr`` and ``RGBX`` are converted to ``L``;
    16-bit, 32-bit and float grayscale are min-max scaled to 8-bit ``L``.

    Returns:
        The image and a short description of the conversion (``""`` when none).

    Raises:
        ImageRejected: ``unsupported_mode`` for any other mode (``LAB``, ``HSV``, ...).
    """
    from PIL import Image

    mode = im.mode
    if mode in KEPT_MODES:
        return im, ""
    if mode in SIXTEEN_BIT_MODES:
        return _scale_to_8bit(im), f"{mode}->L min-max"
    if mode in ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L"), f"{mode}->L on black"
    if mode in CONVERTIBLE_MODES:
        direct = im if mode in ("P", "1") else im.convert("RGB")
        return direct.convert("L"), f"{mode}->L"
    raise ImageRejected("unsupported_mode", f"pixel mode {mode!r} is not converted")


def _write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` unless it exists (content-addressed: same name, same bytes)."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _read_input(path: Path, max_pixels: int) -> bytes:
    """The file's bytes, refusing a file larger than any image of ``max_pixels`` or empty."""
    try:
        size = path.stat().st_size
        if size > _BYTES_PER_PIXEL_MAX * max_pixels + (1 << 20):
            raise ImageRejected(
                "decompression_bomb",
                f"file is {size} bytes, more than any image of <= {max_pixels} pixels",
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ImageRejected("unreadable", _one_line(exc)) from exc
    if not data:
        raise ImageRejected("zero_byte", "file is empty")
    return data


def inspect_image(
    path: str | Path, params: IngestParams, *, store_dir: str | Path | None = None
) -> ImageInfo:
    """Check, normalise and hash one image file; optionally store it content-addressed.

    Args:
        path: The input file.
        params: Decoding limits (``max_pixels``, ``min_side``).
        store_dir: A dataset directory; when given the image is written to
            ``store_dir/images/<sha[:2]>/<sha256>.<ext>`` (original bytes for ``L``/``RGB``
            JPEG and PNG files, else a PNG of the converted image), atomically.

    Returns:
        The image's :class:`ImageInfo`.

    Raises:
        ImageRejected: With a reason from :data:`REJECT_REASONS`. No other exception escapes
            for a bad file (a failing ``store_dir`` write raises ``OSError``).
    """
    import imagehash
    from PIL import Image, ImageOps

    path = Path(path)
    data = _read_input(path, params.max_pixels)
    sha = hashlib.sha256(data).hexdigest()

    from cxrflow.data.dicom import is_dicom

    if is_dicom(path, data[:132]):
        return _inspect_dicom(data, sha, params, store_dir)

    with pixel_limit(params.max_pixels):
        im = _open(data)
        fmt = im.format or "?"
        original_mode = im.mode
        width, height = im.size
        if width * height > params.max_pixels:
            raise ImageRejected(
                "decompression_bomb",
                f"{width}x{height} = {width * height} pixels > max_pixels {params.max_pixels}",
            )
        if min(width, height) < params.min_side:
            raise ImageRejected(
                "too_small", f"{width}x{height}: shortest side < min_side {params.min_side}"
            )
        try:
            if fmt == "PNG":
                im.verify()  # checks every chunk's CRC; the object is unusable afterwards
                im = _open(data)
            im.load()
            orientation = _orientation(im)
            if orientation in range(2, 9):  # 1 (or none) is upright
                im = ImageOps.exif_transpose(im) or im
        except ImageRejected:
            raise
        except Exception as exc:
            raise _classify_decode_error(exc) from exc

    try:
        stored, conversion = to_storable(im)
        if orientation in range(2, 9):
            conversion = "; ".join(c for c in (conversion, f"EXIF orientation {orientation}") if c)
        copy = not conversion and fmt in COPY_FORMATS
        if not copy and not conversion:
            conversion = f"{fmt}->PNG"
        gray = stored if stored.mode == "L" else stored.convert("L")
        phash64 = str(imagehash.phash(gray))
        thumb = gray.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX).tobytes()
    except ImageRejected:
        raise
    except Exception as exc:
        raise ImageRejected("corrupt", f"conversion failed: {_one_line(exc)}") from exc

    info = ImageInfo(
        width=stored.width,
        height=stored.height,
        mode=stored.mode,
        original_mode=original_mode,
        format=fmt,
        sha256=sha,
        phash=phash64,
        thumb=thumb,
        ext=COPY_FORMATS[fmt] if copy else "png",
        stored_as="copied" if copy else "converted",
        conversion=conversion,
    )
    if store_dir is not None:
        target = Path(store_dir) / info.rel_path
        if copy:
            _write_atomic(target, data)
        elif not target.exists():
            buf = io.BytesIO()
            stored.save(buf, format="PNG")
            _write_atomic(target, buf.getvalue())
    return info


def _inspect_dicom(
    data: bytes, sha: str, params: IngestParams, store_dir: str | Path | None
) -> ImageInfo:
    """:func:`inspect_image` of a DICOM file: decoded by :func:`cxrflow.data.dicom.read_dicom`,
    stored as a PNG of its display pixels (``format`` ``DICOM``, ``original_mode`` the
    photometric interpretation and bit depth)."""
    import imagehash
    from PIL import Image

    from cxrflow.data.dicom import read_dicom

    pixels, conversion = read_dicom(data, params.max_pixels)
    height, width = pixels.shape
    if min(width, height) < params.min_side:
        raise ImageRejected(
            "too_small", f"{width}x{height}: shortest side < min_side {params.min_side}"
        )
    gray = Image.fromarray(pixels)  # 2-D uint8 -> mode L
    info = ImageInfo(
        width=width,
        height=height,
        mode="L",
        original_mode=conversion.split(" ", 1)[0].split("->", 1)[0],
        format="DICOM",
        sha256=sha,
        phash=str(imagehash.phash(gray)),
        thumb=gray.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX).tobytes(),
        ext="png",
        stored_as="converted",
        conversion=f"DICOM {conversion}",
    )
    if store_dir is not None:
        target = Path(store_dir) / info.rel_path
        if not target.exists():
            buf = io.BytesIO()
            gray.save(buf, format="PNG")
            _write_atomic(target, buf.getvalue())
    return info
