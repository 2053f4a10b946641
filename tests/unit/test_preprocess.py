"""The one preprocessing function: any input mode -> (s, s, 1) uint8, as ingest stores it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrflow.datasets import preprocess_image


def test_modes_are_converted_like_ingest(tmp_path: Path) -> None:
    sixteen = (np.arange(40 * 40).reshape(40, 40) * 2).astype(np.uint16)  # 0..3118: 12-bit data
    Image.fromarray(sixteen).save(tmp_path / "a.png")
    x = preprocess_image(tmp_path / "a.png", 32)
    assert x.shape == (32, 32, 1) and x.dtype == np.uint8
    assert x.min() < 10 and x.max() > 245  # min-max scaled, not >> 8 (which would be <= 12)
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 255  # white but fully transparent: composited on black
    Image.fromarray(rgba).save(tmp_path / "b.png")
    assert preprocess_image(tmp_path / "b.png", 16).max() == 0


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "text.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match=r"text\.png"):
        preprocess_image(bad, 32)


def test_max_pixels_refuses_large_images_and_restores_pillow(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "big.png")
    default = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=r"big\.png.*max_pixels 1024"):
        preprocess_image(tmp_path / "big.png", 16, max_pixels=1024)
    assert default == Image.MAX_IMAGE_PIXELS
    assert preprocess_image(tmp_path / "big.png", 16, max_pixels=1600).shape == (16, 16, 1)
    assert preprocess_image(tmp_path / "big.png", 16).shape == (16, 16, 1)
