"""Image preprocessing shared by training, evaluation and prediction.

There is exactly one preprocessing function, :func:`preprocess_image`: decode, convert to 8-bit
grayscale, resize to ``image_size`` x ``image_size`` (aspect ratio not kept, as in the paper).
Channel replication and intensity scaling live *inside* each Keras model, so a saved model
applies the rest of its preprocessing itself and ``cxrflow predict`` cannot drift from training.

A split reaches training in one of two forms, with the same batches for the same seed:

- in memory (:func:`load_arrays`): one ``(n, s, s, 1)`` uint8 array; ``tf.data`` then holds
  it about three times over (the array, its tensor copy and the full-size shuffle buffer);
- on disk (:func:`write_split_cache`): each image decoded once, in parallel, into one uint8
  file (:class:`DiskImages`), which :func:`make_tf_dataset` reads a batch at a time; only the
  shuffled *indices* are held in memory. Decoding once instead of every epoch keeps the input
  pipeline far ahead of the training step (``bench/input_pipeline.py`` measures both).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def preprocess_image(
    path: str | Path, image_size: int, max_pixels: int | None = None
) -> np.ndarray:
    """Load one image as a ``(image_size, image_size, 1)`` uint8 array.

    Args:
        path: Image file (any format Pillow reads, or DICOM: decoded by
            :func:`cxrflow.data.dicom.read_dicom`, as ingest does).
        image_size: Output side in pixels.
        max_pixels: Refuse images of more than this many pixels before decoding them (the
            ingest limit, ``ingest.max_pixels``), for files that did not come through ingest;
            ``None`` leaves Pillow's own decompression-bomb limit in place.

    Raises:
        ValueError: The file cannot be decoded or is over ``max_pixels`` (the message names
            the file).
    """
    from PIL import Image, ImageOps

    from cxrflow.data.dicom import is_dicom
    from cxrflow.data.images import pixel_limit, to_storable

    if is_dicom(path):
        return _preprocess_dicom(path, image_size, max_pixels)
    limit = pixel_limit(max_pixels) if max_pixels is not None else contextlib.nullcontext()
    try:
        # Image.open reads only the header and, under pixel_limit, refuses an image over
        # max_pixels there, before any pixel is decoded
        with limit, Image.open(path) as raw:
            # the same mode rule as ingest (alpha on black, 16-bit min-max, CMYK -> L)
            stored, _ = to_storable(ImageOps.exif_transpose(raw))
            im = stored.convert("L").resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)[..., None]
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{path}: image too large for max_pixels {max_pixels}: {exc}") from exc
    except Exception as exc:
        raise ValueError(f"{path}: cannot decode image: {exc}") from exc


def _preprocess_dicom(path: str | Path, image_size: int, max_pixels: int | None) -> np.ndarray:
    """:func:`preprocess_image` of a DICOM file: its display pixels, resized the same way."""
    from PIL import Image

    from cxrflow.data.dicom import read_dicom
    from cxrflow.data.images import ImageRejected

    try:
        pixels, _ = read_dicom(path, max_pixels)
    except ImageRejected as exc:
        raise ValueError(f"{path}: cannot decode DICOM: {exc}") from exc
    im = Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)[..., None]


def default_decode_workers() -> int:
    """Decoding threads: the CPUs this process may use (Pillow releases the GIL while it
    decodes and resizes, so threads scale)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def decode_images(
    paths: Sequence[str | Path], image_size: int, workers: int | None = None
) -> Iterator[np.ndarray]:
    """:func:`preprocess_image` of each path, in order, decoded by ``workers`` threads.

    At most ``4 * workers`` images are decoded ahead of the consumer, so memory stays bounded
    however many paths there are.

    Args:
        paths: Image files.
        image_size: Output side in pixels.
        workers: Decoding threads; ``None`` = one per usable CPU, 1 = in this thread.

    Yields:
        One ``(image_size, image_size, 1)`` uint8 array per path, in the order of ``paths``.

    Raises:
        ValueError: A file cannot be decoded (from :func:`preprocess_image`).
    """
    n_workers = workers or default_decode_workers()
    if n_workers == 1:
        for p in paths:
            yield preprocess_image(p, image_size)
        return
    ahead = 4 * n_workers
    with ThreadPoolExecutor(n_workers, thread_name_prefix="cxrflow-decode") as pool:
        pending: collections.deque[Future[np.ndarray]] = collections.deque()
        for p in paths:
            pending.append(pool.submit(preprocess_image, p, image_size))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _split_rows(
    dataset_dir: str | Path, table: pd.DataFrame, split: str, classes: Sequence[str]
) -> tuple[list[Path], np.ndarray]:
    """The image paths and int32 class indices of one split, in the table's row order."""
    rows = table[table["split"] == split]
    index = {c: i for i, c in enumerate(classes)}
    root = Path(dataset_dir)
    paths = [root / rel for rel in rows["path"]]
    y = np.fromiter((index[label] for label in rows["label"]), dtype=np.int32, count=len(rows))
    return paths, y


