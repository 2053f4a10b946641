"""Benchmark: int8 against fp32 on a ResNet-50 the pipeline trained (issue 17, section 1).

``bench/inference.py`` times ResNet-50 at the paper's 224 px, but without ImageNet weights its
backbone is random, and a random deep network's int8 accuracy change says nothing about a
trained one's. This bench takes a network a pipeline run trained (by default ``model_5``: a
ResNet-50 pretrained on Dataset_0 in the pipeline and fine-tuned on Dataset_1) and, in ONE run:
exports it to ONNX fp32 and static int8 exactly as the export step does (calibrated on images
of its training split), times TensorFlow fp32, ONNX Runtime fp32 and ONNX Runtime int8 round by
round at batch 1 and batched at the model's own input size, and compares int8 with fp32 on the
run's **test** split: accuracy and macro-F1 lost with a paired patient-bootstrap 95 % interval
and McNemar's test. The target: at most 1 point of accuracy lost.

It needs a finished run (``bash docs/reproduce.sh``), so it is not one of ``bench/run.py``'s
benchmarks; ``bench/report.py`` tabulates its JSON when present.

Usage: ``python bench/int8_trained.py --run-dir runs/reproduction/kfp/<run> [--model model_5]``.
Writes ``bench/results/int8_trained.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

from inference import (  # bench/inference.py (bench/ is on the path)
    FULL,
    MAX_ACCURACY_DROP_POINTS,
    PAPER_K80_MS,
    Split,
    bench_model,
    gemm_rate,
    log,
)
from report import write_result  # bench/report.py

MODEL_FILE = "model.keras"


def model_dir(run_dir: Path, key: str) -> Path:
    """The training step's output of ``key`` in a kfp.local run (``<run>/<model-n>/model``).

    Raises:
        FileNotFoundError: The run has no trained model of that key.
    """
    for candidate in sorted(run_dir.glob(f"{key.replace('_', '-')}*/model")):
        if (candidate / MODEL_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"{run_dir}: no trained {key} ({key.replace('_', '-')}/model)")


def run_data(run_dir: Path) -> tuple[Path, Path]:
    """The ingest and split outputs of a kfp.local run (evaluation not needed).

    Raises:
        FileNotFoundError: The run has not split its data yet.
    """
    dataset = sorted(run_dir.glob("ingest/dataset"))
    splits = sorted(run_dir.glob("split/splits"))
    if not dataset or not splits:
        raise FileNotFoundError(f"{run_dir}: no ingest/dataset and split/splits")
    return dataset[-1], splits[-1]


def split_of(
    dataset: Path, splits: Path, name: str, part: str, classes: list[str], size: int
) -> Split:
    """One part (train / test) of a dataset's split table, as the bench's :class:`Split`."""
    import numpy as np

    from cxrflow.data.split import read_split_table
    from cxrflow.datasets import load_arrays

    table = read_split_table(splits, name)
    x, y = load_arrays(dataset, table, part, classes, size)
    rows = table[table["split"] == part]
    return Split(
        x=x,
        y=np.asarray(y, dtype=int),
        names=tuple(rows["image_id"].astype(str)),
        groups=np.asarray(rows["patient_id"].astype(str)),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True, help="a kfp.local run directory")
    ap.add_argument("--model", default="model_5", help="the model key (default: model_5)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seed", type=int, default=20200927)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "int8_trained.json"))
    args = ap.parse_args()
    threads = int(args.threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t_start = time.perf_counter()

    import keras
    import tensorflow as tf

    from cxrflow.artifacts import ModelInfo
    from cxrflow.evaluate import hardware_info

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    dataset, splits_dir = run_data(args.run_dir)
    mdir = model_dir(args.run_dir, args.model)
    info = ModelInfo.read(mdir)
    classes, size = list(info.classes), int(info.image_size)
    splits = {
        part: split_of(dataset, splits_dir, info.dataset, part, classes, size)
        for part in ("train", "test")
    }
    log(
        f"{args.model}: {info.dataset} train {len(splits['train'].y)}, test {len(splits['test'].y)}"
    )
    gemm = gemm_rate(FULL.gemm_sizes, FULL.gemm_repeats)
    model = keras.models.load_model(mdir / MODEL_FILE)
    training = {
        "how": f"trained by the pipeline run ({info.pipeline_run_id}): {info.pretrained} -> "
        f"{info.dataset}, phases {[p['phase'] for p in info.phases]}",
        "int8_accuracy_representative": True,
        "run_id": info.run_id,
    }
    with tempfile.TemporaryDirectory(prefix="cxrflow-bench-int8-") as tmp:
        result_model = bench_model(
            args.model,
            model,
            training,
            splits,
            FULL,
            threads,
            gemm["best_gflops"],
            Path(tmp),
            args.seed,
            classes,
            size,
        )
    drop = result_model["accuracy"]["drop_points_fp32_minus_int8"]["accuracy"]
    latency = result_model["latency_ms_per_image"]
    target = {
        "model": args.model,
        "engine": "ort_int8",
        "image_size": size,
        "ms_per_image_batch1": latency["ort_int8"]["batch1_mean_ms"],
        "ms_per_image_batched": latency["ort_int8"]["batched_mean_ms"],
        "tf_fp32_ms_per_image_batch1": latency["tf_fp32"]["batch1_mean_ms"],
        "accuracy_drop_points": drop,
        "max_drop_points": MAX_ACCURACY_DROP_POINTS,
        "accuracy_met": bool(drop["value"] <= MAX_ACCURACY_DROP_POINTS),
        "n_test": result_model["accuracy"]["n_test"],
        "n_test_patients": result_model["accuracy"]["n_test_patients"],
    }
    result = {
        "benchmark": "int8_trained",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - t_start,
        "machine": {**hardware_info(), "threads": threads},
        "paper": {"k80_ms_per_image": list(PAPER_K80_MS)},
        "run_dir": str(args.run_dir),
        "data": {
            "dataset": info.dataset,
            "classes": classes,
            "image_size": size,
            "n_train": len(splits["train"].y),
            "n_test": len(splits["test"].y),
        },
        "gemm_fp32": gemm,
        "models": {args.model: result_model},
        "target": target,
        "verdict": {"accuracy_met": target["accuracy_met"]},
    }
    out = write_result(args.out, result, show="target")
    log(f"-> {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
