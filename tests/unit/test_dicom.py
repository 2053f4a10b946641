"""DICOM: display pixels (MONOCHROME1, window, VOI, bit depth), quarantine reasons, one reader for
ingest, training and ``predict``, and no patient identifier in any output.

Every DICOM file here is made by the test with pydicom, carrying planted identifiers that must
never appear in a manifest, a quarantine table, a report, a log or a prediction.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import (  # noqa: E402
    JPEGLSLossless,
    RLELossless,
)

from cxrflow.config import IngestParams  # noqa: E402
from cxrflow.data import dicom  # noqa: E402
from cxrflow.data.dicom import (  # noqa: E402
    DICOM_REASONS,
    SALT_ENV,
    dicom_patient_key,
    hash_patient_id,
    read_dicom,
)
from cxrflow.data.images import REJECT_REASONS, ImageRejected, inspect_image  # noqa: E402
from cxrflow.data.ingest import ingest  # noqa: E402
from cxrflow.data.manifest import read_manifest  # noqa: E402
from cxrflow.datasets import preprocess_image  # noqa: E402
from cxrflow.predict import expand_paths, format_json, predict_paths  # noqa: E402
from cxrflow.steps.evaluate import patient_images_allowed  # noqa: E402
from tests.dicom_files import NEEDLES, PLANTED, make_dicom, smooth  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


# ------------------------------------------------------------------------------ display pixels


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = smooth(1)
    f = make_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    out, how = read_dicom(f)
    assert out.dtype == np.uint8 and out.shape == pixels.shape
    np.testing.assert_array_equal(out, 255 - pixels)
    assert how == "MONOCHROME1 8-bit inverted"


def test_twelve_bit_window_is_applied_and_scaled_to_8_bit(tmp_path: Path) -> None:
    pixels = smooth(2, top=4095)  # 12 bits stored in 16
    f = make_dicom(tmp_path / "w.dcm", pixels, bits_stored=12, WindowCenter=2048, WindowWidth=1024)
    out, how = read_dicom(f)
    assert how == "MONOCHROME2 12-bit window"
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR) to 0..4095, then 0..4095 -> 0..255
    c, w = 2048 - 0.5, 1024 - 1
    v = pixels.astype(np.float64)
    y = np.where(v <= c - w / 2, 0.0, np.where(v > c + w / 2, 4095.0, ((v - c) / w + 0.5) * 4095))
    np.testing.assert_array_equal(out, np.rint(y * 255 / 4095).astype(np.uint8))
    assert out.min() == 0 and out.max() == 255  # the window saturates both ends
    assert (pixels < 1536).any() and (pixels > 2560).any()


def test_voi_lut_sequence_wins_over_the_window(tmp_path: Path) -> None:
    pixels = smooth(3, top=1023)
    lut = Dataset()
    # 12-bit entries (pydicom 3.0 indexes an 8-bit-entry LUT with uint8, wrapping past 255)
    lut.LUTDescriptor = [1024, 0, 12]
    lut.LUTData = [min(4095, i * 8) for i in range(1024)]  # 0..511 -> 0..4088, then flat
    lut["LUTData"].VR = "US"
    f = make_dicom(
        tmp_path / "voi.dcm",
        pixels,
        bits_stored=10,
        WindowCenter=100,
        WindowWidth=10,
        VOILUTSequence=[lut],
    )
    out, how = read_dicom(f)
    assert how == "MONOCHROME2 10-bit VOI LUT"
    want = np.minimum(4095, pixels.astype(np.int64) * 8) * 255 / 4095
    np.testing.assert_array_equal(out, np.rint(want).astype(np.uint8))


def test_sixteen_bit_without_window_is_min_max_scaled(tmp_path: Path) -> None:
    pixels = (smooth(4).astype(np.uint16) * 3 + 1000).astype(np.uint16)  # 1000..1765
    out, how = read_dicom(make_dicom(tmp_path / "s.dcm", pixels))
    assert how == "MONOCHROME2 16-bit min-max"
    lo, hi = float(pixels.min()), float(pixels.max())
    want = np.rint((pixels - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    np.testing.assert_array_equal(out, want)


def test_rle_lossless_is_decoded_by_pydicom_itself(tmp_path: Path) -> None:
    pixels = smooth(5)
    plain, _ = read_dicom(make_dicom(tmp_path / "plain.dcm", pixels))
    rle, _ = read_dicom(make_dicom(tmp_path / "rle.dcm", pixels, syntax=RLELossless))
    np.testing.assert_array_equal(rle, plain)


# -------------------------------------------------------------------------------- quarantine


@pytest.mark.parametrize(
    ("kind", "reason", "words"),
    [
        ("multi_frame", "dicom_multi_frame", "3 frames"),
        ("no_pixels", "dicom_no_pixel_data", "without pixel data"),
        ("jpeg_ls", "dicom_no_decoder", "JPEG-LS Lossless Image Compression"),
        ("palette", "dicom_unsupported", "PALETTE COLOR"),
        ("not_dicom", "dicom_invalid", "not a DICOM file"),
    ],
)
def test_unusable_dicom_is_rejected_with_a_reason(
    tmp_path: Path, kind: str, reason: str, words: str
) -> None:
    f = tmp_path / f"{kind}.dcm"
    if kind == "multi_frame":
        make_dicom(f, np.stack([smooth(i) for i in range(3)]), frames=3)
    elif kind == "no_pixels":
        make_dicom(f, None)
    elif kind == "jpeg_ls":
        make_dicom(f, smooth(6), syntax=JPEGLSLossless)
    elif kind == "palette":
        make_dicom(f, smooth(7), photometric="PALETTE COLOR")
    else:
        f.write_text("PatientName=Plantedname^Zebulon\n")
    with pytest.raises(ImageRejected) as info:
        read_dicom(f)
    assert info.value.reason == reason and reason in REJECT_REASONS
    assert words in info.value.detail
    assert not any(n in str(info.value) for n in NEEDLES)


def test_dicom_reasons_are_quarantine_reasons() -> None:
    assert set(DICOM_REASONS) <= set(REJECT_REASONS)


def test_pixel_limit_is_checked_from_the_header(tmp_path: Path) -> None:
    f = make_dicom(tmp_path / "big.dcm", smooth(8))
    with pytest.raises(ImageRejected, match="max_pixels 1024") as info:
        read_dicom(f, max_pixels=1024)
    assert info.value.reason == "decompression_bomb"


# ------------------------------------------- one reader: ingest, training decode, predict


def test_dicom_and_its_png_twin_give_the_same_pixels_everywhere(tmp_path: Path) -> None:
    pixels = smooth(9)
    f = make_dicom(tmp_path / "in" / "twin.dcm", 255 - pixels, photometric="MONOCHROME1")
    twin = png(tmp_path / "in" / "twin.png", pixels)
    params = IngestParams(workers=1)
    a = inspect_image(f, params, store_dir=tmp_path / "ds")
    b = inspect_image(twin, params)
    assert (a.format, a.mode, a.original_mode, a.ext) == ("DICOM", "L", "MONOCHROME1", "png")
    assert a.conversion == "DICOM MONOCHROME1 8-bit inverted"
    assert (a.width, a.height, a.phash, a.thumb) == (b.width, b.height, b.phash, b.thumb)
    stored = np.asarray(Image.open(tmp_path / "ds" / a.rel_path))
    np.testing.assert_array_equal(stored, pixels)
    for size in (16, 48):
        np.testing.assert_array_equal(preprocess_image(f, size), preprocess_image(twin, size))
    assert sorted(p.name for p in expand_paths([tmp_path / "in"])) == ["twin.dcm", "twin.png"]


def test_preprocess_names_the_file_and_the_reason(tmp_path: Path) -> None:
    f = make_dicom(tmp_path / "ls.dcm", smooth(10), syntax=JPEGLSLossless)
    with pytest.raises(ValueError, match=r"ls\.dcm: cannot decode DICOM: dicom_no_decoder"):
        preprocess_image(f, 16)


class _MeanModel:
    """Keras-like: probabilities from the mean and the top-left quadrant's mean."""

    def predict(self, x: np.ndarray, verbose: int = 0) -> np.ndarray:
        m = x.mean(axis=(1, 2, 3)) / 255.0
        q = x[:, : x.shape[1] // 2, : x.shape[2] // 2].mean(axis=(1, 2, 3)) / 255.0
        logits = np.stack([m, q, 1 - m], axis=1) * 5
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def test_predict_paths_dicom_like_png_and_no_identifier(tmp_path: Path) -> None:
    pixels = smooth(11)
    f = make_dicom(tmp_path / "x.dcm", 255 - pixels, photometric="MONOCHROME1")
    twin = png(tmp_path / "x.png", pixels)
    bad = make_dicom(tmp_path / "y.dcm", None)
    preds = predict_paths(_MeanModel(), [f, twin, bad], ("a", "b", "c"), 16)
    assert preds[0].probabilities == preds[1].probabilities and preds[0].error is None
    assert preds[2].error is not None and "dicom_no_pixel_data" in preds[2].error
    text = format_json(preds)
    assert not any(n in text for n in NEEDLES)


def _onnx_model(path: Path, size: int, classes: tuple[str, ...]) -> Path:
    """A tiny ONNX classifier (position-dependent weights) with cxrflow's metadata."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.normal(size=(size * size, len(classes))) / (255.0 * size)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, size, size, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, len(classes)])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    meta = model.metadata_props.add()
    meta.key, meta.value = "cxrflow", json.dumps({"classes": list(classes), "image_size": size})
    onnx.save(model, str(path))
    return path


def test_cli_predict_monochrome1_dicom_equals_its_png_twin(tmp_path: Path) -> None:
    classes = ("normal", "bacterial", "covid")
    model = _onnx_model(tmp_path / "tiny.onnx", 16, classes)
    pixels = smooth(12, (200, 180))
    f = make_dicom(tmp_path / "in" / "chest.dcm", 255 - pixels, photometric="MONOCHROME1")
    twin = png(tmp_path / "in" / "chest.png", pixels)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cxrflow.cli import main; sys.exit(main(sys.argv[1:]))",
            "--params",
            str(ROOT / "params.yaml"),
            "predict",
            "--onnx",
            str(model),
            "--json",
            str(f),
            str(twin),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    dcm_pred, png_pred = json.loads(res.stdout)
    assert dcm_pred["path"] == str(f) and dcm_pred["error"] is None
    assert dcm_pred["probabilities"] == png_pred["probabilities"]
    assert dcm_pred["predicted"] == png_pred["predicted"]
    assert len(set(dcm_pred["probabilities"].values())) > 1  # the model does depend on pixels
    assert not any(n in res.stdout + res.stderr for n in NEEDLES)


# ------------------------------------------------------------------- ingest and patient data


def test_patient_key_is_a_salted_hash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = make_dicom(tmp_path / "p.dcm", smooth(13))
    monkeypatch.setenv(SALT_ENV, "salt-one")
    one = dicom_patient_key(f)
    monkeypatch.setenv(SALT_ENV, "salt-two")
    two = dicom_patient_key(f)
    assert one and two and one != two and one.startswith("dicom-") and len(one) == 22
    assert one == f"dicom-{hash_patient_id(PLANTED['PatientID'], b'salt-one')}"
    assert dicom_patient_key(make_dicom(tmp_path / "n.dcm", smooth(13), PatientID="")) is None


def test_default_salt_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(SALT_ENV, raising=False)
    monkeypatch.setattr(dicom, "_warned_default_salt", False)
    with caplog.at_level(logging.WARNING, logger="cxrflow.data.dicom"):
        a, b = hash_patient_id("x"), hash_patient_id("x")
    assert a == b
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [f"{SALT_ENV} is not set"]


def _all_text(folder: Path) -> str:
    """Every file under ``folder`` that is not a stored image, as text."""
    parts = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and "images" not in p.parts:
            parts.append(p.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


def test_ingest_dicom_kermany_layout_keeps_no_identifier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(SALT_ENV, "test-salt")
    base = tmp_path / "kermany" / "chest_xray" / "train"
    make_dicom(base / "NORMAL" / "IM-0001-0001.dcm", smooth(20), photometric="MONOCHROME1")
    make_dicom(base / "NORMAL" / "1.2.3.4.dcm", smooth(21, top=4095), bits_stored=12)
    make_dicom(
        base / "PNEUMONIA" / "person9_bacteria_1.dcm",
        smooth(22),
        PatientID="PID-7731-SECRET-2",
    )
    make_dicom(base / "NORMAL" / "cine.dcm", np.stack([smooth(23)] * 2), frames=2)
    make_dicom(base / "NORMAL" / "report.dcm", None)
    make_dicom(base / "NORMAL" / "jls.dcm", smooth(24), syntax=JPEGLSLossless)
    png(base / "NORMAL" / "IM-0002-0001.png", smooth(25))
    out = tmp_path / "dataset"
    with caplog.at_level(logging.DEBUG):
        rep = ingest(out, IngestParams(workers=1), [("kermany", tmp_path / "kermany")])
    assert rep.quarantine_reasons == {
        "dicom_multi_frame": 1,
        "dicom_no_decoder": 1,
        "dicom_no_pixel_data": 1,
    }
    m = read_manifest(out).set_index("original_path")
    assert len(m) == 4
    key = hash_patient_id(PLANTED["PatientID"], b"test-salt")
    rows = {Path(p).name: r for p, r in m.iterrows()}
    # both DICOMs of one PatientID are one patient, whatever their file names say
    assert rows["IM-0001-0001.dcm"]["patient_id"] == f"kermany:dicom-{key}"
    assert rows["1.2.3.4.dcm"]["patient_id"] == f"kermany:dicom-{key}"
    assert rows["person9_bacteria_1.dcm"]["patient_id"].startswith("kermany:dicom-")
    assert rows["person9_bacteria_1.dcm"]["patient_id"] != f"kermany:dicom-{key}"
    assert rows["IM-0002-0001.png"]["patient_id"] == "kermany:IM-0002"
    assert rows["IM-0001-0001.dcm"]["original_mode"] == "MONOCHROME1"
    assert set(m.loc[m["original_mode"] != "L", "mode"]) == {"L"}
    # the stored DICOM images are PNGs of their display pixels
    stored = sorted((out / "images").rglob("*.*"))
    assert len(stored) == 4 and {p.suffix for p in stored} == {".png"}
    dumped = _all_text(out) + "\n" + caplog.text + json.dumps(rep.to_dict())
    assert "dicom_no_decoder" in dumped
    for needle in NEEDLES:
        assert needle not in dumped, needle
    for p in stored:
        assert not any(n.encode() in p.read_bytes() for n in NEEDLES)


def test_patient_images_go_to_mlflow_only_for_the_phantom_by_default() -> None:
    assert patient_images_allowed("auto", "phantom")
    assert not patient_images_allowed("auto", "real")
    assert not patient_images_allowed("auto", "")
    assert patient_images_allowed("always", "real")
    assert not patient_images_allowed("never", "phantom")


def test_params_default_is_auto() -> None:
    from cxrflow.config import load_params

    assert load_params(ROOT / "params.yaml").evaluate.log_patient_images == "auto"


def test_bytes_and_path_give_the_same_pixels(tmp_path: Path) -> None:
    f = make_dicom(tmp_path / "b.dcm", smooth(30))
    np.testing.assert_array_equal(read_dicom(f.read_bytes())[0], read_dicom(f)[0])


def test_a_malformed_identifier_is_not_echoed_by_pydicom(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    with pytest.warns(UserWarning, match="Plantedname"):  # pydicom quotes bad values
        f = make_dicom(tmp_path / "bad.dcm", smooth(31), PatientBirthDate="Plantedname1923")
    recwarn.clear()
    with caplog.at_level(logging.DEBUG):
        read_dicom(f)
        dicom_patient_key(f)
    said = caplog.text + " ".join(str(w.message) for w in recwarn)
    assert "Plantedname" not in said
