"""The registered model served by ``mlflow models serve`` and asked by a plain HTTP client.

A tiny Keras model is logged the way ``train`` logs one (:func:`cxrflow.tracking.log_keras_model`)
and registered with an alias in a private sqlite store. ``mlflow models serve -m
models:/<name>@<alias> --env-manager local`` serves it on 127.0.0.1 (a free port); a POST to
``/invocations`` of a PNG (and of a DICOM file) as base64 answers exactly what ``cxrflow predict
--json`` says of the same file.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("normal", "bacterial", "covid")
SIZE = 24
NAME = "cxrflow-serving-test"
ALIAS = "champion"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A tiny trained model, logged as train logs it and registered as ``NAME@ALIAS``."""
    import keras

    import mlflow
    from cxrflow import tracking

    tmp = tmp_path_factory.mktemp("serving")
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlruns.db'}",
        "CXRFLOW_ARTIFACT_ROOT": (tmp / "mlartifacts").as_uri(),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        keras.utils.set_random_seed(0)
        inputs = keras.Input((SIZE, SIZE, 1))
        x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
        x = keras.layers.Conv2D(4, 3, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax")(x))
        model.compile("adam", "sparse_categorical_crossentropy")
        rng = np.random.default_rng(0)
        xs = rng.integers(0, 255, (12, SIZE, SIZE, 1)).astype(np.float32)
        model.fit(xs, np.arange(12) % len(CLASSES), epochs=2, verbose=0)
        tracking.configure("serving-test")
        with mlflow.start_run():
            uri = tracking.log_keras_model(
                model,
                "model",
                {"classes": list(CLASSES), "image_size": SIZE, "model_key": "model_0"},
            )
        tracking.register_model(uri, NAME, ALIAS, {})
        yield {"env": env, "tmp": tmp, "uri": f"models:/{NAME}@{ALIAS}"}


@pytest.fixture(scope="module")
def server(registered: dict[str, Any]) -> Iterator[str]:
    """``mlflow models serve`` of the registered model; yields its base URL once /ping answers."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(registered["tmp"] / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            registered["uri"],
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        env={
            **os.environ,
            **registered["env"],
            # the server runs ``uvicorn`` from PATH: this venv's, as in an activated one
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "NO_PROXY": "127.0.0.1",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the server's workers stop with it
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow models serve exited {proc.returncode}:\n"
                    + (registered["tmp"] / "serve.log").read_text(errors="replace")[-3000:]
                )
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (OSError, urllib.error.HTTPError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow models serve did not answer /ping within 240 s")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


def _post(base: str, path: Path) -> tuple[bytes, dict[str, Any]]:
    """POST one file as base64 in the ``image`` column; returns the request body and answer."""
    body = json.dumps(
        {"dataframe_records": [{"image": base64.b64encode(path.read_bytes()).decode("ascii")}]}
    ).encode()
    req = urllib.request.Request(
        f"{base}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return body, json.loads(r.read())


def _cli_predict(registered: dict[str, Any], path: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "cxrflow.cli",
        "--params",
        str(ROOT / "params.yaml"),
        "predict",
        "--model-uri",
        registered["uri"],
        str(path),
        "--json",
    ]
    env = {**os.environ, **registered["env"]}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    preds = json.loads(res.stdout)
    assert len(preds) == 1
    return dict(preds[0])


def _check(server: str, registered: dict[str, Any], path: Path) -> None:
    body, answer = _post(server, path)
    print(f"POST {server}/invocations ({len(body)} bytes) -> {json.dumps(answer)}")
    (row,) = answer["predictions"]
    want = _cli_predict(registered, path)
    assert row["error"] is None
    assert row["predicted"] == want["predicted"]
    assert list(row["probabilities"]) == list(CLASSES)  # the training class order
    assert row["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)


def test_served_png_equals_cxrflow_predict(
    server: str, registered: dict[str, Any], tmp_path: Path
) -> None:
    from cxrflow.data.synthetic import render_radiograph

    png = tmp_path / "chest.png"
    Image.fromarray(render_radiograph("covid", np.random.default_rng(3), (90, 80))).save(png)
    _check(server, registered, png)


def test_served_dicom_equals_cxrflow_predict(
    server: str, registered: dict[str, Any], tmp_path: Path
) -> None:
    pytest.importorskip("pydicom")
    from cxrflow.data.synthetic import render_radiograph
    from tests.dicom_files import make_dicom

    pixels = render_radiograph("bacterial", np.random.default_rng(4), (90, 80))
    # MONOCHROME1: inverted on disk, white is 0
    path = make_dicom(
        tmp_path / "chest.dcm", (255 - pixels).astype(np.uint8), photometric="MONOCHROME1"
    )
    _check(server, registered, path)


def test_bad_base64_is_an_error_row_not_a_failed_request(server: str) -> None:
    body = json.dumps({"dataframe_records": [{"image": "not base64!"}]}).encode()
    req = urllib.request.Request(
        f"{server}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        (row,) = json.loads(r.read())["predictions"]
    assert row["predicted"] is None and "row 0: image is not base64" in row["error"]
