"""Benchmark: training images/s with and without mixed precision, and inference latency, on a GPU.

Run through ``bench/gpu.sh`` (about five minutes on one GPU). For each architecture of the paper
(``small_cnn``: Model_0/1/2; ``resnet50``: Model_3) at 224x224 and the paper's batch of 20 (and
a larger training batch), it measures, in this one process:

- training: images/s of ``model.fit`` steps on batches already in device memory (the input
  pipeline has its own benchmark), fp32 and ``mixed_float16``; the ratio is the verdict;
- inference: ms/image (mean and p95) at batch 1 and batched, fp32 and ``mixed_float16``.

Models are built by :func:`cxrflow.models.build_model` (random weights: speed does not depend
on them), so the classifier is float32 under the mixed policy as in the pipeline.

Without a GPU that TensorFlow can use it says so and exits 0 without touching
``bench/results/gpu.json`` (CI has no GPU). ``--allow-cpu`` runs the same code on the CPU with
small sizes, for tests; such a result is labelled ``device: cpu`` and ``quick``.

Usage: ``python bench/gpu.py [--allow-cpu] [--quick] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from report import (  # bench/report.py (scripts run with bench/ on the path)
    machine_info,
    write_result,
)

POLICIES = ("float32", "mixed_float16")
N_CLASSES = 3


@dataclass(frozen=True)
class Plan:
    image_size: int
    train_batches: tuple[int, ...]
    train_steps: int
    warmup_steps: int
    infer_batch: int
    batch1_calls: int
    batched_calls: int
    architectures: tuple[str, ...]


FULL = Plan(224, (20, 64), 60, 10, 64, 200, 30, ("small_cnn", "resnet50"))
QUICK = Plan(64, (8,), 3, 1, 8, 5, 2, ("small_cnn",))


def log(msg: str) -> None:
    print(f"[gpu] {msg}", file=sys.stderr, flush=True)


def nvidia_smi() -> list[dict[str, str]]:
    """GPUs as ``nvidia-smi`` lists them (empty when there is no ``nvidia-smi`` or no GPU)."""
    fields = "name,driver_version,memory.total,compute_cap"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    keys = fields.split(",")
    return [
        dict(zip(keys, (v.strip() for v in line.split(",")), strict=False))
        for line in out.splitlines()
        if line.strip()
    ]


def _stats(ms: Sequence[float]) -> dict[str, float]:
    import numpy as np

    t = np.asarray(ms, dtype=float)
    return {"mean_ms": float(t.mean()), "p95_ms": float(np.percentile(t, 95)), "calls": len(t)}


def train_rate(arch: str, policy: str, batch: int, plan: Plan, device: str) -> dict[str, Any]:
    """Images/s of training steps on one batch resident on ``device``."""
    import keras
    import numpy as np
    import tensorflow as tf

    from cxrflow.models import build_model

    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        with tf.device(device):
            model = build_model(arch, plan.image_size, N_CLASSES)
            model.compile(
                optimizer=keras.optimizers.Adam(1e-3),
                loss="sparse_categorical_crossentropy",
                jit_compile=False,
            )
            rng = np.random.default_rng(0)
            x = tf.constant(
                rng.uniform(0, 255, (batch, plan.image_size, plan.image_size, 1)).astype("float32")
            )
            y = tf.constant(rng.integers(0, N_CLASSES, batch).astype("int32"))
            ds = tf.data.Dataset.from_tensors((x, y)).repeat()
            model.fit(ds, steps_per_epoch=plan.warmup_steps, epochs=1, verbose=0)
            t0 = time.perf_counter()
            hist = model.fit(ds, steps_per_epoch=plan.train_steps, epochs=1, verbose=0)
            seconds = time.perf_counter() - t0
        loss = float(hist.history["loss"][-1])
        return {
            "batch_size": batch,
            "steps": plan.train_steps,
            "seconds": seconds,
            "images_per_s": batch * plan.train_steps / seconds,
            "final_loss_finite": bool(np.isfinite(loss)),
            "policy": keras.mixed_precision.global_policy().name,
            "classifier_dtype": str(model.get_layer("classifier").compute_dtype),
        }
    finally:
        keras.mixed_precision.set_global_policy("float32")


def infer_latency(arch: str, policy: str, plan: Plan, device: str) -> dict[str, Any]:
    """ms/image at batch 1 and ``plan.infer_batch`` of a compiled ``tf.function`` call."""
    import keras
    import numpy as np
    import tensorflow as tf

    from cxrflow.models import build_model

    keras.mixed_precision.set_global_policy(policy)
    try:
        with tf.device(device):
            model = build_model(arch, plan.image_size, N_CLASSES)
            call: Callable[[Any], Any] = tf.function(lambda t: model(t, training=False))
            rng = np.random.default_rng(1)
            shape = (plan.image_size, plan.image_size, 1)
            one = tf.constant(rng.uniform(0, 255, (1, *shape)).astype("float32"))
            many = tf.constant(rng.uniform(0, 255, (plan.infer_batch, *shape)).astype("float32"))
            out: dict[str, Any] = {"batch_size": plan.infer_batch}
            for mode, xb, calls in (
                ("batch1", one, plan.batch1_calls),
                ("batched", many, plan.batched_calls),
            ):
                for _ in range(3):
                    call(xb).numpy()  # tracing, autotuning
                ms = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    call(xb).numpy()  # .numpy(): wait for the device and copy back
                    ms.append((time.perf_counter() - t0) * 1000.0 / int(xb.shape[0]))
                s = _stats(ms)
                out.update({f"{mode}_{k}": v for k, v in s.items()})
        return out
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU when no GPU (tests)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, small CNN only (tests)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu.json"))
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    smi = nvidia_smi()
    if not gpus and not args.allow_cpu:
        why = (
            f"nvidia-smi lists {len(smi)} GPU(s) ({', '.join(g['name'] for g in smi)}) but "
            f"TensorFlow {tf.__version__} sees none (a CPU-only build, or CUDA libraries "
            "missing: install tensorflow[and-cuda])"
            if smi
            else "no GPU here"
        )
        print(f"bench/gpu.py: {why}; nothing measured, {args.out} left as it is.")
        return 0
    for g in gpus:
        tf.config.experimental.set_memory_growth(g, True)
    device = "/GPU:0" if gpus else "/CPU:0"
    plan = QUICK if (args.quick or not gpus) else FULL
    label = smi[0]["name"] if (gpus and smi) else ("GPU" if gpus else "cpu")
    log(f"device {label} ({device}); plan {plan}")

    t_start = time.perf_counter()
    models: dict[str, Any] = {}
    for arch in plan.architectures:
        row: dict[str, Any] = {"train": {}, "inference": {}}
        for batch in plan.train_batches:
            for policy in POLICIES:
                r = train_rate(arch, policy, batch, plan, device)
                row["train"][f"{policy}_batch{batch}"] = r
                log(f"{arch} train {policy} batch {batch}: {r['images_per_s']:.1f} img/s")
        for policy in POLICIES:
            r = infer_latency(arch, policy, plan, device)
            row["inference"][policy] = r
            log(f"{arch} infer {policy}: {r['batch1_mean_ms']:.2f} ms/img at batch 1")
        row["mixed_speedup_train"] = {
            f"batch{b}": row["train"][f"mixed_float16_batch{b}"]["images_per_s"]
            / row["train"][f"float32_batch{b}"]["images_per_s"]
            for b in plan.train_batches
        }
        row["mixed_speedup_inference_batched"] = (
            row["inference"]["float32"]["batched_mean_ms"]
            / row["inference"]["mixed_float16"]["batched_mean_ms"]
        )
        models[arch] = row

    doc = {
        "benchmark": "gpu",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": plan is QUICK,
        "device": label,
        "machine": {**machine_info(), "gpus": [g["name"] for g in smi] or None},
        "nvidia_smi": smi,
        "tensorflow": tf.__version__,
        "plan": plan.__dict__,
        "models": models,
        "seconds": time.perf_counter() - t_start,
        "verdict": {
            "device": label,
            **{
                f"{a}_train_img_s_fp32_batch{b}": models[a]["train"][f"float32_batch{b}"][
                    "images_per_s"
                ]
                for a in models
                for b in plan.train_batches
            },
            **{
                f"{a}_train_mixed_speedup_batch{b}": models[a]["mixed_speedup_train"][f"batch{b}"]
                for a in models
                for b in plan.train_batches
            },
            **{
                f"{a}_infer_ms_batch1_{p}": models[a]["inference"][p]["batch1_mean_ms"]
                for a in models
                for p in POLICIES
            },
            "losses_finite": all(
                r["final_loss_finite"] for m in models.values() for r in m["train"].values()
            ),
        },
    }
    out = write_result(args.out, doc, show=None)
    log(f"wrote {out} ({doc['seconds']:.0f} s)")
    return 0 if doc["verdict"]["losses_finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
