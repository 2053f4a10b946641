"""Run a pipeline on this machine through ``kfp.local`` (the embedded default).

Steps run with ``SubprocessRunner(use_venv=False)``: as subprocesses of this interpreter (so in
this venv), in dependency order; GPU, node selector, toleration, volume, retry and caching
settings are ignored locally (kfp.local's own cache stays off). The run's id is known up front:
``CXRFLOW_PIPELINE_RUN_ID`` (:data:`cxrflow.steps.PIPELINE_RUN_ENV`) is set to a fresh local id
for every step, so all of them log to one MLflow parent run, as a cluster run's do.

Steps start warm (:mod:`pipelines.warm`): a server started with the run imports TensorFlow,
Keras, MLflow and cxrflow once and forks each step from there, instead of kfp.local's fresh
interpreter per step; the command, environment, working directory and output of every step are
the ones kfp.local gives it. ``CXRFLOW_WARM=0`` turns this off. The server's log is kept as
``runs/<run>/warm-server.log``.

Where things go, for ``pipeline_root=runs/kfp`` (the CLI default):

- ``runs/kfp/<run>/<task>/...``: the steps' outputs, as kfp.local lays them out; ``<run>`` is
  kfp's run name, ``<pipeline name>-<YYYY-MM-DD-HH-MM-SS-ffffff>``.
- ``runs/<run>/<step>.log``: each step's full output (``model_0.log``, ...), and
  ``runs/<run>/pipeline.log`` with the raw stream of the whole run as kfp printed it. The log
  root is the pipeline root's parent unless ``log_root`` says otherwise.
- ``runs/<run>/steps.json``: the run's start, end and wall time and, per step, its status,
  when kfp started it, how long it took and where its time went (the step's own timing report:
  start-up, imports, data, compute, model I/O, MLflow), for ``bench/overhead.py``.

Steps report their summary, training progress and timing to the runner through a channel
file it names in ``CXRFLOW_RUNNER_CHANNEL`` (:mod:`cxrflow.logs`; a temporary file for the run,
removed at its end), not on stdout. The console shows one line per step as it starts and as it
ends (status, duration, the step's ``cxrflow.logs.emit_summary``) and live training progress;
see ``pipelines/progress.py``. ``verbose=True`` streams everything kfp prints, as before.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from cxrflow.artifacts import Evaluation, Registration
from pipelines import warm
from pipelines.progress import (
    LocalStepError,
    RunConsole,
    StepRecord,
    StreamCapture,
    display_path,
    step_key,
)

__all__ = ["LocalRunResult", "LocalStepError", "StepRecord", "find_metrics", "run_local"]

STEPS_FILE = "steps.json"
"""The file in a run's log folder with every step's timing (see the module doc)."""


@dataclasses.dataclass
class LocalRunResult:
    """What a local pipeline run produced.

    Attributes:
        run_dir: kfp's folder for this run's outputs (``<pipeline_root>/<run_name>``).
        run_name: kfp's name of the run.
        log_dir: the folder holding ``<step>.log`` for every step and ``pipeline.log``.
        champion: the pipeline's output as a string, or None if it has none.
        steps: one record per step, in the order they started.
    """

    run_dir: Path
    run_name: str
    log_dir: Path
    champion: str | None
    steps: list[StepRecord]


def run_local(
    pipeline_func: Callable[..., Any],
    arguments: Mapping[str, Any],
    pipeline_root: str | Path,
    *,
    verbose: bool = False,
    out: TextIO | None = None,
    log_root: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> LocalRunResult:
    """Run ``pipeline_func(**arguments)`` with kfp.local, showing one line per step.

    Args:
        pipeline_func: a ``@dsl.pipeline`` function (e.g. ``build_pipeline(params)``).
        arguments: its parameters.
        pipeline_root: where kfp.local writes the steps' outputs (created if missing).
        verbose: stream everything kfp and the steps print instead of the short display.
        out: the console; default ``sys.stdout`` at call time.
        log_root: the folder that gets ``<run_name>/<step>.log``; default: the pipeline root's
            parent.
        env: environment variables set for the run (the steps inherit them), then restored;
            ``CXRFLOW_PIPELINE_RUN_ID`` defaults to a fresh local id; ``CXRFLOW_RUNNER_CHANNEL``
            is always this run's channel.

    Returns:
        The run's folders, champion and per-step records.

    Raises:
        LocalStepError: a step failed; its message names the step, its last error line and
            its log file.
    """
    from kfp import local

    from cxrflow.logs import CHANNEL_ENV
    from cxrflow.steps import PIPELINE_RUN_ENV, new_pipeline_run_id

    # the channel sits apart from the log folder, which is renamed once kfp names the run
    channel_dir = Path(tempfile.mkdtemp(prefix="cxrflow-channel-"))
    channel = channel_dir / "channel.jsonl"
    env = {PIPELINE_RUN_ENV: new_pipeline_run_id(), **(env or {}), CHANNEL_ENV: str(channel)}
    out = sys.stdout if out is None else out
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    logs = Path(log_root).resolve() if log_root is not None else root.parent
    before = {p.name for p in root.iterdir()}
    pipeline_name = str(getattr(pipeline_func, "name", "") or "pipeline")
    # kfp picks the run name once it starts; log under a name of the same form until the
    # stream shows kfp's (the console then renames the folder)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S-%f")
    console = RunConsole(
        out,
        logs / f"{pipeline_name}-{stamp}",
        verbose=verbose,
        pipeline_root=root,
        step_names=_step_names(pipeline_func),
        channel=channel,
    )
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )
    started = time.monotonic()
    started_at = time.time()
    failure: RuntimeError | None = None
    with warm.started(env) as server:
        try:
            console.follow()
            with _environ(env), _captured(console):
                try:
                    task = pipeline_func(**arguments)
                except RuntimeError as exc:
                    if console.failed_step() is None:
                        raise
                    failure = exc
        finally:
            console.close()
            shutil.rmtree(channel_dir, ignore_errors=True)
            run_name = console.run_name or _new_run(root, before, pipeline_name)
            if run_name:
                console.move_to(logs / run_name)
            _write_steps(console, started_at)
            if server is not None:
                server.keep_log(console.log_dir)
    run_name = run_name or console.log_dir.name
    failed = console.failed_step()
    if failure is not None and failed is not None:
        log_path = console.log_dir / f"{failed.name}.log"
        raise LocalStepError(failed.name, failed.error, log_path) from failure
    console.note(
        f"{'done':<7}{run_name}  {time.monotonic() - started:.1f}s; "
        f"logs in {display_path(console.log_dir)}{os.sep}"
    )
    run_dir = root / run_name
    return LocalRunResult(
        run_dir=run_dir if run_dir.is_dir() else root,
        run_name=run_name,
        log_dir=console.log_dir,
        champion=_single_output(task),
        steps=console.steps,
    )


def _write_steps(console: RunConsole, started_at: float) -> None:
    """``steps.json`` in the run's log folder (see the module doc)."""
    ended_at = time.time()
    doc = {
        "started_at": started_at,
        "ended_at": ended_at,
        "wall_s": ended_at - started_at,
        "steps": [dataclasses.asdict(s) for s in console.steps],
    }
    (console.log_dir / STEPS_FILE).write_text(json.dumps(doc, indent=2), encoding="utf-8")


