"""A corpus of bad and awkward inputs, generated here: each is ingested or quarantined, never lost.

One ingest run (two worker processes, tiny chunks) over a Kermany tree and a Cohen root full of
traps; every input must come out exactly once, in the manifest, in quarantine.csv or in
duplicates.csv, and the counts must add up.
"""

from __future__ import annotations

import csv
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrflow.config import IngestParams
from cxrflow.data.images import ImageRejected, inspect_image
from cxrflow.data.ingest import IngestReport, ingest
from cxrflow.data.manifest import read_manifest

MAX_PIXELS = 100_000  # small, so that a 400x400 image is "bomb-sized" without a big file
PARAMS = IngestParams(workers=2, chunk_size=3, max_pixels=MAX_PIXELS)


def smooth(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8)).resize(
        size, Image.Resampling.BICUBIC
    )


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header claims ``width`` x ``height`` 8-bit gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def bad_crc_png() -> bytes:
    data = bytearray(encode(smooth(3), "PNG"))
    i = data.find(b"IDAT")
    length = struct.unpack(">I", data[i - 4 : i])[0]
    data[i + 4 + length] ^= 0xFF  # first CRC byte of IDAT; the pixel data is intact
    return bytes(data)


def broken_ihdr_png() -> bytes:
    data = bytearray(encode(smooth(4), "PNG"))
    data[29] ^= 0xFF  # IHDR CRC
    return bytes(data)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return encode(smooth(5, (96, 64)), "JPEG", exif=exif.tobytes())


def sixteen_bit_png() -> bytes:
    arr = (np.linspace(1000, 4000, 96 * 80).reshape(80, 96)).astype(np.uint16)  # 12-bit range
    im = Image.fromarray(arr)
    assert im.mode == "I;16"
    return encode(im, "PNG")


def rgba_png() -> bytes:
    rgba = smooth(6).convert("RGBA")
    rgba.putalpha(smooth(7))
    return encode(rgba, "PNG")


@dataclass(frozen=True)
class Case:
    """Where a file goes and what must become of it."""

    rel: str  # path below the corpus dir
    data: bytes | None  # None: not a file we write (e.g. a metadata row with no file)
    outcome: str  # "kept" or a quarantine reason
    mode: str = ""  # stored mode when kept
    original_mode: str = ""


SHARED = encode(smooth(8), "JPEG", quality=92)  # the same bytes under two labels
JPG = encode(smooth(9), "JPEG", quality=92)

KERMANY_CASES: tuple[Case, ...] = (
    Case("k/train/NORMAL/IM-0100-0001.jpeg", b"", "zero_byte"),
    Case("k/train/NORMAL/IM-0101-0001.jpeg", encode(smooth(1), "JPEG")[:400], "truncated"),
    Case("k/train/NORMAL/IM-0102-0001.png", bad_crc_png(), "corrupt"),
    Case("k/train/NORMAL/IM-0103-0001.png", b"this is not a PNG\n" * 10, "not_an_image"),
    Case("k/train/NORMAL/IM-0104-0001.png", rgba_png(), "kept", "L", "RGBA"),
    Case("k/train/NORMAL/IM-0105-0001.png", sixteen_bit_png(), "kept", "L", "I;16"),
    Case("k/train/NORMAL/IM-0106-0001.png", png_claiming(100_000, 100_000), "decompression_bomb"),
    Case(
        "k/train/NORMAL/IM-0107-0001.png",
        encode(smooth(2, (400, 400)), "PNG"),
        "decompression_bomb",
    ),
    Case(
        "k/train/NORMAL/IM-0108-0001.png", encode(Image.new("L", (1, 1), 128), "PNG"), "too_small"
    ),
    Case(
        "k/train/NORMAL/IM-0109-0001.tif",
        encode(Image.new("LAB", (64, 64)), "TIFF"),
        "unsupported_mode",
    ),
    Case(
        "k/train/NORMAL/IM-0110-0001.png", encode(smooth(10).convert("P"), "PNG"), "kept", "L", "P"
    ),
    Case("k/train/NORMAL/IM-0111-0001.jpeg", exif_rotated_jpeg(), "kept", "L", "L"),
    Case("k/train/NORMAL/IM-0112-0001.png", encode(smooth(11), "PNG")[:-120], "truncated"),
    Case("k/train/NORMAL/IM-0113-0001.png", broken_ihdr_png(), "corrupt"),
    Case("k/train/NORMAL/IM-0114-0001.jpeg", JPG, "kept", "L", "L"),
    Case(
        "k/train/NORMAL/IM-0115-0001.bmp",
        encode(smooth(12).convert("RGB"), "BMP"),
        "kept",
        "RGB",
        "RGB",
    ),
    Case(
        "k/train/NORMAL/IM-0116-0001.jpeg",
        encode(smooth(13).convert("RGB"), "JPEG"),
        "kept",
        "RGB",
        "RGB",
    ),
    Case("k/train/NORMAL/IM-0200-0001.jpeg", SHARED, "duplicate_label_conflict"),
    Case("k/train/PNEUMONIA/person7_virus_1.jpeg", SHARED, "duplicate_label_conflict"),
    Case(
        "k/train/PNEUMONIA/person5_bacteria_1.jpeg",
        encode(smooth(14).convert("CMYK"), "JPEG"),
        "kept",
        "L",
        "CMYK",
    ),
    Case(
        "k/train/PNEUMONIA/person99_virus 12 é.jpeg", encode(smooth(15), "JPEG"), "kept", "L", "L"
    ),
    Case("k/train/PNEUMONIA/person8_1.jpeg", encode(smooth(16), "JPEG"), "unknown_label"),
    Case("k/train/COVID/x1.jpeg", encode(smooth(17), "JPEG"), "unknown_label_folder"),
    Case("k/train/COVID/x2.jpeg", encode(smooth(18), "JPEG"), "unknown_label_folder"),
    Case("k/test/NORMAL/IM-0300-0001.jpeg", encode(smooth(19), "JPEG"), "kept", "L", "L"),
)

