"""Evaluation on the held-out test split (paper section 4.2), with the uncertainty a reviewer asks
for.

The metrics and their patient-level bootstrap intervals come from :mod:`cxrflow.stats`, the
plots from :mod:`cxrflow.plots`; this module runs the model, times it on the hardware it records,
and flattens the result for MLflow. TensorFlow is imported lazily.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrflow.plots import plot_confusion
from cxrflow.stats import metric_summary

if TYPE_CHECKING:
    from cxrflow.config import EvaluateParams

__all__ = [
    "SCALAR_METRICS",
    "evaluate_model",
    "flat_metrics",
    "hardware_info",
    "measure_latency",
    "plot_confusion",
]

SCALAR_METRICS: tuple[str, ...] = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "roc_auc_macro",
    "ece",
)
"""Whole-split metrics. In :func:`evaluate_model`'s result each is a plain float (``None`` when
undefined) and its interval is under ``<name>_ci``."""

_PER_CLASS = ("precision", "recall", "f1", "roc_auc")


def _timed_ms(
    call: Callable[[np.ndarray], Any],
    make_input: Callable[[int], np.ndarray],
    warmup: int,
    samples: int,
) -> np.ndarray:
    """Milliseconds per image of ``samples`` calls on ``make_input(i)``, after warm-up calls.

    Inputs are built outside the timed region, one at a time (a full test split as float32
    batches could take gigabytes).
    """
    for i in range(warmup):
        call(make_input(i))
    out = np.empty(samples)
    for i in range(samples):
        batch = make_input(warmup + i)
        t0 = time.perf_counter()
        call(batch)
        out[i] = (time.perf_counter() - t0) * 1000.0 / len(batch)
    return out


def measure_latency(
    model: Any, x: np.ndarray, samples: int, warmup: int, batch_size: int
) -> dict[str, Any]:
    """Wall time per image at batch size 1 (the paper's Figure 6) and batched.

    Each mode runs ``warmup`` untimed calls, then ``samples`` timed calls of
    ``model.predict_on_batch``, cycling through ``x``: the compiled predict function, what a
    serving call costs without Keras' per-call eager dispatch. Batches always hold
    ``batch_size`` images (indices wrap round a smaller ``x``). Images are cast to float32
    outside the timed region.

    Args:
        model: Anything with ``predict_on_batch(array)`` (a Keras model).
        x: Images, shape ``(n, s, s, c)``.
        samples: Timed calls per mode.
        warmup: Untimed calls per mode (graph tracing, memory allocation).
        batch_size: Images per call in the batched mode.

    Returns:
        ``batch_size``, ``samples``, ``warmup`` and, in milliseconds per image, ``batch1_mean_ms``,
        ``batch1_p95_ms``, ``batched_mean_ms`` and ``batched_p95_ms`` (a batched call's time
        divided by its images).

    Raises:
        ValueError: No images.
    """
    if len(x) == 0:
        raise ValueError("no images to time")
    n = len(x)

    def single(i: int) -> np.ndarray:
        return x[[i % n]].astype(np.float32)

    def batch(i: int) -> np.ndarray:
        return x[np.arange(i * batch_size, (i + 1) * batch_size) % n].astype(np.float32)

    one = _timed_ms(model.predict_on_batch, single, warmup, samples)
    many = _timed_ms(model.predict_on_batch, batch, warmup, samples)
    return {
        "batch_size": int(batch_size),
        "samples": int(samples),
        "warmup": int(warmup),
        "batch1_mean_ms": float(one.mean()),
        "batch1_p95_ms": float(np.percentile(one, 95)),
        "batched_mean_ms": float(many.mean()),
        "batched_p95_ms": float(np.percentile(many, 95)),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict[str, Any]:
    """The machine a latency was measured on.

    Returns:
        ``cpu_model`` (``/proc/cpuinfo`` or ``platform``), ``cpu_count`` (logical CPUs),
        ``cpus_usable`` (this process's affinity, where the OS reports it), ``platform``,
        ``python``, ``tensorflow`` and ``keras`` versions (``None`` if not installed) and
        ``gpus`` (names of the GPUs TensorFlow sees).
    """
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": None,
        "keras": None,
        "gpus": [],
    }
    try:
        import tensorflow as tf
    except ImportError:
        return info
    info["tensorflow"] = tf.__version__
    try:
        import keras

        info["keras"] = keras.__version__
    except ImportError:
        pass
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append(str(details.get("device_name", device.name)))
    info["gpus"] = gpus
    return info


def summarize(
    y: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    groups: Sequence[Any] | np.ndarray,
    params: EvaluateParams,
) -> dict[str, Any]:
    """:func:`cxrflow.stats.metric_summary` with the evaluation's bootstrap size, confidence,
    seed and calibration bins (the test split's and an external source's figures alike)."""
    return metric_summary(
        y,
        proba,
        classes,
        groups,
        n_boot=params.bootstrap_samples,
        confidence=params.confidence,
        seed=params.seed,
        bins=params.calibration_bins,
    )


def evaluate_model(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    classes: Sequence[str],
    groups: Sequence[Any] | np.ndarray,
    params: EvaluateParams,
) -> tuple[dict[str, Any], np.ndarray]:
    """Predict the test split; metrics with patient-level bootstrap intervals, and latency.

    Args:
        model: A Keras classifier with a softmax output (``predict``, ``predict_on_batch``).
        x: Test images, shape ``(n, s, s, c)``.
        y: True class indices, shape ``(n,)``.
        classes: Class names, in output order.
        groups: Patient (or linked-patient group) id of each image: the bootstrap unit.
        params: Bootstrap samples, confidence, seed, calibration bins and latency settings.

    Returns:
        ``(metrics, probabilities)``. ``metrics`` is :func:`cxrflow.stats.metric_summary`'s
        dict, except that each of :data:`SCALAR_METRICS` is a plain float (``None`` if
        undefined) with its ``{"value", "ci_low", "ci_high"}`` moved to ``<name>_ci``; plus
        ``classes``, ``predictions`` (predicted class indices, for McNemar tests),
        ``latency`` (:func:`measure_latency`), ``latency_ms_per_image`` (the batch-1 mean, as
        the paper reports it) and ``hardware`` (:func:`hardware_info`).

    Raises:
        ValueError: Empty test split or mismatched shapes.
    """
    if len(x) == 0:
        raise ValueError("empty test split")
    probs = np.asarray(model.predict(x.astype(np.float32), verbose=0))
    summary = summarize(y, probs, classes, groups, params)
    metrics: dict[str, Any] = {}
    for key, value in summary.items():
        if key in SCALAR_METRICS:
            metrics[key] = value["value"]
            metrics[f"{key}_ci"] = value
        else:
            metrics[key] = value
    latency = measure_latency(
        model, x, params.latency_samples, params.latency_warmup, params.latency_batch_size
    )
    metrics.update(
        classes=list(classes),
        predictions=probs.argmax(axis=1).astype(int).tolist(),
        latency=latency,
        latency_ms_per_image=latency["batch1_mean_ms"],
        hardware=hardware_info(),
    )
    return metrics, probs


def _add(out: dict[str, float], name: str, interval: Mapping[str, Any]) -> None:
    for suffix, key in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
        if interval.get(key) is not None:
            out[f"{name}{suffix}"] = float(interval[key])


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Scalar metrics of :func:`evaluate_model`'s result for MLflow.

    Keys: ``test_<metric>``, ``test_<metric>_ci_low`` and ``test_<metric>_ci_high`` for each of
    :data:`SCALAR_METRICS`; ``test_<name>_<class>`` (with ``_ci_low``, ``_ci_high``) for
    precision, recall, f1 and roc_auc; ``test_bootstrap_usable``; ``test_latency_ms_per_image``
    and ``test_latency_<batch1|batched>_<mean|p95>_ms``. Undefined values are left out (MLflow
    would store NaN).
    """
    out: dict[str, float] = {}
    for name in SCALAR_METRICS:
        if name in metrics:
            _add(out, f"test_{name}", metrics.get(f"{name}_ci") or {"value": metrics[name]})
    for c, m in metrics.get("per_class", {}).items():
        for name in _PER_CLASS:
            if name in m:
                _add(out, f"test_{name}_{c}", m[name])
    if "bootstrap" in metrics:
        out["test_bootstrap_usable"] = float(metrics["bootstrap"]["usable"])
    if "latency_ms_per_image" in metrics:
        out["test_latency_ms_per_image"] = float(metrics["latency_ms_per_image"])
    for key, value in metrics.get("latency", {}).items():
        if key.endswith("_ms"):
            out[f"test_latency_{key}"] = float(value)
    return out
