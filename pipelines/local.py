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

A local sqlite tracking store is created before the first step, under a lock
(:func:`cxrflow.tracking.ensure_store`), so that runs started together on a new store do not
both create its tables.

A run stops cleanly on SIGINT (Ctrl-C, or ``kill -INT`` of this process alone, even where the
shell started it with SIGINT ignored) and SIGTERM: every process the run started (the steps, the
warm server, their children) gets SIGTERM, and SIGKILL after :data:`STOP_GRACE_SECONDS`; the
MLflow parent run and the running step's nested run are ended ``KILLED`` by the finalize step's
own code (:func:`cxrflow.steps.finalize.run_finalize`, run here, since kfp.local's exit handler
never runs once its task loop is stopped), naming the step; one line says what was stopped;
:class:`RunInterrupted` then ends the command with 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cxrflow.artifacts import Evaluation, Registration
from pipelines import warm
from pipelines.progress import (
    LocalStepError,
    RunConsole,
    RunInterrupted,
    StepRecord,
    StreamCapture,
    display_path,
    step_key,
)

if TYPE_CHECKING:
    from pipelines.containers import ContainerSession

__all__ = [
    "LocalRunResult",
    "LocalStepError",
    "RunInterrupted",
    "StepRecord",
    "find_metrics",
    "run_local",
]

STEPS_FILE = "steps.json"
"""The file in a run's log folder with every step's timing (see the module doc)."""

