"""Benchmark: the training input pipeline against the training step, in one run (issue 9).

Measured in this process, one after the other, at the paper's 224 px and batch 20:

- produced: images/s of each input pipeline alone (no model): decoding and resizing every
  epoch from the files (``tf.data`` over paths, parallel ``preprocess_image``), decoding once
  to disk (what a training step does first), the streamed epochs read back from that file
  (what training consumes), and today's in-memory arrays;
- consumed: images/s of the training step of Model_0's architecture (``small_cnn``) fed
  pre-materialised batches from memory, and fed by the streamed pipeline, taking turns round
  by round (the step never waits for input when both rates agree: stall = 1 - the median
  per-round ratio);
- headroom = produced / consumed for the pipeline training uses (target >= 3).

Then, each in a fresh subprocess: peak RSS of a few training steps on a Dataset_0-sized split
(train 70 %, val 10 % of N images; paper Dataset_0: 5840) with the splits in memory
(``load_arrays``, as before) and streamed from disk (``write_split_cache``), at two sizes, and
the per-image slope extrapolated to 100k images. Verdicts compare ratios from this run only.

Sources: for the rates, phantom chest X-rays (``cxrflow.data.synthetic``), a few dozen unique
images of 900-1600 px sides (Kermany's originals are about 1000-2000 px; decoding cost grows
with the source) hard-linked to N paths. For the memory runs, the real Kermany sample in
``../shared/data/kermany`` (5840 images, the paper's Dataset_0, stored at 224 px) cycled to N
paths, or phantoms of 200-300 px without it (the source size changes the run time, not the
memory of decoded 224 px images).

Usage: ``python bench/input_pipeline.py [--quick] [--memory-sizes 5840 17520]``.
Writes ``bench/results/input_pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from report import (  # bench/report.py (scripts run with bench/ on the path)
    machine_info,
    write_result,
)

MIN_HEADROOM = 3.0
"""The input pipeline training uses must produce at least this many times what a step eats."""
MAX_STALL = 0.15
"""Fed by the stream, a step may be at most this much slower than fed from memory (noise)."""
IMAGE_SIZE = 224
BATCH = 20  # the paper's batch size
CLASSES = ("normal", "bacterial", "viral")  # Dataset_0
KERMANY_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany"


def prepare_sources(work: Path, name: str, min_side: int, max_side: int) -> list[Path]:
    """Unique phantom Kermany images (generated once, cached under ``work``)."""
    from cxrflow.config import SynthParams
    from cxrflow.data.synthetic import generate_phantom

    root = work / f"sources-{name}-{min_side}-{max_side}"
    done = root / ".complete"
    if not done.is_file():
        if root.exists():
            shutil.rmtree(root)
        summary = generate_phantom(
            root,
            SynthParams(
                patients_per_class=10,
                images_per_patient_max=2,
                min_side=min_side,
                max_side=max_side,
                covid_lateral_fraction=0.0,
                seed=11,
            ),
        )
        done.write_text(str(summary.kermany_dir.relative_to(root)))
    kermany = root / done.read_text()
    return sorted(kermany.rglob("*.jpeg"))


def make_split(sources: list[Path], n: int, root: Path) -> Any:
    """``n`` image paths (hard links, cycling through ``sources``) and a split table over
    them: 70 % train, 10 % val, 20 % test, labels cycling through Dataset_0's classes."""
    import pandas as pd

    if root.exists():
        shutil.rmtree(root)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        rel = f"images/{i:06d}.jpeg"
        os.link(sources[i % len(sources)], root / rel)
        split = "train" if i % 10 < 7 else "val" if i % 10 == 7 else "test"
        rows.append({"path": rel, "label": CLASSES[i % 3], "split": split})
    return pd.DataFrame(rows)


def _rate(n_images: int, seconds: float) -> float:
    return n_images / seconds if seconds > 0 else float("inf")


def _drain(ds: Any) -> int:
    n = 0
    for x, _ in ds:
        n += int(x.shape[0])
    return n


