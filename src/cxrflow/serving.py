"""The registered model as a client meets it: an MLflow pyfunc that takes images, not tensors.

``mlflow models serve -m models:/cxrflow-covid-cxr@champion`` (and KServe, and
``mlflow.pyfunc``) get a model whose input is what a client has: a DataFrame with a column ``image`` (the file's bytes,
base64 in a string, for HTTP clients) or ``path`` (a file the server can read): PNG, JPEG or
DICOM, every format :func:`cxrflow.datasets.preprocess_image` reads (DICOM through
:func:`cxrflow.data.dicom.read_dicom`, recognised by its magic bytes). The training
preprocessing runs inside, through that same function ``cxrflow predict`` calls, and the output
is one row per input: ``predicted`` (the class name), ``probabilities`` (class name ->
probability, in the training class order) and ``error`` (why a row could not be predicted; the
other rows still are, as with ``cxrflow predict``).

One :class:`ImageClassifier` wraps either backend: the Keras model (logged by ``train``,
artifact :data:`KERAS_ARTIFACT`) or the int8 ONNX export (logged by ``export`` as its own
registered model ``<name>-int8``, artifact :data:`ONNX_ARTIFACT`, served by ONNX Runtime without
TensorFlow). Both take the same input and give the same output.

Requirements are pinned to what this environment installs (``tensorflow-cpu``, not
``tensorflow``, where that is the installed distribution), and name ``cxrflow`` itself as a
requirement that the serving image provides, rather than copying the package in as
``code_paths``: the component image already installs cxrflow at the commit the model was trained
with (the model's metadata records both), and ``code_paths`` would put a second copy of
``cxrflow`` at the front of ``sys.path`` of any process that loads the model (``cxrflow
predict``, ``export``), mixing the modules it already imported with the copy's.

Like :mod:`cxrflow.tracking`, this module imports ``mlflow`` (the pyfunc class must subclass
``mlflow.pyfunc.PythonModel`` and be importable by reference when a model is loaded); it is
imported only where a model is logged or loaded.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import io
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from cxrflow import names
from cxrflow.datasets import preprocess_image

INPUT_IMAGE = "image"
"""Input column: an image file's bytes, base64-encoded (standard alphabet) in a string."""
INPUT_PATH = "path"
"""Input column: the path of an image file the serving process can read."""
OUTPUT_COLUMNS = ("predicted", "probabilities", "error")
KERAS_ARTIFACT = "keras_model"
ONNX_ARTIFACT = "onnx_model"
BACKENDS = {"keras": KERAS_ARTIFACT, "onnx": ONNX_ARTIFACT}
CONFIG_ARTIFACT = "cxrflow_config"
"""The artifact holding the classifier's configuration (JSON). Not MLflow's ``model_config``:
MLflow 3 logs that as params of the run, and a run's params are its resolved params only."""
INT8_SUFFIX = names.INT8_SUFFIX


def int8_model_name(name: str) -> str:
    """The registered model holding the int8 ONNX exports of registered model ``name``."""
    return names.int8_model_name(name)


def _present(value: Any) -> bool:
    """Whether a cell holds something (None, NaN, pandas' NA and "" do not)."""
    if value is None or (isinstance(value, str) and not value):
        return False
    return not (np.ndim(value) == 0 and bool(pd.isna(value)))


def read_sources(frame: pd.DataFrame, folder: Path) -> list[Path | ValueError]:
    """The file each input row names, or why there is none.

    Image bytes are written to ``folder/row-<i>``: :func:`~cxrflow.datasets.preprocess_image`
    then reads them exactly as it reads a client's file (PNG and JPEG by Pillow, DICOM by its
    magic bytes), so that a served image and ``cxrflow predict`` of the same file agree.

    Args:
        frame: Rows with an ``image`` (base64 string, or raw bytes from an in-process caller)
            and/or a ``path`` column; ``image`` wins where both are set.
        folder: A private folder for the decoded bytes.

    Returns:
        Per row, a file, or a :class:`ValueError` naming the row.
    """
    out: list[Path | ValueError] = []
    images = frame[INPUT_IMAGE] if INPUT_IMAGE in frame else [None] * len(frame)
    paths = frame[INPUT_PATH] if INPUT_PATH in frame else [None] * len(frame)
    for i, (image, path) in enumerate(zip(images, paths, strict=True)):
        label = f"row {i}"
        if _present(image):
            if isinstance(image, bytes | bytearray):
                data = bytes(image)
            else:
                try:
                    data = base64.b64decode(str(image), validate=True)
                except (binascii.Error, ValueError) as exc:
                    out.append(ValueError(f"{label}: {INPUT_IMAGE} is not base64: {exc}"))
                    continue
            target = folder / f"row-{i}"
            target.write_bytes(data)
            out.append(target)
        elif _present(path):
            p = Path(str(path))
            out.append(p if p.is_file() else ValueError(f"{p}: no such file"))
        else:
            out.append(ValueError(f"{label}: neither {INPUT_IMAGE} (base64) nor {INPUT_PATH}"))
    return out