STOP_GRACE_SECONDS = 10.0
"""How long the processes of a stopped run get to end after SIGTERM before SIGKILL."""


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
    containers: ContainerSession | None = None,
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
        containers: run every step in its image instead, on this session's podman service
            (:mod:`pipelines.containers`; no warm starts; the channel lives under the root).

    Returns:
        The run's folders, champion and per-step records.

    Raises:
        LocalStepError: a step failed; its message names the step, its last error line and
            its log file.
        RunInterrupted: SIGINT or SIGTERM stopped the run (see the module doc); it has been
            cleaned up and its one line shown.
    """
    from kfp import local

    from cxrflow.logs import CHANNEL_ENV
    from cxrflow.steps import PIPELINE_RUN_ENV, new_pipeline_run_id
    from cxrflow.tracking import ensure_store

    # the channel sits apart from the log folder, which is renamed once kfp names the run
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    channel_dir = (  # a container sees only the pipeline root
        Path(tempfile.mkdtemp(prefix="cxrflow-channel-"))
        if containers is None
        else containers.prepare(pipeline_func, root)
    )
    channel = channel_dir / "channel.jsonl"
    env = {PIPELINE_RUN_ENV: new_pipeline_run_id(), **(env or {}), CHANNEL_ENV: str(channel)}
    out = sys.stdout if out is None else out
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
        runner=local.SubprocessRunner(use_venv=False)
        if containers is None
        else containers.runner(env),
        pipeline_root=str(root),
        raise_on_error=True,
    )
    started = time.monotonic()
    started_at = time.time()
    failure: RuntimeError | None = None
    task: Any = None
    stopper = _Stopper(
        console.running_steps, None if containers is None else containers.remove_containers
    )
    with (
        stopper.installed(),
        warm.started(env) if containers is None else nullcontext() as server,
    ):
        try:
            console.follow()
            with _environ(env), _captured(console):
                try:
                    uri = os.environ.get("MLFLOW_TRACKING_URI")
                    if uri:  # before any step: runs started together must not both create it
                        ensure_store(uri)
                    with stopper.raising():
                        task = pipeline_func(**arguments)
                except _Stop:
                    pass
                except RuntimeError as exc:
                    if console.failed_step() is None:
                        raise
                    failure = exc
        finally:
            stopper.reap(console)
            console.close()
            shutil.rmtree(channel_dir, ignore_errors=True)
            run_name = console.run_name or _new_run(root, before, pipeline_name)
            if run_name:
                console.move_to(logs / run_name)
            _write_steps(console, started_at)
            if server is not None:
                server.keep_log(console.log_dir)
        stopper.reap(console)  # the warm server's own children, now that it is stopped
    run_name = run_name or console.log_dir.name
    if stopper.signum is not None:
        raise _stopped(pipeline_func, env, stopper, console)
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


class _Stop(BaseException):
    """Raised in the main thread by :class:`_Stopper`'s handler: it unwinds kfp.local's task
    loop (a BaseException, so that no ``except Exception`` of kfp's keeps it going)."""


class _Stopper:
    """SIGINT and SIGTERM during a local run: stop every process the run started, then the run.

    The handler is installed for SIGINT even where it was ignored (a shell starts background
    jobs so): ``kill -INT`` of the runner must stop the run as Ctrl-C does.

    Args:
        running: returns the steps running now (the console's), asked when a signal comes.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(
        self, running: Callable[[], list[str]], remove_containers: Callable[[], Any] | None = None
    ) -> None:
        import psutil

        self._remove_containers = remove_containers
        """A container run's steps are no child processes: they are removed on podman."""
        self.signum: int | None = None
        self.running: list[str] = []
        self._get_running = running
        self._raise = False
        self._me = psutil.Process()
        # processes that were there before the run are not the run's (a test's own server)
        self._before = {p.pid for p in self._children()}
        self._procs: list[Any] = []
        self._watchdog: threading.Timer | None = None

    def _children(self) -> list[Any]:
        import psutil

        try:
            return list(self._me.children(recursive=True))
        except psutil.Error:
            return []

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle the signals for the length of the block (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        saved = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        try:
            yield
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    @contextmanager
    def raising(self) -> Iterator[None]:
        """Inside the block a signal raises :class:`_Stop`; outside it is only recorded (the
        run's own clean-up is not cut short) and the run ends stopped all the same."""
        if self.signum is not None:
            raise _Stop
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:
            return  # already stopping: the first signal says how the run ends
        self.signum = signum
        self.running = self._get_running()
        self._terminate()
        if self._raise:
            self._raise = False
            raise _Stop

    def _terminate(self) -> None:
        """SIGTERM to every process the run started; SIGKILL after the grace, whatever the
        main thread is waiting on (kfp waits for a step's process without a timeout)."""
        import psutil

        self._procs = [p for p in self._children() if p.pid not in self._before]
        for proc in self._procs:
            with suppress(psutil.Error):
                proc.terminate()
        if self._remove_containers is not None:
            try:  # before finalize marks the runs KILLED: no step writes to MLflow after
                self._remove_containers()
            except Exception as exc:
                print(f"cxrflow: warning: containers not removed yet: {exc}", file=sys.stderr)
        self._watchdog = threading.Timer(STOP_GRACE_SECONDS, self._kill, (self._procs,))
        self._watchdog.daemon = True
        self._watchdog.start()

    @staticmethod
    def _kill(procs: list[Any]) -> None:
        import psutil

        for proc in procs:
            with suppress(psutil.Error):
                proc.kill()

    def reap(self, console: RunConsole) -> None:
        """When stopped: end the running steps on ``console`` and wait until every process of
        the run has ended (SIGKILL after the grace); else nothing."""
        import psutil

        if self.signum is None:
            return
        console.stop_running()
        procs = {p.pid: p for p in self._procs}
        for proc in self._children():
            if proc.pid not in self._before and proc.pid not in procs:
                with suppress(psutil.Error):
                    proc.terminate()
                procs[proc.pid] = proc
        _gone, alive = psutil.wait_procs(list(procs.values()), timeout=STOP_GRACE_SECONDS)
        self._kill(alive)
        psutil.wait_procs(alive, timeout=5)
        if self._watchdog is not None:
            self._watchdog.cancel()


def _stopped(
    pipeline_func: Any, env: Mapping[str, str], stopper: _Stopper, console: RunConsole
) -> RunInterrupted:
    """End a stopped run's MLflow runs KILLED; show and return what was stopped."""
    signum = stopper.signum or signal.SIGINT
    name = signal.Signals(signum).name
    where = (
        f"during {', '.join(stopper.running)}"
        if stopper.running
        else ("before any step started" if not console.steps else "between steps")
    )
    step = stopper.running[0] if stopper.running else ""
    parent, mlflow_said = None, "no MLflow run to mark"
    config = _pipeline_params(pipeline_func)
    if console.steps and config is not None:
        try:
            parent = _finalize_killed(config, env, step, f"interrupted by {name} {where}")
            mlflow_said = f"MLflow parent run {parent} marked KILLED"
        except Exception as exc:  # the line still says what was stopped
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            mlflow_said = f"MLflow runs not marked: {type(exc).__name__}: {first}"[:300]
    line = f"cxrflow: interrupted ({name}): stopped {where}; {mlflow_said}"
    print(line, file=sys.stderr, flush=True)
    return RunInterrupted(signum, line, parent, stopper.running)


def _finalize_killed(config: Mapping[str, Any], env: Mapping[str, str], step: str, why: str) -> str:
    """The finalize step's own code, run here: parent and running nested runs ``KILLED``."""
    from cxrflow.config import params_from_kfp
    from cxrflow.logs import CHANNEL_ENV
    from cxrflow.steps import PIPELINE_RUN_ENV
    from cxrflow.steps.finalize import run_finalize

    # the step's summary would be a second line: the runner shows its own, so none is logged
    with _environ({**env, CHANNEL_ENV: os.devnull}):
        result = run_finalize(
            params_from_kfp(config), env[PIPELINE_RUN_ENV], "KILLED", why, stopped_step=step
        )
    return str(result["parent_run_id"])


def _pipeline_params(pipeline_func: Any) -> dict[str, Any] | None:
    """The pipeline's ``params`` default (the resolved configuration), if it has one."""
    spec = getattr(pipeline_func, "pipeline_spec", None)
    if spec is None or "params" not in spec.root.input_definitions.parameters:
        return None
    from google.protobuf import json_format

    value = spec.root.input_definitions.parameters["params"].default_value
    config = json_format.MessageToDict(value)
    return config if isinstance(config, dict) and config else None


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
