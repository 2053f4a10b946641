"""What every step does around its body, written once: :func:`step_frame`.

A step body runs inside ``with step_frame(name, params, ...) as ctx``. The frame times the
step (:class:`~cxrflow.steps.timing.StepTimes`, emitted to the runner at the end), gives the
body MLflow through ``ctx.tracking`` (every call counted as tracking time), finds or creates
the pipeline run's MLflow parent run (``ctx.open_parent()``, recording a reuse of cached
data), and when the body returns marks the step done on the parent and sends its one-line
summary (``ctx.summary``) to the runner. A body that raises is not marked done: finalize names
the first step without the mark as the failed one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow.artifacts import Provenance
from cxrflow.logs import emit_summary
from cxrflow.steps.lineage import mark_done, parent_run, read_provenance
from cxrflow.steps.timing import StepTimes

if TYPE_CHECKING:
    from cxrflow.config import Params


log = logging.getLogger(__name__)


class StepContext:
    """One running step: its timing, its MLflow parent, its data's provenance, its summary."""

    def __init__(
        self,
        step: str,
        params: Params,
        times: StepTimes,
        tracking: Any,
        dataset_dir: str | Path | None,
        pipeline_run_id: str | None,
    ) -> None:
        self.step = step
        self.params = params
        self.times = times
        self.tracking = tracking
        """:mod:`cxrflow.tracking`, every call counted as the ``tracking`` phase."""
        self.dataset_dir = dataset_dir
        self.pipeline_run_id = pipeline_run_id
        self.parent: str | None = None
        self.summary = ""
        """The step's key figure in one line (set by the body; shown by the runner)."""
        self._prov: Provenance | None = None

    def phase(self, name: str) -> AbstractContextManager[None]:
        """Count the time inside the block as phase ``name``."""
        return self.times.phase(name)

    @property
    def prov(self) -> Provenance:
        """Provenance of the step's dataset (read once)."""
        if self._prov is None:
            if self.dataset_dir is None:
                raise ValueError(f"{self.step}: no dataset directory to read provenance from")
            self._prov = read_provenance(self.dataset_dir)
        return self._prov

    @property
    def run_key(self) -> str:
        """The pipeline run this step belongs to (given, else the run that made the data)."""
        return self.pipeline_run_id or self.prov.pipeline_run_id

    def open_parent(self, prov: Provenance | None = None) -> str:
        """Find or create the pipeline run's MLflow parent run (``prov``: ingest's own)."""
        if prov is not None:
            self._prov = prov
        with self.phase("tracking"):
            self.parent = parent_run(
                self.params,
                self.prov,
                self.pipeline_run_id,
                step=self.step,
                dataset_dir=self.dataset_dir,
            )
        return self.parent


@contextmanager
def step_frame(
    step: str,
    params: Params,
    *,
    dataset_dir: str | Path | None = None,
    pipeline_run_id: str | None = None,
) -> Iterator[StepContext]:
    """Run a step body with timing, MLflow lineage, the done mark and the summary line.

    Args:
        step: The step's name (a model key for a model step).
        params: The run's resolved configuration.
        dataset_dir: The ingest output the step reads (its provenance names the data).
        pipeline_run_id: The current pipeline run (default: the run that made the data).
    """
    times = StepTimes(step)
    with times.phase("imports"):
        from cxrflow import tracking
        from cxrflow.data.sources.roles import configure_sources

    configure_sources(params.data)  # a csv source is registered in this step's process

    ctx = StepContext(
        step, params, times, times.timed(tracking, "tracking"), dataset_dir, pipeline_run_id
    )
    yield ctx
    if ctx.parent is not None:
        with times.phase("tracking"):
            mark_done(ctx.parent, step)
    times.emit()
    if ctx.summary:
        emit_summary(step, ctx.summary)


def step_params(params: Mapping[str, Any]) -> Params:
    """The resolved configuration a KFP component receives, as :class:`Params`; sets up logging
    and a quick process exit (:func:`exit_without_final_gc`).

    Every component receives the whole configuration resolved when the pipeline was compiled or
    submitted (one ``params`` parameter): no step sees defaults for sections it does not read.
    Only components call it: a component's process runs one step and ends.
    """
    from cxrflow.config import params_from_kfp
    from cxrflow.logs import setup_logging

    setup_logging()
    exit_without_final_gc()
    return params_from_kfp(params)


def exit_without_final_gc() -> None:
    """Skip the interpreter's last garbage collection when this process exits.

    At exit CPython walks every object still alive looking for cycles to free; with TensorFlow,
    MLflow and Great Expectations loaded that took 2 s per step on a quiet machine and 4-9 s
    under load, about a sixth of ``make run``'s overhead (``bench/overhead.py``: a step's
    teardown). Freezing the heap in the last exit handler (registered first, so every handler
    registered later, e.g. MLflow's, still runs before it) leaves only that walk out: files
    are closed and flushed by their owners and the exit status is unchanged.
    """
    import atexit
    import gc

    global _FINAL_GC_SKIPPED
    if not _FINAL_GC_SKIPPED:
        atexit.register(gc.freeze)
        _FINAL_GC_SKIPPED = True


_FINAL_GC_SKIPPED = False
