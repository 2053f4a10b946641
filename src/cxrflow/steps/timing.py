"""Where a step's wall time goes, by phase (what ``bench/overhead.py`` and ``steps.json`` read).

Every step measures itself with one :class:`StepTimes`; :func:`cxrflow.steps.frame.step_frame`
creates it and emits its report when the step ends, through the runner's channel
(:func:`cxrflow.logs.emit_timing`), never onto a user's terminal.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

COMPUTE_PHASES = ("compute",)
"""The phases that are the work itself (training, evaluation); the rest is overhead."""


def _process_start() -> float:
    """When this process started (epoch seconds), or now where it cannot be told.

    On Linux from ``/proc/self/stat`` against the boot-time clock, to 10 ms; psutil's
    ``create_time`` adds the boot time, which the kernel gives in whole seconds, so every step's
    start-up read up to a second too long.
    """
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # psutil missing or refused: count no start-up
        return time.time()


class StepTimes:
    """Where one step's wall time goes, by phase; phases nest, an inner one's time is its own.

    Phases: ``imports`` (the heavy libraries a step imports when it starts), ``data`` (reading
    and decoding images, building or checking the data), ``compute`` (training, evaluation),
    ``model_io`` (saving and loading Keras models), ``tracking`` (MLflow calls). Whatever no
    phase covers is ``other``; the time from process start to the step's entry is
    ``startup`` (interpreter, the KFP executor, light imports).
    """

    def __init__(self, step: str) -> None:
        self.step = step
        self.process_start = _process_start()
        self.entry = time.time()
        self._t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._stack: list[tuple[str, float]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the time inside the block as ``name`` (minus nested phases' time)."""
        now = time.perf_counter()
        if self._stack:  # pause the enclosing phase
            outer, since = self._stack[-1]
            self.seconds[outer] = self.seconds.get(outer, 0.0) + now - since
        self._stack.append((name, now))
        try:
            yield
        finally:
            end = time.perf_counter()
            _, since = self._stack.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + end - since
            if self._stack:
                outer, _ = self._stack[-1]
                self._stack[-1] = (outer, end)

    def timed(self, module: Any, name: str) -> Any:
        """``module`` whose functions count as phase ``name`` (e.g. every MLflow call)."""
        return _TimedModule(module, self, name)

    def callback(self, inner: Any, name: str) -> Any:
        """A Keras callback running ``inner``'s epoch-end hook (its only hook) as phase
        ``name``."""
        import keras

        times = self

        class _Timed(keras.callbacks.Callback):  # type: ignore[misc]
            def set_model(self, model: Any) -> None:
                super().set_model(model)
                inner.set_model(model)

            def set_params(self, params: Any) -> None:
                super().set_params(params)
                inner.set_params(params)

            def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
                with times.phase(name):
                    inner.on_epoch_end(epoch, logs)

        return _Timed()

    def report(self) -> dict[str, Any]:
        """Seconds by phase so far, with ``other``, ``startup`` and the total."""
        total = time.perf_counter() - self._t0
        phases = dict(self.seconds)
        phases["other"] = max(0.0, total - sum(phases.values()))
        phases["startup"] = max(0.0, self.entry - self.process_start)
        return {
            "step": self.step,
            "process_start": self.process_start,
            "entry": self.entry,
            "end": self.entry + total,
            "seconds": total,
            # forked from the local runner's warm server (pipelines/warm.py): no start-up
            "warm": os.environ.get("CXRFLOW_WARM_STARTED") == "1",
            "phases": {k: round(v, 4) for k, v in sorted(phases.items())},
        }

    def emit(self) -> dict[str, Any]:
        """Send the report to the runner's channel (the local runner keeps it)."""
        from cxrflow import logs

        rep = self.report()
        logs.emit_timing(rep)
        return rep


class _TimedModule:
    def __init__(self, module: Any, times: StepTimes, name: str) -> None:
        self._module, self._times, self._name = module, times, name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._module, attr)
        if not callable(value) or isinstance(value, type):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._times.phase(self._name):
                result = value(*args, **kwargs)
            if hasattr(result, "__enter__") and hasattr(result, "__exit__"):
                return _TimedContext(result, self._times, self._name)
            return result

        return call


class _TimedContext:
    """A context manager whose enter and exit (not its body) count as one phase; anything else
    is the wrapped object's."""

    def __init__(self, inner: Any, times: StepTimes, name: str) -> None:
        self._inner, self._times, self._name = inner, times, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)

    def __enter__(self) -> Any:
        with self._times.phase(self._name):
            return self._inner.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        with self._times.phase(self._name):
            return self._inner.__exit__(*exc)