def decode_per_epoch_dataset(paths: list[Path], y: Any, workers: int) -> Any:
    """The other way to stream: ``tf.data`` over paths, decoding every image every epoch."""
    import numpy as np
    import tensorflow as tf

    from cxrflow.datasets import preprocess_image

    def load(path: bytes) -> np.ndarray:
        return preprocess_image(path.decode(), IMAGE_SIZE)

    def _map(path: Any, lab: Any) -> Any:
        img = tf.numpy_function(load, [path], tf.uint8, stateful=False)
        img = tf.ensure_shape(img, (IMAGE_SIZE, IMAGE_SIZE, 1))
        return tf.cast(img, tf.float32), tf.one_hot(lab, len(CLASSES))

    ds = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], y))
    return ds.map(_map, num_parallel_calls=workers).batch(BATCH).prefetch(tf.data.AUTOTUNE)


def _model() -> Any:
    """Model_0's architecture, compiled as training compiles it (Adam, cross-entropy)."""
    import keras

    from cxrflow.models import get_architecture

    model = get_architecture("small_cnn").build(IMAGE_SIZE, len(CLASSES), "scratch", None)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


ROUNDS = 5
"""The two ways of feeding a step take turns this many times (see :func:`_paired_fit_rates`)."""


def _paired_fit_rates(model: Any, feeds: dict[str, Any], steps: int) -> dict[str, Any]:
    """Images/s of training steps fed by each dataset in ``feeds``, taking turns.

    Each of :data:`ROUNDS` rounds times ``steps`` steps per feed, one feed after the other, so
    that a slow spell of this shared machine (its speed was seen to halve for tens of seconds)
    hits both feeds of a round alike; the stall is then read from the median of the per-round
    ratios rather than from two runs minutes apart.
    """
    import statistics

    for ds in feeds.values():  # trace and build once per feed
        model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    rates: dict[str, list[float]] = {name: [] for name in feeds}
    for _ in range(ROUNDS):
        for name, ds in feeds.items():
            t0 = time.perf_counter()
            model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
            rates[name].append(_rate(steps * BATCH, time.perf_counter() - t0))
    return {
        "median": {name: statistics.median(r) for name, r in rates.items()},
        "rounds": rates,
    }