# Cohen rows: (filename in metadata, bytes written to images/<filename> or None, outcome)
COHEN_CASES: tuple[tuple[str, bytes | None, str], ...] = (
    ("ok.jpg", encode(smooth(20), "JPEG"), "kept"),
    ("sp ace é.png", encode(smooth(21), "PNG"), "kept"),
    ("missing.jpg", None, "missing_file"),
    ("../../etc/passwd", None, "path_escape"),
    ("/etc/passwd", None, "path_escape"),
    ("link.jpg", None, "path_escape"),  # a symlink to a file outside the root
    ("empty.jpg", b"", "zero_byte"),
)


def build_corpus(base: Path) -> tuple[Path, Path]:
    for case in KERMANY_CASES:
        target = base / case.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(case.data or b"")
    cohen = base / "c"
    (cohen / "images").mkdir(parents=True)
    outside = base / "outside.jpg"
    outside.write_bytes(encode(smooth(30), "JPEG"))
    os.symlink(outside, cohen / "images" / "link.jpg")
    for name, data, _ in COHEN_CASES:
        if data is not None:
            (cohen / "images" / name).write_bytes(data)
    (cohen / "images" / "ct.jpg").write_bytes(encode(smooth(31), "JPEG"))
    with open(cohen / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["patientid", "age", "finding", "view", "modality", "folder", "filename"])
        for i, (name, _, _) in enumerate(COHEN_CASES):
            w.writerow([str(100 + i), "60", "COVID-19", "PA", "X-ray", "images", name])
        w.writerow(["200", "60", "COVID-19", "Axial", "CT", "images", "ct.jpg"])
    return base / "k", cohen


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, IngestReport]:
    base = tmp_path_factory.mktemp("corpus")
    kermany, cohen = build_corpus(base)
    out = base / "dataset"
    report = ingest(out, PARAMS, [("kermany", kermany), ("cohen", cohen)])  # must not raise
    return out, report


def expected() -> dict[str, str]:
    # original_path is relative to the parent of the source root: "k/...", "c/images/..."
    exp = {c.rel: c.outcome for c in KERMANY_CASES}
    exp.update({f"c/images/{name}": outcome for name, _, outcome in COHEN_CASES})
    return exp


def outcomes(out: Path) -> dict[str, list[str]]:
    m = read_manifest(out)
    q = pd.read_csv(out / "quarantine.csv", dtype=str, keep_default_na=False)
    d = pd.read_csv(out / "duplicates.csv", dtype=str, keep_default_na=False)
    seen: dict[str, list[str]] = {}
    for p in m["original_path"]:
        seen.setdefault(p, []).append("kept")
    for p, reason in zip(q["original_path"], q["reason"], strict=True):
        seen.setdefault(p, []).append(reason)
    for p in d["dropped_original_path"]:
        seen.setdefault(p, []).append("duplicate")
    return seen


def test_every_input_has_exactly_its_expected_outcome(run: tuple[Path, IngestReport]) -> None:
    out, _ = run
    assert outcomes(out) == {p: [o] for p, o in expected().items()}


def test_counts_in_and_out_add_up(run: tuple[Path, IngestReport]) -> None:
    _, rep = run
    n_cohen_rows = len(COHEN_CASES) + 1  # + the CT row
    assert rep.considered == len(KERMANY_CASES) + n_cohen_rows
    assert rep.considered == (
        rep.kept + rep.quarantined + rep.excluded_by_filter + rep.duplicates_collapsed
    )
    assert rep.excluded_by_filter == 1 and rep.excluded_reasons == {
        "cohen": {"modality_not_xray": 1}
    }
    want: dict[str, int] = {}
    for outcome in expected().values():
        if outcome != "kept":
            want[outcome] = want.get(outcome, 0) + 1
    assert rep.quarantine_reasons == dict(sorted(want.items()))
    assert rep.kept == sum(o == "kept" for o in expected().values())
    assert rep.workers == 2


