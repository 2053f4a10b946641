"""The served model (``cxrflow.serving``): images in, class names and probabilities out, equal
to ``cxrflow predict``; requirements as installed; Keras and int8 ONNX backends alike."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

keras = pytest.importorskip("keras")

CLASSES = ("normal", "bacterial", "covid")
SIZE = 16


@pytest.fixture(scope="module")
def model() -> Any:
    """A tiny softmax model with the registered models' input contract (not constant: the
    probabilities depend on the image)."""
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(
        len(CLASSES), activation="softmax", kernel_initializer="he_normal"
    )(x)
    return keras.Model(inputs, outputs)


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CXRFLOW_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())
    return uri


def _image(path: Path, seed: int, side: int = 40) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (side, side + 3), dtype=np.uint8)).save(path)
    return path


def _log(model: Any) -> str:
    import mlflow
    from cxrflow import tracking

    tracking.configure("serving-test")
    with mlflow.start_run():
        return tracking.log_keras_model(
            model, "model", {"classes": list(CLASSES), "image_size": SIZE, "model_key": "model_0"}
        )


def test_requirements_name_what_is_installed() -> None:
    import importlib.metadata as md

    from cxrflow.serving import pip_requirements

    keras_reqs = pip_requirements("keras")
    tf = "tensorflow-cpu" if _installed("tensorflow-cpu") else "tensorflow"
    assert f"{tf}=={md.version(tf)}" in keras_reqs
    assert f"keras=={md.version('keras')}" in keras_reqs
    assert f"cxrflow=={md.version('cxrflow')}" in keras_reqs
    onnx_reqs = pip_requirements("onnx")
    assert not any(r.startswith(("tensorflow", "keras")) for r in onnx_reqs)
    assert any(r.startswith("onnxruntime==") for r in onnx_reqs)
    with pytest.raises(ValueError, match="unknown backend"):
        pip_requirements("torch")


def _installed(dist: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(dist)
    except md.PackageNotFoundError:
        return False
    return True


def test_bad_rows_get_their_own_error_and_the_others_are_predicted(
    model: Any, tmp_path: Path
) -> None:
    from cxrflow.serving import classify_frame, encode_image

    good = _image(tmp_path / "a.png", 1)
    frame = pd.DataFrame(
        {
            "image": [encode_image(good.read_bytes()), "not base64!", encode_image(b"junk"), None],
            "path": [None, None, None, str(tmp_path / "missing.png")],
        }
    )
    out = classify_frame(model, frame, CLASSES, SIZE, None)
    assert list(out.columns) == ["predicted", "probabilities", "error"]
    assert out.loc[0, "predicted"] in CLASSES and out.loc[0, "error"] is None
    assert "row 1: image is not base64" in out.loc[1, "error"]
    assert out.loc[2, "error"].startswith("row 2: cannot decode image")
    assert "missing.png: no such file" in out.loc[3, "error"]
    assert out.loc[1:, "predicted"].isna().all()


def test_logged_pyfunc_equals_predict_on_bytes_and_paths(
    model: Any, store: str, tmp_path: Path
) -> None:
    import mlflow
    from cxrflow import tracking
    from cxrflow.predict import predict_paths
    from cxrflow.serving import encode_image

    uri = _log(model)
    info = mlflow.models.get_model_info(uri)
    assert info.metadata["classes"] == list(CLASSES)
    # the classifier's configuration is its own artifact, not params of the run: a run's
    # params are its resolved params only (MLflow 3 logs a model_config as run params)
    assert mlflow.get_run(info.run_id).data.params == {}
    assert info.signature.inputs.input_names() == ["image", "path"]
    assert info.signature.outputs.input_names() == ["predicted", "probabilities", "error"]
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path)))
    reqs = (local / "requirements.txt").read_text()
    assert "tensorflow-cpu==" in reqs or "tensorflow==" in reqs

    files = [_image(tmp_path / "a.png", 1), _image(tmp_path / "b.jpg", 2)]
    jpeg = io.BytesIO()
    Image.open(files[1]).save(jpeg, format="JPEG")
    files[1].write_bytes(jpeg.getvalue())
    expected = predict_paths(model, files, CLASSES, SIZE)
    served = mlflow.pyfunc.load_model(uri)
    by_bytes = served.predict(
        pd.DataFrame({"image": [encode_image(f.read_bytes()) for f in files]})
    )
    by_path = served.predict(pd.DataFrame({"path": [str(f) for f in files]}))
    for out in (by_bytes, by_path):
        for i, want in enumerate(expected):
            assert out.loc[i, "predicted"] == want.predicted
            assert out.loc[i, "probabilities"] == pytest.approx(want.probabilities, abs=1e-6)

    # callers that need the Keras model (export) still get it from the same URI
    keras_model, meta = tracking.load_model(uri)
    assert isinstance(keras_model, keras.Model) and meta["image_size"] == SIZE
    assert base64.b64decode(encode_image(b"x")) == b"x"


def test_int8_onnx_is_served_like_keras_and_refused_where_keras_is_needed(
    model: Any, store: str, tmp_path: Path
) -> None:
    import mlflow
    from cxrflow import tracking
    from cxrflow.export import FP32_FILE, METADATA_KEY, export_onnx
    from cxrflow.predict import load_predictor, predict_paths
    from cxrflow.serving import int8_model_name, log_classifier

    onnx_path = tmp_path / FP32_FILE
    meta = {"classes": list(CLASSES), "image_size": SIZE, "model_key": "model_0"}
    export_onnx(model, onnx_path, SIZE, {METADATA_KEY: json.dumps(meta)})
    tracking.configure("serving-test")
    with mlflow.start_run() as run:
        pass
    uri = log_classifier(
        "onnx",
        onnx_path,
        "model_int8",
        meta,
        run_id=run.info.run_id,
    )
    name = int8_model_name("cxrflow-test")
    tracking.register_model(uri, name, "champion", {})
    served, classes, size = load_predictor(f"models:/{name}@champion", None, "unused")
    files = [_image(tmp_path / "a.png", 1)]
    got = predict_paths(served, files, classes, size)
    want = predict_paths(model, files, CLASSES, SIZE)
    assert got[0].predicted == want[0].predicted
    assert got[0].probabilities == pytest.approx(want[0].probabilities, abs=1e-4)
    with pytest.raises(ValueError, match="int8 ONNX model"):
        tracking.load_model(f"models:/{name}@champion")


def test_a_model_logged_before_the_config_artifact_still_loads(
    model: Any, store: str, tmp_path: Path
) -> None:
    """Versions registered before the configuration became an artifact kept it in MLflow's
    ``model_config``: they still load and predict."""
    import mlflow
    from cxrflow import tracking
    from cxrflow.serving import KERAS_ARTIFACT, ImageClassifier, load_classifier

    path = tmp_path / "model.keras"
    model.save(path)
    tracking.configure("serving-test")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ImageClassifier(),
            artifacts={KERAS_ARTIFACT: str(path)},
            model_config={"classes": list(CLASSES), "image_size": SIZE, "backend": "keras"},
            pip_requirements=["mlflow"],
        )
    loaded = load_classifier(info.model_uri)
    assert loaded.config["classes"] == list(CLASSES)
    assert loaded.config["image_size"] == SIZE