def find_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The evaluate step's ``metrics.json`` from a local run directory."""
    hits = sorted(Path(run_dir).glob("**/evaluation/metrics.json"))
    if not hits:
        raise FileNotFoundError(f"no evaluation/metrics.json under {run_dir}")
    return Evaluation.read(hits[-1].parent).model_dump(mode="json")


@contextmanager
def _captured(console: RunConsole) -> Iterator[None]:
    """Route ``sys.stdout`` and ``sys.stderr`` into ``console``; restored even on Ctrl-C."""
    saved = sys.stdout, sys.stderr
    sys.stdout = StreamCapture(console, saved[0])  # type: ignore[assignment]
    sys.stderr = StreamCapture(console, saved[1])  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


@contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _new_run(root: Path, before: set[str], pipeline_name: str) -> str | None:
    """kfp's run folder made during this call, when the stream did not name it."""
    new = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and p.name not in before and p.name.startswith(f"{pipeline_name}-")
    )
    return new[-1] if new else None


def _step_names(pipeline_func: Any) -> list[str]:
    """The step keys of the pipeline's leaf components (kfp names a local task after them)."""
    spec = getattr(pipeline_func, "pipeline_spec", None)
    if spec is None:
        return []
    return [
        step_key(name.removeprefix("comp-"))
        for name, component in spec.components.items()
        if component.WhichOneof("implementation") == "executor_label"
    ]


def _single_output(task: Any) -> str | None:
    outputs = getattr(task, "outputs", None) or {}
    if len(outputs) != 1:
        return None
    value = next(iter(outputs.values()))
    return None if value is None else str(value)


def find_registered(run_dir: str | Path) -> dict[str, Any]:
    """The register step's ``registered.json`` (the champion) from a local run directory."""
    hits = sorted(Path(run_dir).glob("**/registered/registered.json"))
    if not hits:
        raise FileNotFoundError(f"no registered/registered.json under {run_dir}")
    return Registration.read(hits[-1].parent).model_dump(mode="json")
