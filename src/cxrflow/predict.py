"""Classifying images with a registered model (``cxrflow predict``).

Applies exactly the training preprocessing (:func:`cxrflow.datasets.preprocess_image`); the
rest (channel replication, scaling) lives inside the model. The model is the registered Keras
model or an exported ONNX one (:class:`cxrflow.export.OnnxClassifier`, fp32 or int8): both take
the same input and give the same output, so the output format is the same whichever is served.
DICOM files (``.dcm``) are read by :func:`cxrflow.data.dicom.read_dicom`, as ingest reads them;
a prediction names the file and nothing from its header.
A directory argument stands for every image file below it. An unreadable, missing or oversized
file gets its own error and the other files are still predicted.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrflow import tables
from cxrflow.datasets import preprocess_image


@dataclass(frozen=True)
class Prediction:
    """The result for one file: probabilities and class, or an error."""

    path: str
    predicted: str | None
    probabilities: dict[str, float] | None
    error: str | None = None


IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".dcm",
    ".dicom",
)
"""Extensions (lower case) of the files taken from a directory argument."""


def load_predictor(
    model_uri: str | None, onnx: str | Path | None, default_uri: str
) -> tuple[Any, list[str], int]:
    """The model ``cxrflow predict`` serves, with its classes and input side.

    An ONNX export (``onnx``: a ``.onnx`` file or a ``cxrflow export`` directory, served by
    ONNX Runtime without TensorFlow), else the Keras model at ``model_uri`` or
    ``default_uri`` (the registered champion).

    Raises:
        ValueError: Both given, or a Keras model without cxrflow metadata.
    """
    if onnx is not None:
        if model_uri:
            raise ValueError("give --model-uri or --onnx, not both")
        from cxrflow.export import load_onnx_model

        served = load_onnx_model(onnx)
        return served, list(served.classes), int(served.image_size)
    from cxrflow import tracking

    uri = model_uri or default_uri
    # the registered int8 export (models:/<name>-int8@<alias>) is served by ONNX Runtime
    model, meta = tracking.load_model(uri, allow_onnx=True)
    classes, size = meta.get("classes"), meta.get("image_size")
    if not classes or not size:
        raise ValueError(f"{uri}: model has no cxrflow metadata (classes, image_size)")
    return model, list(classes), int(size)


def predict_arrays(model: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities for a batch of preprocessed images.

    ``model`` is anything with Keras' ``predict(x, verbose=0)``: a Keras model or an
    :class:`cxrflow.export.OnnxClassifier`.
    """
    return np.asarray(model.predict(x.astype(np.float32), verbose=0))


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Replace each directory by the image files under it.

    A directory becomes every file below it (recursively) whose extension is in
    :data:`IMAGE_EXTENSIONS` (any case), sorted; any other path is kept as given, so that a
    missing or unreadable file still gets its own error.

    Args:
        paths: Files and directories, in the order given on the command line.

    Returns:
        The files to predict, in order.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(
                sorted(
                    f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
                )
            )
        else:
            out.append(p)
    return out


def predict_paths(
    model: Any,
    paths: Sequence[str | Path],
    classes: Sequence[str],
    image_size: int,
    max_pixels: int | None = None,
) -> list[Prediction]:
    """Predict each image file and every image in each directory.

    Nothing here raises for a bad input: a missing path, an empty directory, an undecodable
    file or one over ``max_pixels`` gets a :class:`Prediction` with ``error`` set (naming the
    path) and the other files are still predicted.

    Args:
        model: A Keras model or :class:`cxrflow.export.OnnxClassifier` taking
            ``(n, image_size, image_size, 1)`` float32 in [0, 255].
        paths: Image files and/or directories (see :func:`expand_paths`).
        classes: Class names, in the model's output order.
        image_size: The side the model was trained at.
        max_pixels: Refuse images of more pixels than this before decoding them (the CLI
            passes ``ingest.max_pixels``); ``None`` = the ingest default.

    Returns:
        One prediction per file, in the order of :func:`expand_paths`; an empty directory
        gives one error prediction.
    """
    if max_pixels is None:
        max_pixels = _default_max_pixels()
    files: list[Path] = []
    for p in map(Path, paths):
        expanded = expand_paths([p])
        # an empty directory would otherwise vanish from the output without a word
        files.extend(expanded if expanded else [p])
    results: dict[int, Prediction] = {}
    good: list[int] = []
    arrays: list[np.ndarray] = []
    for i, f in enumerate(files):
        try:
            if f.is_dir():
                raise FileNotFoundError(
                    f"{f}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in directory"
                )
            if not f.exists():
                raise FileNotFoundError(f"{f}: no such file or directory")
            arrays.append(preprocess_image(f, image_size, max_pixels))
            good.append(i)
        except Exception as exc:
            msg = str(exc)
            results[i] = Prediction(str(f), None, None, msg if str(f) in msg else f"{f}: {msg}")
    if arrays:
        probs = predict_arrays(model, np.stack(arrays))
        for i, row in zip(good, probs, strict=True):
            results[i] = Prediction(
                str(files[i]),
                classes[int(row.argmax())],
                {c: float(v) for c, v in zip(classes, row, strict=True)},
            )
    return [results[i] for i in range(len(files))]