def classify_frame(
    model: Any,
    frame: pd.DataFrame,
    classes: Sequence[str],
    image_size: int,
    max_pixels: int | None,
) -> pd.DataFrame:
    """Predict every row of ``frame`` (see :func:`read_sources`) with ``model``.

    The same steps as :func:`cxrflow.predict.predict_paths`: each file through
    :func:`~cxrflow.datasets.preprocess_image`, one batch through
    :func:`~cxrflow.predict.predict_arrays`, the class of the highest probability.

    Returns:
        Columns :data:`OUTPUT_COLUMNS`, one row per input row, in order; a row that failed
        has ``predicted`` and ``probabilities`` None and ``error`` set.
    """
    from cxrflow.predict import predict_arrays

    rows: list[dict[str, Any]] = [
        {"predicted": None, "probabilities": None, "error": None} for _ in range(len(frame))
    ]
    good: list[int] = []
    arrays: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="cxrflow-serve-") as tmp:
        for i, src in enumerate(read_sources(frame, Path(tmp))):
            if isinstance(src, ValueError):
                rows[i]["error"] = str(src)
                continue
            try:
                arrays.append(preprocess_image(src, image_size, max_pixels))
                good.append(i)
            except ValueError as exc:
                # a client knows its rows, not the server's temporary files
                rows[i]["error"] = (
                    str(exc).replace(str(src), f"row {i}") if src.parent == Path(tmp) else str(exc)
                )
    if arrays:
        probs = predict_arrays(model, np.stack(arrays))
        for i, row in zip(good, probs, strict=True):
            rows[i]["predicted"] = classes[int(row.argmax())]
            rows[i]["probabilities"] = {c: float(v) for c, v in zip(classes, row, strict=True)}
    # object columns: a failed row's None stays None (null in JSON), where pandas' inferred
    # string dtype would turn it into NaN
    return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS), dtype=object)