@pytest.mark.parametrize(
    "case", [c for c in KERMANY_CASES if c.outcome == "kept"], ids=lambda c: c.rel
)
def test_kept_images_are_stored_in_a_decodable_mode(
    run: tuple[Path, IngestReport], case: Case
) -> None:
    out, _ = run
    m = read_manifest(out).set_index("original_path")
    row = m.loc[case.rel]
    assert (row["mode"], row["original_mode"]) == (case.mode, case.original_mode)
    stored = out / row["path"]
    with Image.open(stored) as im:
        assert im.mode == case.mode
        assert im.format in ("JPEG", "PNG")
        assert (im.width, im.height) == (row["width"], row["height"])
        converted = case.original_mode not in ("L", "RGB") or case.rel.endswith((".bmp",))
        if converted or "IM-0111" in case.rel:
            assert im.format == "PNG" and stored.suffix == ".png"
        else:  # L and RGB JPEG/PNG are stored byte for byte
            assert stored.read_bytes() == (out.parent / case.rel).read_bytes()


def test_sixteen_bit_is_min_max_scaled(run: tuple[Path, IngestReport]) -> None:
    out, _ = run
    row = read_manifest(out).set_index("original_path").loc["k/train/NORMAL/IM-0105-0001.png"]
    arr = np.asarray(Image.open(out / row["path"]))
    assert arr.dtype == np.uint8 and arr.min() == 0 and arr.max() == 255


def test_exif_orientation_is_applied(run: tuple[Path, IngestReport]) -> None:
    out, _ = run
    row = read_manifest(out).set_index("original_path").loc["k/train/NORMAL/IM-0111-0001.jpeg"]
    assert (row["width"], row["height"]) == (64, 96)  # stored upright: 96x64 rotated


def test_unicode_and_spaces_survive(run: tuple[Path, IngestReport]) -> None:
    out, _ = run
    m = read_manifest(out).set_index("original_path")
    row = m.loc["k/train/PNEUMONIA/person99_virus 12 é.jpeg"]
    assert (row["label"], row["patient_id"]) == ("viral", "kermany:person99")
    assert m.loc["c/images/sp ace é.png", "patient_id"] == "cohen:101"


def test_conflict_detail_names_the_other_file(run: tuple[Path, IngestReport]) -> None:
    out, _ = run
    q = pd.read_csv(out / "quarantine.csv", dtype=str, keep_default_na=False)
    q = q.set_index("original_path")
    assert "person7_virus_1.jpeg" in q.loc["k/train/NORMAL/IM-0200-0001.jpeg", "detail"]
    assert "IM-0200-0001.jpeg" in q.loc["k/train/PNEUMONIA/person7_virus_1.jpeg", "detail"]
    assert "resolves outside" in q.loc["c/images/../../etc/passwd", "detail"]


def test_nothing_is_stored_for_rejected_inputs(run: tuple[Path, IngestReport]) -> None:
    out, rep = run
    stored = [p for p in (out / "images").rglob("*") if p.is_file()]
    assert len(stored) == rep.kept


REJECTIONS = (
    "zero_byte",
    "truncated",
    "corrupt",
    "not_an_image",
    "decompression_bomb",
    "too_small",
    "unsupported_mode",
)


@pytest.mark.parametrize(
    "case", [c for c in KERMANY_CASES if c.outcome in REJECTIONS], ids=lambda c: c.rel
)
def test_inspect_image_rejects_with_reason(tmp_path: Path, case: Case) -> None:
    f = tmp_path / Path(case.rel).name
    f.write_bytes(case.data or b"")
    with pytest.raises(ImageRejected) as err:
        inspect_image(f, PARAMS, store_dir=tmp_path / "store")
    assert err.value.reason == case.outcome
    assert err.value.detail and "\n" not in err.value.detail
    assert not (tmp_path / "store").exists()


def test_bomb_header_is_refused_at_default_limit(tmp_path: Path) -> None:
    f = tmp_path / "bomb.png"
    f.write_bytes(png_claiming(100_000, 100_000))
    assert f.stat().st_size < 200
    with pytest.raises(ImageRejected, match="decompression_bomb"):
        inspect_image(f, IngestParams())


def test_pil_limits_are_restored(tmp_path: Path) -> None:
    from PIL import ImageFile

    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    f = tmp_path / "x.png"
    f.write_bytes(png_claiming(1000, 1000))
    with pytest.raises(ImageRejected):
        inspect_image(f, PARAMS)
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
