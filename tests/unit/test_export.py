"""``cxrflow export`` and ``predict --onnx``: a tiny model to ONNX fp32 and static int8, the int8
model agreeing with fp32, the same prediction output from either, one-line errors naming the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrflow.export import (
    EXPORT_INFO_FILE,
    FP32_FILE,
    INT8_FILE,
    Calibration,
    calibration_digest,
    export_model,
    load_onnx_model,
    sample_calibration_rows,
)
from cxrflow.predict import format_json, format_table, predict_paths

keras = pytest.importorskip("keras")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("normal", "bacterial", "covid")
SIZE = 16
# mean grey m in [0, 1] -> class 0 below 0.4, class 2 above 0.6, class 1 between
_LOGIT_SLOPE, _LOGIT_BIAS = (-10.0, 0.0, 10.0), (4.0, 0.0, -6.0)


def _tiny_model() -> Any:
    """Convolution, pooling and a softmax classifier with fixed weights: the class is a
    function of mean brightness, so a correct int8 model must keep the decisions."""
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv0")
    x = conv(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    dense = keras.layers.Dense(len(CLASSES), activation="softmax", name="classifier")
    outputs = dense(x)
    model = keras.Model(inputs, outputs, name="small_cnn")
    kernel = np.zeros((3, 3, 1, 4), np.float32)
    kernel[1, 1, 0, :] = (0.5, 1.0, 1.5, 1.0)  # per-channel scales differ: per-channel weights
    conv.set_weights([kernel, np.zeros(4, np.float32)])
    w = np.tile(np.asarray(_LOGIT_SLOPE, np.float32) / 4.0, (4, 1))
    w /= np.asarray((0.5, 1.0, 1.5, 1.0), np.float32)[:, None]
    dense.set_weights([w, np.asarray(_LOGIT_BIAS, np.float32)])
    return model


def _images(n: int, seed: int) -> np.ndarray:
    """Noisy grey images whose mean level spans [0, 255]."""
    rng = np.random.default_rng(seed)
    levels = np.linspace(10, 245, n)
    noise = rng.normal(0.0, 12.0, (n, SIZE, SIZE, 1))
    return np.clip(levels[:, None, None, None] + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model() -> Any:
    return _tiny_model()


@pytest.fixture(scope="module")
def exported(model: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("export")
    x = _images(24, seed=1)
    calib = Calibration(x, tuple(f"train/{i}.png" for i in range(len(x))), seed=3)
    info = export_model(
        model, out, CLASSES, SIZE, "model_0", calib, source="test", dataset="dataset_0"
    )
    return out, info


def _png(path: Path, level: int, side: int = 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(level)
    img = np.clip(level + rng.normal(0, 8, (side, side)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def test_export_writes_both_models_and_the_record(exported: tuple[Path, dict[str, Any]]) -> None:
    import onnx

    out, info = exported
    assert json.loads((out / EXPORT_INFO_FILE).read_text()) == json.loads(
        json.dumps(info, default=str)
    )
    assert info["files"]["fp32"]["file"] == FP32_FILE
    assert info["files"]["int8"]["file"] == INT8_FILE
    assert info["classes"] == list(CLASSES) and info["image_size"] == SIZE
    assert info["input"]["shape"] == [None, SIZE, SIZE, 1]
    calib = info["calibration"]
    assert calib["n_images"] == 24 and calib["split"] == "train" and calib["seed"] == 3
    assert calib["digest"] == calibration_digest(_images(24, seed=1), calib["images"])
    assert calib["dataset"] == "dataset_0"
    for dist in ("onnx", "onnxruntime", "tf2onnx"):
        assert info["versions"][dist]
    int8 = onnx.load(str(out / INT8_FILE))
    ops = [n.op_type for n in int8.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # per-channel weights: the conv weight's scale is a vector, one per output channel
    inits = {t.name: t for t in int8.graph.initializer}
    conv = next(n for n in int8.graph.node if n.op_type == "Conv")
    weight_dq = next(n for n in int8.graph.node if n.output[0] == conv.input[1])
    assert list(inits[weight_dq.input[1]].dims) == [4]
    # the probabilities stay float: nothing after the softmax
    softmax = next(n for n in int8.graph.node if n.op_type == "Softmax")
    assert softmax.output[0] == int8.graph.output[0].name
    for path, precision in ((out / FP32_FILE, "fp32"), (out / INT8_FILE, "int8")):
        clf = load_onnx_model(path)
        assert clf.classes == CLASSES and clf.image_size == SIZE
        assert clf.precision == precision and clf.model_key == "model_0"


def test_fp32_matches_keras_and_int8_agrees(
    model: Any, exported: tuple[Path, dict[str, Any]]
) -> None:
    out, _ = exported
    x = _images(60, seed=7)
    ref = model.predict(x.astype(np.float32), verbose=0)
    fp32 = load_onnx_model(out / FP32_FILE, threads=1).predict(x)
    int8 = load_onnx_model(out, threads=1).predict(x, batch_size=7)  # a directory: int8
    assert fp32.shape == int8.shape == (60, len(CLASSES))
    np.testing.assert_allclose(fp32, ref, atol=1e-5)
    agree = float((int8.argmax(1) == ref.argmax(1)).mean())
    assert agree >= 0.9, agree
    assert np.abs(int8 - ref).max() < 0.15
    np.testing.assert_allclose(int8.sum(1), 1.0, atol=1e-5)


def test_predict_output_is_the_same_from_keras_and_int8(
    model: Any, exported: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = exported
    files = [_png(tmp_path / f"{name}.png", level) for name, level in (("d", 30), ("b", 230))]
    folder = tmp_path / "more"
    _png(folder / "m.png", 128)
    (tmp_path / "broken.png").write_bytes(b"no image")
    args = [str(p) for p in (*files, folder, tmp_path / "broken.png", tmp_path / "nope.png")]
    keras_preds = predict_paths(model, args, CLASSES, SIZE)
    int8_preds = predict_paths(load_onnx_model(out), args, CLASSES, SIZE)
    assert [p.path for p in keras_preds] == [p.path for p in int8_preds]
    assert [p.predicted for p in keras_preds] == [p.predicted for p in int8_preds]
    assert [p.predicted for p in int8_preds[:3]] == ["normal", "covid", "bacterial"]
    assert [p.error for p in keras_preds] == [p.error for p in int8_preds]
    ok_k = [p for p in keras_preds if not p.error]
    ok_q = [p for p in int8_preds if not p.error]
    for a, b in zip(json.loads(format_json(ok_k)), json.loads(format_json(ok_q)), strict=True):
        assert a.keys() == b.keys() and a["probabilities"].keys() == b["probabilities"].keys()
    table_k, table_q = format_table(ok_k, CLASSES), format_table(ok_q, CLASSES)
    assert table_k.splitlines()[0] == table_q.splitlines()[0]
    assert [r.split()[:2] for r in table_k.splitlines()] == [
        r.split()[:2] for r in table_q.splitlines()
    ]


def _cxrflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    code = (
        "import sys; from cxrflow.cli import main; rc = main(sys.argv[1:]); "
        "print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'NO_TF', file=sys.stderr); "
        "sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "--params", str(ROOT / "params.yaml"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_predict_onnx_serves_without_tensorflow(
    exported: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = exported
    img = _png(tmp_path / "bright.png", 230)
    res = _cxrflow("predict", "--onnx", str(out), "--json", str(img), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (pred,) = json.loads(res.stdout)
    assert pred["path"] == str(img) and pred["predicted"] == "covid" and pred["error"] is None
    assert list(pred["probabilities"]) == list(CLASSES)
    assert res.stderr.strip().splitlines()[-1] == "NO_TF"


_MARKERS = ("NO_TF", "TF_IMPORTED")


def _error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    # TensorFlow's own C++ start-up lines may come first; the error is the last line, and one
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and ln not in _MARKERS]
    errors = [ln for ln in lines if ln.startswith("cxrflow: error: ")]
    assert errors == lines[-1:], res.stderr
    assert "Traceback" not in res.stderr
    return errors[0]


def test_cli_errors_are_one_line_naming_the_file(tmp_path: Path) -> None:
    img = _png(tmp_path / "x.png", 100)
    missing = tmp_path / "gone" / "model.int8.onnx"
    line = _error_line(_cxrflow("predict", "--onnx", str(missing), str(img), cwd=tmp_path))
    assert str(missing) in line and "cxrflow export" in line
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    line = _error_line(_cxrflow("predict", "--onnx", str(bad), str(img), cwd=tmp_path))
    assert str(bad) in line and "not a loadable ONNX model" in line
    line = _error_line(
        _cxrflow("predict", "--onnx", str(bad), "--model-uri", "runs:/x/m", str(img), cwd=tmp_path)
    )
    assert "not both" in line


def test_wrong_input_size_names_the_file(exported: tuple[Path, dict[str, Any]]) -> None:
    out, _ = exported
    clf = load_onnx_model(out)
    with pytest.raises(ValueError) as err:
        clf.predict(np.zeros((2, SIZE * 2, SIZE * 2, 1), np.uint8))
    msg = str(err.value)
    assert str(out / INT8_FILE) in msg and f"(n, {SIZE}, {SIZE}, 1)" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="got \\(16, 16, 1\\)"):
        clf.predict(np.zeros((SIZE, SIZE, 1), np.uint8))


def test_export_refuses_a_model_of_another_input_size(model: Any, tmp_path: Path) -> None:
    calib = Calibration(_images(2, 0), ("a", "b"))
    with pytest.raises(ValueError, match="expected \\(32, 32, 1\\)"):
        export_model(model, tmp_path, CLASSES, 32, "model_0", calib)


def test_calibration_rows_balanced_deterministic_and_order_free() -> None:
    table = pd.DataFrame(
        {
            "path": [
                f"{c}/{i:03d}.png" for c, k in (("a", 50), ("b", 5), ("c", 20)) for i in range(k)
            ],
            "label": ["a"] * 50 + ["b"] * 5 + ["c"] * 20,
        }
    )
    rows = sample_calibration_rows(table, 21, seed=4)
    assert len(rows) == 21 and list(rows["path"]) == sorted(rows["path"])
    assert rows["label"].value_counts().to_dict() == {"a": 8, "b": 5, "c": 8}
    shuffled = table.sample(frac=1.0, random_state=0)
    assert list(sample_calibration_rows(shuffled, 21, seed=4)["path"]) == list(rows["path"])
    assert list(sample_calibration_rows(table, 21, seed=5)["path"]) != list(rows["path"])
    assert len(sample_calibration_rows(table, 500, seed=4)) == len(table)
    with pytest.raises(ValueError, match="at least 1"):
        sample_calibration_rows(table, 0, seed=4)
    with pytest.raises(ValueError, match="empty"):
        sample_calibration_rows(table.iloc[:0], 3, seed=4)


def test_cli_export_from_a_model_directory(model: Any, tmp_path: Path) -> None:
    """`cxrflow export` on a `train` output: calibrates on that model's training split only,
    compares int8 with fp32 on its validation split, fails past the allowed accuracy drop."""
    data, splits, mdir = tmp_path / "data", tmp_path / "splits", tmp_path / "model_0"
    rows = []
    for i in range(14):
        split = "train" if i < 8 else "val" if i < 12 else "test"
        rel = f"images/{split}_{i}.png"
        _png(data / rel, 20 + 17 * i)
        label = CLASSES[i % 3]
        rows.append({"path": rel, "label": label, "split": split, "width": 20, "height": 20})
    splits.mkdir()
    pd.DataFrame(rows).to_csv(splits / "dataset_0.csv", index=False)
    mdir.mkdir()
    model.save(mdir / "model.keras")
    (mdir / "model_info.json").write_text(
        json.dumps(
            {
                "model_key": "model_0",
                "classes": list(CLASSES),
                "image_size": SIZE,
                "dataset": "dataset_0",
            }
        )
    )
    out = tmp_path / "onnx"
    res = _cxrflow(
        "export",
        "--model",
        str(mdir),
        "--dataset",
        str(data),
        "--splits",
        str(splits),
        "--out",
        str(out),
        "--calibration-images",
        "5",
        "--max-drop",
        "100",  # four validation images: one flip is 25 points; the gate is tested below
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "model_0" in res.stdout and "5 train images" in res.stdout
    info = json.loads((out / EXPORT_INFO_FILE).read_text())
    assert info["calibration"]["n_images"] == 5
    assert all(p.startswith("images/train_") for p in info["calibration"]["images"])
    assert info["source"] == str(mdir) and info["model_key"] == "model_0"
    assert (out / FP32_FILE).is_file() and (out / INT8_FILE).is_file()
    check = info["check"]
    assert check["n"] == 4 and 0.0 <= check["agreement"] <= 1.0
    assert set(check["drop_points"]) == {"accuracy", "f1_macro"}
    assert "4 validation images" in res.stdout
    common = ["--dataset", str(data), "--splits", str(splits), "--out", str(out)]
    line = _error_line(
        _cxrflow("export", "--model", str(mdir), *common, "--max-drop", "-1", cwd=tmp_path)
    )
    assert str(out / INT8_FILE) in line and "limit -1.0" in line
    line = _error_line(
        _cxrflow("export", "--model", str(tmp_path / "nowhere"), *common, cwd=tmp_path)
    )
    assert "nowhere" in line


@pytest.mark.slow
def test_inference_bench_quick_writes_valid_json(tmp_path: Path) -> None:
    """`bench/inference.py --quick`: GEMM rate, small CNN fp32 vs int8, one JSON file."""
    out = tmp_path / "inference.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "inference.py"), "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["paper"]["k80_ms_per_image"] == [26.9, 42.7]
    assert data["gemm_fp32"]["best_gflops"] > 0
    assert data["machine"]["threads"] >= 1 and data["machine"]["cpu_model"]
    cnn = data["models"]["small_cnn"]
    assert cnn["flops_per_image"] > 1e9  # ~1.2 GFLOP at 224x224
    for engine in ("tf_fp32", "ort_fp32", "ort_int8"):
        row = cnn["latency_ms_per_image"][engine]
        assert row["batch1_mean_ms"] > 0 and row["batched_p95_ms"] > 0
        assert cnn["achieved"][engine]["batch1_fraction_of_fp32_gemm"] > 0
    acc = cnn["accuracy"]
    assert acc["n_test"] > 0 and 0.0 <= acc["int8_agrees_with_fp32"] <= 1.0
    assert set(acc["drop_points_fp32_minus_int8"]) == {"accuracy", "f1_macro"}
    assert data["target"]["checked"] is False


def test_calibration_ranges_cover_every_batch(model: Any, tmp_path: Path) -> None:
    """The one bright image is in the first calibration batch: the input's range must still
    reach 255 (ONNX Runtime's CalibMaxIntermediateOutputs would have dropped that batch)."""
    import onnx
    from onnx import numpy_helper

    x = np.full((13, SIZE, SIZE, 1), 40, np.uint8)
    x[0] = 255
    calib = Calibration(x, tuple(f"c{i}" for i in range(len(x))))
    export_model(model, tmp_path, CLASSES, SIZE, "model_0", calib)
    graph = onnx.load(str(tmp_path / INT8_FILE)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    # the first quantized tensor is the rescaled input (the stem's x / 255 stays float)
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear")
    scale, zero = float(inits[q.input[1]]), int(inits[q.input[2]])
    assert (255 - zero) * scale == pytest.approx(1.0, rel=0.01)


def test_identity_scaling_is_dropped_only_where_it_cannot_broadcast() -> None:
    from onnx import TensorProto, helper, numpy_helper

    from cxrflow.export.convert import _drop_identity_scaling

    def graph(x_shape: list[Any]) -> Any:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        ones = numpy_helper.from_array(np.ones((1, 1, 1, 3), np.float32), "ones")
        nodes = [
            helper.make_node("Mul", ["x", "ones"], ["m"]),
            helper.make_node("Relu", ["m"], ["y"]),
        ]
        return helper.make_model(helper.make_graph(nodes, "g", [x], [y], [ones]))

    same = graph([None, 4, 4, 3])  # unit variance per channel: x * 1 == x
    assert _drop_identity_scaling(same) == 1
    assert [n.op_type for n in same.graph.node] == ["Relu"] and same.graph.node[0].input == ["x"]
    assert not same.graph.initializer
    widening = graph([None, 4, 4, 1])  # x * ones would make three channels of one
    assert _drop_identity_scaling(widening) == 0 and len(widening.graph.node) == 2