def measure_rates(work: Path, n: int, steps: int, workers: int) -> dict[str, Any]:
    """Produced and consumed images/s, all in this process."""
    import numpy as np
    import tensorflow as tf

    from cxrflow.datasets import load_arrays, make_tf_dataset, write_split_cache

    sources = prepare_sources(work, "xray", 900, 1600)
    table = make_split(sources, n, work / f"rates-{n}")
    train = table[table["split"] == "train"]
    paths = [work / f"rates-{n}" / p for p in train["path"]]
    y = np.arange(len(paths), dtype=np.int32) % len(CLASSES)
    out: dict[str, Any] = {"n_train_images": len(paths), "source_images": len(sources)}
    sides = [_side(p) for p in sources]
    out["source_mean_pixels"] = float(np.mean([w * h for w, h in sides]))

    t0 = time.perf_counter()
    n_out = _drain(decode_per_epoch_dataset(paths, y, workers))
    decode_epoch = _rate(n_out, time.perf_counter() - t0)

    with tempfile.TemporaryDirectory(prefix="cxrflow-bench-cache-") as cache:
        t0 = time.perf_counter()
        disk, y_disk = write_split_cache(
            work / f"rates-{n}", table, "train", CLASSES, IMAGE_SIZE, cache, workers
        )
        decode_once = _rate(len(disk), time.perf_counter() - t0)
        streamed_ds = make_tf_dataset(disk, y_disk, len(CLASSES), BATCH, True, 1)
        _drain(streamed_ds)  # first epoch: the file is in the page cache, as in training
        t0 = time.perf_counter()
        n_out = _drain(streamed_ds) + _drain(streamed_ds)
        streamed = _rate(n_out, time.perf_counter() - t0)

        x, y_mem = load_arrays(
            work / f"rates-{n}", table, "train", CLASSES, IMAGE_SIZE, workers=workers
        )
        memory_ds = make_tf_dataset(x, y_mem, len(CLASSES), BATCH, True, 1)
        _drain(memory_ds)
        t0 = time.perf_counter()
        n_out = _drain(memory_ds) + _drain(memory_ds)
        in_memory = _rate(n_out, time.perf_counter() - t0)

        model = _model()
        batch = (tf.constant(x[:BATCH], tf.float32), tf.one_hot(y_mem[:BATCH], len(CLASSES)))
        paired = _paired_fit_rates(
            model,
            {
                "memory": tf.data.Dataset.from_tensors(batch).repeat(),
                "stream": streamed_ds.repeat(),
            },
            max(2, steps // 2),
        )
        step_memory = paired["median"]["memory"]
        step_streamed = paired["median"]["stream"]
        ratios = [
            st / me
            for st, me in zip(paired["rounds"]["stream"], paired["rounds"]["memory"], strict=True)
        ]
    out["produced_images_per_s"] = {
        "decode_every_epoch": decode_epoch,
        "decode_once_to_disk": decode_once,
        "streamed_from_disk": streamed,
        "in_memory_arrays": in_memory,
    }
    out["consumed_images_per_s"] = {
        "train_step_from_memory": step_memory,
        "train_step_fed_by_stream": step_streamed,
    }
    out["headroom"] = {
        "streamed_from_disk": streamed / step_memory,
        "decode_every_epoch": decode_epoch / step_memory,
        "in_memory_arrays": in_memory / step_memory,
    }
    out["consumed_per_round_images_per_s"] = paired["rounds"]
    out["stream_vs_memory_per_round"] = ratios
    out["stall_fraction"] = max(0.0, 1.0 - float(np.median(ratios)))
    out["decode_workers"] = workers
    out["train_steps_timed"] = steps
    return out


def _side(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def memory_run(root: Path, table_csv: Path, mode: str, steps: int) -> dict[str, Any]:
    """One training run's memory (called in a fresh subprocess): load the train and val
    splits as ``mode`` says, build the datasets, train ``steps`` steps; peak RSS."""
    import resource

    import pandas as pd
    import psutil

    from cxrflow.datasets import load_arrays, make_tf_dataset, write_split_cache

    model = _model()
    baseline_mb = psutil.Process().memory_info().rss / 2**20
    table = pd.read_csv(table_csv)
    k = len(CLASSES)
    with tempfile.TemporaryDirectory(prefix="cxrflow-bench-mem-") as cache:
        t0 = time.perf_counter()
        if mode == "array":
            x_tr, y_tr = load_arrays(root, table, "train", CLASSES, IMAGE_SIZE)
            x_va, y_va = load_arrays(root, table, "val", CLASSES, IMAGE_SIZE)
        else:
            x_tr, y_tr = write_split_cache(root, table, "train", CLASSES, IMAGE_SIZE, cache)
            x_va, y_va = write_split_cache(root, table, "val", CLASSES, IMAGE_SIZE, cache)
        load_s = time.perf_counter() - t0
        train_ds = make_tf_dataset(x_tr, y_tr, k, BATCH, True, 1)
        val_ds = make_tf_dataset(x_va, y_va, k, BATCH, False, 1)
        t0 = time.perf_counter()
        model.fit(
            train_ds,
            validation_data=val_ds,
            validation_steps=2,
            epochs=1,
            steps_per_epoch=steps,
            verbose=0,
            shuffle=False,
        )
        fit_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "mode": mode,
        "n_train": len(x_tr),
        "n_val": len(x_va),
        "decoded_mb": (len(x_tr) + len(x_va)) * IMAGE_SIZE * IMAGE_SIZE / 2**20,
        "baseline_rss_mb": baseline_mb,
        "peak_rss_mb": peak_mb,
        "peak_above_baseline_mb": peak_mb - baseline_mb,
        "load_s": load_s,
        "fit_s": fit_s,
    }


def memory_sources(work: Path) -> tuple[list[Path], str]:
    """Sources for the memory runs: the real Kermany sample (the paper's Dataset_0, 5840
    images, stored at 224 px) where it is checked out beside the project, else phantoms."""
    real = sorted(KERMANY_SAMPLE.rglob("*.jpeg")) if KERMANY_SAMPLE.is_dir() else []
    if real:
        return real, f"real Kermany sample ({len(real)} images, {KERMANY_SAMPLE})"
    return prepare_sources(work, "small", 200, 300), "phantom, 200-300 px"


def measure_memory(work: Path, sizes: list[int], steps: int) -> dict[str, Any]:
    """Peak RSS of array vs streamed training at each size, each in its own process."""
    sources, what = memory_sources(work)
    runs = []
    for n in sorted(sizes):
        root = work / f"memory-{n}"
        table = make_split(sources, n, root)
        csv = root / "table.csv"
        table.to_csv(csv, index=False)
        for mode in ("array", "stream"):
            cmd = [sys.executable, __file__, "--_memory", str(root), str(csv), mode, str(steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{mode} at {n}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["n_images"] = n
            runs.append(r)
            print(
                f"{n:>7} images, {mode:>6}: peak RSS {r['peak_rss_mb']:.0f} MB "
                f"({r['peak_above_baseline_mb']:+.0f} MB over the model alone; decoded "
                f"train+val {r['decoded_mb']:.0f} MB)",
                file=sys.stderr,
            )
        shutil.rmtree(root)
    out: dict[str, Any] = {"runs": runs, "steps": steps, "sources": what}
    if len(sizes) >= 2:
        lo, hi = min(sizes), max(sizes)
        for mode in ("array", "stream"):
            a = next(r for r in runs if r["mode"] == mode and r["n_images"] == lo)
            b = next(r for r in runs if r["mode"] == mode and r["n_images"] == hi)
            slope = (b["peak_rss_mb"] - a["peak_rss_mb"]) / (hi - lo)
            out[f"{mode}_mb_per_1k_images"] = 1000 * slope
            out[f"{mode}_peak_rss_mb_at_100k_extrapolated"] = b["peak_rss_mb"] + slope * (
                100_000 - hi
            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, ~3 min)")
    ap.add_argument("--rate-images", type=int, default=None, help="images for the rates")
    ap.add_argument("--memory-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None, help="training steps timed")
    ap.add_argument("--workers", type=int, default=None, help="decoding threads")
    ap.add_argument("--workdir", default=os.environ.get("CXRFLOW_BENCH_DIR", "/tmp/cxrflow-bench"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "input_pipeline.json"))
    ap.add_argument("--_memory", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args._memory:
        root, csv, mode, steps = args._memory
        print(json.dumps(memory_run(Path(root), Path(csv), mode, int(steps))))
        return 0
    from cxrflow.datasets import default_decode_workers

    workers = args.workers or default_decode_workers()
    rate_images = args.rate_images or (300 if args.quick else 1500)
    sizes = args.memory_sizes or ([1000, 3000] if args.quick else [5840, 17520])
    steps = args.steps or (10 if args.quick else 30)
    work = Path(args.workdir) / "input_pipeline"
    work.mkdir(parents=True, exist_ok=True)

    rates = measure_rates(work, rate_images, steps, workers)
    prod, cons = rates["produced_images_per_s"], rates["consumed_images_per_s"]
    print(
        "produced (images/s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in prod.items())
        + "; consumed: "
        + ", ".join(f"{k} {v:.1f}" for k, v in cons.items()),
        file=sys.stderr,
    )
    memory = measure_memory(work, sizes, 3)
    streamed = [r for r in memory["runs"] if r["mode"] == "stream"]
    arrays = [r for r in memory["runs"] if r["mode"] == "array"]
    largest = max(sizes)
    a_big = next(r for r in arrays if r["n_images"] == largest)
    s_big = next(r for r in streamed if r["n_images"] == largest)
    verdict = {
        "headroom": rates["headroom"]["streamed_from_disk"],
        "headroom_ok": rates["headroom"]["streamed_from_disk"] >= MIN_HEADROOM,
        "headroom_decode_every_epoch": rates["headroom"]["decode_every_epoch"],
        "stall_fraction": rates["stall_fraction"],
        "step_never_waits": rates["stall_fraction"] <= MAX_STALL,
        "peak_rss_array_mb": a_big["peak_rss_mb"],
        "peak_rss_stream_mb": s_big["peak_rss_mb"],
        "peak_rss_ratio_array_vs_stream": a_big["peak_rss_mb"] / s_big["peak_rss_mb"],
        "stream_rss_flat": (
            max(r["peak_rss_mb"] for r in streamed) - min(r["peak_rss_mb"] for r in streamed)
        )
        < 0.25 * (a_big["peak_rss_mb"] - s_big["peak_rss_mb"]),
        "min_headroom": MIN_HEADROOM,
        "max_stall": MAX_STALL,
        "at_images": largest,
    }
    doc = {
        "benchmark": "input_pipeline",
        "quick": bool(args.quick),
        "machine": machine_info(),
        "image_size": IMAGE_SIZE,
        "batch_size": BATCH,
        "rates": rates,
        "memory": memory,
        "verdict": verdict,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_result(args.out, doc)
    ok = verdict["headroom_ok"] and verdict["step_never_waits"] and verdict["stream_rss_flat"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
