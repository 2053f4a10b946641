"""``cxrflow predict``'s library side: directories, missing files, the pixel limit, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cxrflow.predict import (
    IMAGE_EXTENSIONS,
    expand_paths,
    format_errors,
    format_json,
    format_table,
    predict_paths,
)

keras = pytest.importorskip("keras")

CLASSES = ("normal", "bacterial", "covid")
SIZE = 16


@pytest.fixture(scope="module")
def model() -> Any:
    """A tiny softmax model with the registered models' input contract."""
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    return keras.Model(inputs, outputs)


def _save(path: Path, side: int = 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side), 128, np.uint8)).save(path)
    return path


def test_directory_expands_recursively_sorted_and_by_extension(tmp_path: Path) -> None:
    _save(tmp_path / "b.png")
    _save(tmp_path / "a.JPG")
    _save(tmp_path / "sub" / "c.tiff")
    _save(tmp_path / "sub" / "deeper" / "d.Bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "x.PNG").mkdir()  # a directory named like an image is not a file
    got = expand_paths([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == [
        "a.JPG",
        "b.png",
        "sub/c.tiff",
        "sub/deeper/d.Bmp",
    ]
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


def test_files_and_directories_in_the_order_given(model: Any, tmp_path: Path) -> None:
    single = _save(tmp_path / "single.gif")
    folder = tmp_path / "folder"
    _save(folder / "one.png")
    _save(folder / "two.jpeg")
    preds = predict_paths(model, [str(folder), single], CLASSES, SIZE)
    assert [Path(p.path).name for p in preds] == ["one.png", "two.jpeg", "single.gif"]
    for p in preds:
        assert p.error is None and p.predicted in CLASSES
        assert p.probabilities is not None
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert format_errors(preds) == []


def test_missing_path_and_empty_directory_are_errors_not_exceptions(
    model: Any, tmp_path: Path
) -> None:
    good = _save(tmp_path / "good.png")
    (tmp_path / "empty").mkdir()
    preds = predict_paths(model, [tmp_path / "nope.png", good, tmp_path / "empty"], CLASSES, SIZE)
    missing, ok, empty = preds
    assert missing.predicted is None and missing.probabilities is None
    assert missing.error is not None and "nope.png" in missing.error
    assert ok.error is None and ok.predicted in CLASSES
    assert empty.error is not None and "empty" in empty.error and "no image" in empty.error
    lines = format_errors(preds)
    assert len(lines) == 2
    assert "nope.png" in lines[0] and "empty" in lines[1]
    assert "ERROR" in format_table(preds, CLASSES) and "nope.png" in format_json(preds)


def test_image_over_max_pixels_is_refused_and_others_still_predicted(
    model: Any, tmp_path: Path
) -> None:
    small = _save(tmp_path / "small.png", side=30)  # 900 pixels
    large = _save(tmp_path / "large.png", side=40)  # 1600 pixels
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"not a jpeg")
    preds = predict_paths(model, [small, large, broken], CLASSES, SIZE, max_pixels=1024)
    assert preds[0].error is None and preds[0].predicted in CLASSES
    assert preds[1].predicted is None
    assert preds[1].error is not None
    assert "large.png" in preds[1].error and "1024" in preds[1].error
    assert preds[2].error is not None and "broken.jpeg" in preds[2].error
    # the limit is a parameter, not a process-wide setting left behind
    assert Image.MAX_IMAGE_PIXELS != 1024
    again = predict_paths(model, [large], CLASSES, SIZE, max_pixels=1600)
    assert again[0].error is None