class ImageClassifier(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """The pyfunc: image bytes or paths in, class and probabilities out (module docstring).

    Its configuration (the JSON artifact :data:`CONFIG_ARTIFACT`) holds ``classes``,
    ``image_size``, ``max_pixels`` and ``backend``; the backend's file is the artifact
    :data:`KERAS_ARTIFACT` or :data:`ONNX_ARTIFACT`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.model: Any = None
        self.config: dict[str, Any] = {}

    def load_context(self, context: Any) -> None:
        """Load the backend: Keras, or ONNX Runtime (which never imports TensorFlow)."""
        artifacts = dict(context.artifacts)
        if CONFIG_ARTIFACT in artifacts:
            self.config = json.loads(Path(artifacts[CONFIG_ARTIFACT]).read_text(encoding="utf-8"))
        else:  # logged before the configuration was an artifact: MLflow's model_config
            self.config = dict(context.model_config or {})
        if KERAS_ARTIFACT in artifacts:
            import keras

            self.model = keras.models.load_model(artifacts[KERAS_ARTIFACT])
        else:
            from cxrflow.export import load_onnx_model

            self.model = load_onnx_model(artifacts[ONNX_ARTIFACT])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Classify each row (see :func:`classify_frame`)."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        max_pixels = self.config.get("max_pixels")
        return classify_frame(
            self.model,
            frame,
            list(self.config["classes"]),
            int(self.config["image_size"]),
            None if max_pixels is None else int(max_pixels),
        )


# ------------------------------------------------------------------------------- logging


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def pip_requirements(backend: str) -> list[str]:
    """The served model's requirements, pinned to what this environment installs.

    ``tensorflow-cpu`` where the project installed it (Linux), ``tensorflow`` elsewhere; the
    ONNX backend needs ONNX Runtime and no TensorFlow at all.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: one of {sorted(BACKENDS)}")
    dists = ["mlflow", "numpy", "pandas", "pillow", "cxrflow"]
    if backend == "keras":
        tf = next((d for d in ("tensorflow-cpu", "tensorflow") if _version(d)), "tensorflow")
        dists += [tf, "keras"]
    else:
        dists += ["onnxruntime"]
    return [f"{d}=={v}" if (v := _version(d)) else d for d in dists]


def signature() -> Any:
    """Input: optional ``image`` (base64) and ``path`` strings; output: class, probabilities
    (a map of class name to probability) and error."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Map, Schema

    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(DataType.string, INPUT_IMAGE, required=False),
                ColSpec(DataType.string, INPUT_PATH, required=False),
            ]
        ),
        outputs=Schema(
            [
                ColSpec(DataType.string, "predicted", required=False),
                ColSpec(Map(DataType.double), "probabilities", required=False),
                ColSpec(DataType.string, "error", required=False),
            ]
        ),
    )


def example_png(side: int) -> bytes:
    """A uniform grey PNG of ``side`` pixels: the input example (no patient's image)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((side, side), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def encode_image(data: bytes) -> str:
    """An image file's bytes as the ``image`` column wants them (base64, standard alphabet)."""
    return base64.b64encode(data).decode("ascii")


def log_classifier(
    backend: str,
    path: str | Path,
    name: str,
    metadata: Mapping[str, Any],
    run_id: str | None = None,
    max_pixels: int | None = None,
) -> str:
    """Log the pyfunc :class:`ImageClassifier` around a saved backend model.

    Args:
        backend: ``keras`` (``path`` is a ``.keras`` file) or ``onnx`` (a ``.onnx`` file).
        path: The backend model file (copied into the logged model).
        name: The logged model's name in its run.
        metadata: cxrflow metadata, at least ``classes`` and ``image_size`` (readers of
            ``models:/`` URIs find them in the model's metadata).
        run_id: The run to log to (default: the active run).
        max_pixels: Refuse larger images before decoding them (default: ``ingest.max_pixels``'s
            default, the limit ``cxrflow predict`` applies).

    Returns:
        The logged model's URI (``models:/<model_id>``).
    """
    from cxrflow.config import IngestParams

    meta = {
        **dict(metadata),
        "backend": backend,
        "input": f"{INPUT_IMAGE}: base64 image file (PNG, JPEG, DICOM) or {INPUT_PATH}: file path",
        "cxrflow_version": _version("cxrflow") or "unknown",
    }
    size = int(meta["image_size"])
    config = {
        "classes": list(meta["classes"]),
        "image_size": size,
        "max_pixels": int(max_pixels if max_pixels is not None else IngestParams().max_pixels),
        "backend": backend,
    }
    example = pd.DataFrame({INPUT_IMAGE: [encode_image(example_png(size))]})
    with tempfile.TemporaryDirectory(prefix="cxrflow-config-") as tmp:
        config_file = Path(tmp) / "config.json"
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return _log(
            name,
            run_id,
            {BACKENDS[backend]: str(path), CONFIG_ARTIFACT: str(config_file)},
            example,
            backend,
            meta,
        )


def _log(
    name: str,
    run_id: str | None,
    artifacts: dict[str, str],
    example: pd.DataFrame,
    backend: str,
    meta: Mapping[str, Any],
) -> str:
    from mlflow.models import Model

    info = Model.log(
        artifact_path=None,  # MLflow 3 names a model by ``name``; the old argument has no default
        name=name,
        flavor=mlflow.pyfunc,
        run_id=run_id,
        python_model=ImageClassifier(),
        artifacts=artifacts,
        signature=signature(),
        input_example=example,
        pip_requirements=pip_requirements(backend),
        metadata=dict(meta),
    )
    return str(info.model_uri)


def log_keras_classifier(
    model: Any, name: str, metadata: Mapping[str, Any], run_id: str | None = None
) -> str:
    """Save a Keras model and log it as :class:`ImageClassifier` (see :func:`log_classifier`)."""
    with tempfile.TemporaryDirectory(prefix="cxrflow-serving-") as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return log_classifier("keras", path, name, metadata, run_id=run_id)


def load_classifier(model_uri: str) -> ImageClassifier:
    """Load a model logged by :func:`log_classifier` (its backend loaded)."""
    loaded = mlflow.pyfunc.load_model(model_uri)
    inner = loaded.unwrap_python_model()
    if not isinstance(inner, ImageClassifier):
        raise ValueError(f"{model_uri}: not a cxrflow image classifier ({type(inner).__name__})")
    return inner