def format_errors(preds: Sequence[Prediction]) -> list[str]:
    """One ``cxrflow: error: ...`` line per failed prediction (each names its file), for
    stderr."""
    return [f"cxrflow: error: {p.error}" for p in preds if p.error]


def explain_missing_champion(
    name: str, alias: str, challenger_alias: str, command: Callable[[str], str]
) -> str | None:
    """Why ``models:/<name>@<alias>`` names no model, and the command that uses the challenger.

    After ``make run`` on the phantom data no candidate passes the shortcut audit (the phantom
    keeps a children-vs-adults shortcut on purpose), so there is a challenger and no champion.

    Args:
        name: The registered model (``register.model_name``).
        alias: The alias asked for (``register.alias``, the champion).
        challenger_alias: ``register.challenger_alias``.
        command: The command the user typed, given the challenger's model URI.

    Returns:
        One sentence naming the reason recorded on the challenger's version and the command,
        or None when the registry does not explain it (no tracking store, no such registered
        model, the alias exists, or no challenger either).
    """
    from cxrflow import names, tracking

    if not tracking.tracking_store_exists():
        return None
    model = tracking.registered_model(name)
    if model is None or alias in model["aliases"]:
        return None
    version = model["aliases"].get(challenger_alias)
    if version is None:
        return None
    tags = (tracking.model_version(name, version) or {}).get("tags", {})
    reason = tags.get(names.TAG_PROMOTION_REASON) or "it was not promoted"
    phantom = str(tags.get(names.TAG_DATA_VERSION, "")).startswith("phantom")
    why = " (the phantom data keeps a shortcut on purpose: no model should pass)" if phantom else ""
    uri = f"models:/{name}@{challenger_alias}"
    return (
        f"models:/{name}@{alias}: there is no {alias}: {reason}{why}. To use the latest "
        f"{challenger_alias} (version {version}, {tags.get(names.TAG_MODEL_KEY, '?')}) anyway: "
        f"{command(uri)}"
    )


def audit_warning(model_uri: str) -> str | None:
    """A warning when ``model_uri`` names a registered version that did not pass the shortcut
    audit (``models:/<name>@<alias>`` or ``models:/<name>/<version>``), else None.

    Its predictions may follow the shortcut the audit found (on the phantom and the sample
    data: adults called COVID-19), so whoever reads them should know. Other URIs (runs,
    logged models) and a registry that cannot be read give no warning.
    """
    import re

    from cxrflow import names, tracking

    m = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri)
    if m is None:
        return None
    name, alias, number = m.groups()
    try:
        mv = tracking.alias_version(name, alias) if alias else tracking.model_version(name, number)
    except Exception:  # a warning only: the prediction itself reports real errors
        return None
    if mv is None:
        return None
    tags = mv.get("tags", {})
    which = f"version {mv['version']}"
    source = str(tags.get(names.TAG_EXPORT_SOURCE_MODEL, ""))
    if source and names.TAG_AUDIT_PASSED not in tags:  # an int8 export: its model's verdict
        source_name, _, source_version = source.rpartition("/")
        with contextlib.suppress(Exception):
            tags = (tracking.model_version(source_name, source_version) or {}).get("tags", {})
        which += f" (the int8 export of {source})"
    verdict = tags.get(names.TAG_AUDIT_PASSED)
    if verdict == "true":
        return None
    what = "failed the shortcut audit" if verdict == "false" else "was not audited"
    why = str(tags.get(names.TAG_AUDIT_REASONS, ""))
    why = f" ({why[:200]}{'...' if len(why) > 200 else ''})" if why else ""
    return (
        f"cxrflow: warning: {model_uri} is {which}, which {what}{why}: its predictions may "
        "follow a shortcut rather than the disease"
    )


def _default_max_pixels() -> int:
    # the ingest default, read from the config rather than copied
    from cxrflow.config import IngestParams

    return int(IngestParams().max_pixels)


def format_table(preds: Sequence[Prediction], classes: Sequence[str]) -> str:
    """Aligned table for a terminal: path, predicted class and one column per class
    probability; when a file failed, an ``error`` column says why (its class is ``ERROR``)."""
    errors = any(p.error for p in preds)
    header = ["path", "predicted", *classes, *(["error"] if errors else [])]
    rows: list[list[object]] = []
    for p in preds:
        if p.error:
            rows.append([p.path, "ERROR", *([""] * len(classes)), p.error])
        else:
            assert p.probabilities is not None
            rows.append(
                [p.path, p.predicted or "", *(f"{p.probabilities[c]:.4f}" for c in classes)]
            )
    right: list[tables.Align] = ["right"] * len(classes)  # probabilities line up on the point
    align: list[tables.Align] = ["left", "left", *right, "left"]
    return tables.format_table(header, rows, "plain", align=align[: len(header)])


def format_json(preds: Sequence[Prediction]) -> str:
    """JSON list of predictions."""
    return json.dumps([asdict(p) for p in preds], indent=2)