def load_arrays(
    dataset_dir: str | Path,
    table: pd.DataFrame,
    split: str,
    classes: Sequence[str],
    image_size: int,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of a split table into memory.

    Args:
        workers: Decoding threads (see :func:`decode_images`).

    Returns:
        ``x`` of shape ``(n, s, s, 1)`` uint8 and ``y`` of shape ``(n,)`` int32 class indices.
    """
    paths, y = _split_rows(dataset_dir, table, split, classes)
    x = np.zeros((len(paths), image_size, image_size, 1), dtype=np.uint8)
    for i, img in enumerate(decode_images(paths, image_size, workers)):
        x[i] = img
    return x, y


class DiskImages:
    """Decoded images of one split in one uint8 file, read a few rows at a time.

    Row ``i`` is ``(s, s, 1)`` uint8 bytes at offset ``i * s * s``. Reads use ``os.pread`` (no
    shared file position, so concurrent ``tf.data`` calls are safe) and copy only the rows
    asked for: the process never maps or holds the whole file. Indexing (``images[:2]``,
    ``images[[3, 1]]``) returns NumPy arrays, so small reads look like an array's.

    Attributes:
        path: The file.
        shape: ``(n, s, s, 1)``.
        digest: SHA-256 of the file's bytes (the content, for checkpoint fingerprints).
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, path: str | Path, n: int, image_size: int, digest: str) -> None:
        self.path = Path(path)
        self.shape = (n, image_size, image_size, 1)
        self.digest = digest
        self._row = image_size * image_size

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, indices: Any) -> np.ndarray:
        """The rows ``indices`` (any integer sequence), as ``(len(indices), s, s, 1)`` uint8."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = self.shape[0]
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} images: {idx}")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((idx.size, *self.shape[1:]), dtype=np.uint8)
        flat = out.reshape(idx.size, self._row)
        with self.path.open("rb", buffering=0) as f:
            fd = f.fileno()
            for j, i in enumerate(idx.tolist()):
                flat[j] = np.frombuffer(os.pread(fd, self._row, i * self._row), dtype=np.uint8)
        return out

    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(key, slice):
            return self.read(np.arange(self.shape[0])[key])
        if isinstance(key, int | np.integer):
            return self.read([int(key)])[0]
        return self.read(key)

    def __repr__(self) -> str:
        return f"DiskImages({str(self.path)!r}, shape={self.shape})"


ImageArray: TypeAlias = np.ndarray | DiskImages
"""The images of one split: in memory, or decoded on disk."""


def write_disk_images(
    paths: Sequence[str | Path], image_size: int, target: str | Path, workers: int | None = None
) -> DiskImages:
    """Decode ``paths`` (in parallel, in order) into one :class:`DiskImages` file ``target``.

    Memory stays bounded: images are written as they are decoded.
    """
    h = hashlib.sha256()
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with target.open("wb") as f:
        for img in decode_images(paths, image_size, workers):
            data = np.ascontiguousarray(img).tobytes()
            f.write(data)
            h.update(data)
            n += 1
    return DiskImages(target, n, image_size, h.hexdigest())


def write_split_cache(
    dataset_dir: str | Path,
    table: pd.DataFrame,
    split: str,
    classes: Sequence[str],
    image_size: int,
    cache_dir: str | Path,
    workers: int | None = None,
) -> tuple[DiskImages, np.ndarray]:
    """Decode one split of a split table once, to disk: the streaming twin of
    :func:`load_arrays` (same images, same order, same labels).

    Args:
        cache_dir: Folder for the decoded file (``<split>-<image_size>.u8``); the caller
            removes it after training.
        workers: Decoding threads (see :func:`decode_images`).

    Returns:
        The decoded images on disk and ``y`` of shape ``(n,)`` int32 class indices.
    """
    paths, y = _split_rows(dataset_dir, table, split, classes)
    images = write_disk_images(
        paths, image_size, Path(cache_dir) / f"{split}-{image_size}.u8", workers
    )
    return images, y


def make_tf_dataset(
    x: ImageArray, y: np.ndarray, n_classes: int, batch_size: int, shuffle: bool, seed: int
) -> Any:
    """A batched ``tf.data.Dataset`` of (float32 images, one-hot labels).

    ``x`` in memory is sliced into the dataset; ``x`` on disk (:class:`DiskImages`) is read a
    batch at a time, in parallel with the training step. Either way the order is the one
    ``shuffle(len(x), seed)`` gives (it depends on the seed and the size, not the content),
    so both forms yield the same batches.
    """
    import tensorflow as tf

    if isinstance(x, DiskImages):
        return _stream_dataset(x, y, n_classes, batch_size, shuffle, seed)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)

    def _map(img: Any, lab: Any) -> Any:
        return tf.cast(img, tf.float32), tf.one_hot(lab, n_classes)

    return ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


def _stream_dataset(
    x: DiskImages, y: np.ndarray, n_classes: int, batch_size: int, shuffle: bool, seed: int
) -> Any:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(x), dtype=np.int64), y))
    if shuffle:
        # the buffer holds indices (16 bytes an image), not images
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    pixels = x.shape[1:]

    def _read(idx: Any, lab: Any) -> Any:
        img = tf.numpy_function(x.read, [idx], tf.uint8, stateful=False)
        img = tf.ensure_shape(img, (None, *pixels))
        return tf.cast(img, tf.float32), tf.one_hot(lab, n_classes)

    return (
        ds.batch(batch_size)
        .map(_read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced class weights ``n / (k * count_c)``; classes absent from ``y`` get 0."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    total = counts.sum()
    return {
        c: (float(total / (n_classes * counts[c])) if counts[c] else 0.0) for c in range(n_classes)
    }
