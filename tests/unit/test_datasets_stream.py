"""A split streamed from disk is the split in memory: same images, labels, batches, training.

Training reads a split decoded once to disk (:func:`cxrflow.datasets.write_split_cache`) a
batch at a time; evaluation and older callers load it into one array
(:func:`cxrflow.datasets.load_arrays`). These check that nothing a model sees depends on which.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrflow.datasets import (
    DiskImages,
    decode_images,
    load_arrays,
    preprocess_image,
    write_split_cache,
)

CLASSES = ("normal", "bacterial", "covid")
SIZE = 32  # the smallest train.image_size


def _dataset(root: Path, n: int = 23) -> pd.DataFrame:
    """``n`` images of mixed formats, modes and sides, in three splits."""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(n):
        side = (30 + 7 * i, 40 + 3 * i)
        pixels = rng.integers(0, 256, (*side, 3) if i % 3 == 0 else side, dtype=np.uint8)
        name = f"images/{i:03d}.{'jpg' if i % 2 else 'png'}"
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / name)
        split = "test" if i % 7 == 0 else "val" if i % 5 == 0 else "train"
        rows.append({"path": name, "label": CLASSES[i % 3], "split": split})
    return pd.DataFrame(rows)


def test_disk_split_equals_array_split(tmp_path: Path) -> None:
    table = _dataset(tmp_path / "ds")
    for split in ("train", "val", "test"):
        x, y = load_arrays(tmp_path / "ds", table, split, CLASSES, SIZE)
        disk, y_disk = write_split_cache(
            tmp_path / "ds", table, split, CLASSES, SIZE, tmp_path / "cache", workers=3
        )
        assert isinstance(disk, DiskImages)
        assert disk.shape == x.shape and len(disk) == len(x)
        np.testing.assert_array_equal(disk.read(np.arange(len(x))), x)
        np.testing.assert_array_equal(y_disk, y)
    # row order is the table's, and every row is preprocess_image of its file
    train = table[table["split"] == "train"]
    disk, _ = write_split_cache(tmp_path / "ds", table, "train", CLASSES, SIZE, tmp_path / "c")
    for i in (0, len(train) - 1):
        expected = preprocess_image(tmp_path / "ds" / train["path"].iloc[i], SIZE)
        np.testing.assert_array_equal(disk[i], expected)


def test_parallel_decoding_equals_serial(tmp_path: Path) -> None:
    table = _dataset(tmp_path / "ds", 17)
    paths = [tmp_path / "ds" / p for p in table["path"]]
    serial = list(decode_images(paths, SIZE, workers=1))
    parallel = list(decode_images(paths, SIZE, workers=4))
    assert len(serial) == len(parallel) == 17
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_decoding_error_names_the_file(tmp_path: Path) -> None:
    table = _dataset(tmp_path / "ds", 6)
    (tmp_path / "ds" / table["path"].iloc[2]).write_text("not an image")
    with pytest.raises(ValueError, match=table["path"].iloc[2].split("/")[-1]):
        write_split_cache(tmp_path / "ds", table, "train", CLASSES, SIZE, tmp_path / "c", 2)


def test_disk_images_index_like_an_array(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (9, SIZE, SIZE, 1), dtype=np.uint8)
    path = tmp_path / "x.u8"
    path.write_bytes(x.tobytes())
    disk = DiskImages(path, 9, SIZE, "digest")
    np.testing.assert_array_equal(disk[:2], x[:2])
    np.testing.assert_array_equal(disk[3], x[3])
    np.testing.assert_array_equal(disk[-1], x[-1])
    np.testing.assert_array_equal(disk[[7, 1, 7]], x[[7, 1, 7]])
    np.testing.assert_array_equal(disk[np.array([], dtype=np.int64)], x[:0])
    with pytest.raises(IndexError):
        disk[[9]]


def _batches(ds: object) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(a), np.asarray(b)) for a, b in ds]  # type: ignore[attr-defined]


@pytest.mark.parametrize("shuffle", [True, False])
def test_streamed_batches_equal_in_memory_batches(tmp_path: Path, shuffle: bool) -> None:
    pytest.importorskip("tensorflow")
    from cxrflow.datasets import make_tf_dataset

    table = _dataset(tmp_path / "ds", 30)
    x, y = load_arrays(tmp_path / "ds", table, "train", CLASSES, SIZE)
    disk, _ = write_split_cache(tmp_path / "ds", table, "train", CLASSES, SIZE, tmp_path / "c")
    mem = make_tf_dataset(x, y, 3, 4, shuffle, seed=11)
    streamed = make_tf_dataset(disk, y, 3, 4, shuffle, seed=11)
    for _epoch in range(2):  # reshuffled every epoch, identically
        a, b = _batches(mem), _batches(streamed)
        assert [len(xb) for xb, _ in a] == [len(xb) for xb, _ in b]
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert xa.dtype == xb.dtype == np.float32
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    assert streamed.element_spec[0].shape.as_list() == [None, SIZE, SIZE, 1]


def test_training_on_disk_matches_training_in_memory(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    from cxrflow.config import ModelSpec, TrainParams
    from cxrflow.train import _fingerprint, train_model

    table = _dataset(tmp_path / "ds", 36)
    tr = load_arrays(tmp_path / "ds", table, "train", CLASSES, SIZE)
    va = load_arrays(tmp_path / "ds", table, "val", CLASSES, SIZE)
    cache = tmp_path / "cache"
    dtr = write_split_cache(tmp_path / "ds", table, "train", CLASSES, SIZE, cache)
    dva = write_split_cache(tmp_path / "ds", table, "val", CLASSES, SIZE, cache)
    params = TrainParams(image_size=SIZE, batch_size=4, epochs=2, patience=5, seed=3)
    spec = ModelSpec(dataset="dataset_1", architecture="small_cnn")
    mem = train_model(spec, params, CLASSES, (tr[0], tr[1], va[0], va[1]), verbose=0)
    disk = train_model(spec, params, CLASSES, (dtr[0], dtr[1], dva[0], dva[1]), verbose=0)
    assert mem.history.keys() == disk.history.keys()
    for key in mem.history:
        np.testing.assert_allclose(mem.history[key], disk.history[key], rtol=1e-4, atol=1e-6)
    # a checkpoint belongs to the content: another decoded content is another training
    other = write_split_cache(tmp_path / "ds", table, "train", CLASSES, SIZE + 1, cache)
    same = _fingerprint(spec, params, CLASSES, [dtr[0], dva[0]], None)
    assert same == _fingerprint(spec, params, CLASSES, [dtr[0], dva[0]], None)
    assert same != _fingerprint(spec, params, CLASSES, [other[0], dva[0]], None)
