"""What a local ``kfp.local`` run shows on the console, and the per-step log files behind it.

``kfp.local``'s ``SubprocessRunner`` pipes each task's stdout and stderr together and re-prints
every line in the parent with ``print`` (indented by four spaces), and logs its own
"Executing task 'x'" / "Task 'x' finished with status SUCCESS" lines through a ``logging``
handler bound to ``sys.stdout`` at each task. So the whole stream of a run passes through this
process's ``sys.stdout`` / ``sys.stderr`` objects, and :class:`StreamCapture` replaces those two
for the length of a run; no file descriptor needs redirecting. Lines are attributed to a step by
the thread that writes them (kfp runs a task and re-prints its output in one thread), so the
split stays right if kfp ever runs tasks concurrently.

Each step's lines (kfp's indent and colour codes removed) go to ``<log_dir>/<step>.log`` and the
raw stream to ``<log_dir>/pipeline.log``. The console gets one line as each step starts and one
as it ends (status, duration, the step's summary line), plus training progress: a line rewritten
in place when the console is a terminal, otherwise at most one line per epoch and per
``NON_TTY_PROGRESS_SECONDS`` (nothing for quick runs, a heartbeat for long ones).

Steps report to the runner through its channel (:mod:`cxrflow.logs`: a file of JSON lines
named by ``CXRFLOW_RUNNER_CHANNEL``), not on stdout: their summary (shown on the step's end
line), training progress and timing report (where the time went, by phase; kept in the step's
:class:`StepRecord`, which the runner writes to ``<log_dir>/steps.json``). :class:`RunConsole`
follows the channel file while the run goes (:meth:`RunConsole.follow`) and reads it to the end
before it takes a step's end line, so a step's last reports are in before its end is shown;
each record goes to the step it names, so steps running at once keep theirs apart. The step's
log file gets each record as a marked line (``::cxrflow-summary:: <step>: <text>``, ...).

This module imports neither kfp nor cxrflow's heavy dependencies; it only parses text.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from cxrflow.logs import (
    PROGRESS_KIND,
    PROGRESS_MARKER,
    SUMMARY_KIND,
    SUMMARY_MARKER,
    TIMING_KIND,
    TIMING_MARKER,
)

NON_TTY_PROGRESS_SECONDS = 30.0
"""Without a terminal, the least time between two progress lines of one step."""

RUN_LOG_NAME = "pipeline.log"
"""The file in a run's log folder holding the raw stream of the whole run."""

CHANNEL_POLL_SECONDS = 0.25
"""How often :meth:`RunConsole.follow` reads new records from the runner's channel."""

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# kfp.local.task_dispatcher: logging.info(f"Executing task {name!r}") and
# f"Task {name!r} finished with status {SUCCESS|FAILURE}", formatted "HH:MM:SS.mmm - LEVEL - ".
_KFP_PREFIX = r"^\d\d:\d\d:\d\d\.\d+ - [A-Z]+ - "
_TASK_START = re.compile(_KFP_PREFIX + r"Executing task '(?P<task>[^']+)'\s*$")
_TASK_END = re.compile(
    _KFP_PREFIX + r"Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)\s*$"
)
_KFP_INDENT = " " * 4  # kfp.local.logging_utils.indented_print
_KERAS_EPOCH = re.compile(r"^Epoch (?P<n>\d+)/(?P<total>\d+)\s*$")
_KERAS_METRIC = re.compile(r"\b(?P<name>(?:val_)?[a-z_0-9]+): (?P<value>[-+0-9.eE]+|nan|inf)\b")
_EPOCH_IN_TEXT = re.compile(r"\bepoch (?P<n>\d+)(?:/\d+)?", re.IGNORECASE)
# The last line of a traceback ("ValueError: boom", "pkg.mod.DataValidationError: ...",
# "KeyboardInterrupt") or an argparse-style "cxrflow: error: ..." line.
_ERROR_LINE = re.compile(
    r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure)|[\w.-]+: error)(?::|$)"
)
_LOUD_LINE = re.compile(r"\b(?:ERROR|CRITICAL|FATAL|error)\b")


def step_key(task_name: str) -> str:
    """The cxrflow step key of a kfp.local task name (``model-0`` -> ``model_0``).

    kfp names a local task after its component, with underscores turned into dashes.
    """
    return task_name.replace("-", "_")


def last_error_line(lines: list[str]) -> str:
    """The last line of ``lines`` that reads like an exception or error, else the last line.

    Args:
        lines: a step's output, oldest first.

    Returns:
        The line, stripped; ``""`` when every line is blank.
    """
    stripped = [line.strip() for line in lines if line.strip()]
    for pattern in (_ERROR_LINE, _LOUD_LINE):
        for line in reversed(stripped):
            if pattern.search(line):
                return line
    return stripped[-1] if stripped else ""


class LocalStepError(RuntimeError):
    """A step of a local pipeline run failed; ``str()`` is one line for the console."""

    def __init__(self, step: str, error_line: str, log_path: Path | str) -> None:
        self.step = step
        self.error_line = error_line
        self.log_path = Path(log_path)
        what = error_line or "exited with an error and no output"
        super().__init__(f"step {step} failed: {what} (full log: {display_path(self.log_path)})")


class RunInterrupted(SystemExit):
    """A local run stopped by SIGINT or SIGTERM, once cleaned up (see ``pipelines.local``).

    A ``SystemExit`` whose code is 128 + the signal number (130, 143), as a shell reports a
    command the signal ended: the ``cxrflow`` command exits with it and prints nothing more,
    the one line (``str()``) having been shown already.

    Attributes:
        signum: the signal.
        line: the line shown (what was stopped; the MLflow parent run and how it was marked).
        parent_run_id: the MLflow parent run marked ``KILLED``, or None.
        steps: the steps that were running.
    """

    def __init__(
        self, signum: int, line: str, parent_run_id: str | None, steps: Iterable[str]
    ) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.line = line
        self.parent_run_id = parent_run_id
        self.steps = list(steps)

    def __str__(self) -> str:
        return self.line


@dataclasses.dataclass
class StepRecord:
    """One step of a local run as the console saw it.

    Attributes:
        name: the step key (``model_0``), from kfp's task name.
        status: ``running``, ``ok``, ``FAILED``, or ``stopped`` (the run was interrupted).
        seconds: wall time from kfp's start line to its end line.
        summary: the text of the step's last summary report, or ``""``.
        error: for a failed step, its last error line.
        started_at: when kfp's start line came (epoch seconds).
        timing: the step's own timing report (:class:`cxrflow.steps.StepTimes`), if it sent
            one: phases in seconds and the process start, entry and end times.
    """

    name: str
    status: str = "running"
    seconds: float = 0.0
    summary: str = ""
    error: str = ""
    started_at: float = 0.0
    timing: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Live:
    """Per-step state while the step runs."""

    record: StepRecord
    task: str
    started: float
    log: TextIO
    tail: collections.deque[str] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=400)
    )
    marked: bool = False
    epoch: str = ""
    progress: str = ""
    progress_printed: str = ""
    progress_printed_at: float = 0.0


class ChannelReader:
    """Reads the records appended to a runner's channel file since the last read.

    Args:
        path: the channel file (see :mod:`cxrflow.logs`); missing until the first record.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        """The complete records appended since the last call, oldest first.

        A line that is not a JSON object is skipped: a garbled report costs the report, not
        the run.
        """
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records


class RunConsole:
    """Turns the raw stream of a kfp.local run into log files and a short console display.

    Args:
        out: where the display goes (and, when ``verbose``, the raw stream).
        log_dir: folder for ``<step>.log`` and ``pipeline.log``; created now.
        verbose: pass the raw stream through to ``out`` unchanged instead of the display.
        tty: whether ``out`` is a terminal (progress rewritten in place); default: ask ``out``.
        pipeline_root: kfp's pipeline root; the first path under it seen in the stream names
            the run (``run_name``), and ``log_dir`` is then renamed to a sibling of that name.
        step_names: the steps expected, to line the columns up from the first line.
        channel: the runner's channel file the steps report to (see :mod:`cxrflow.logs`);
            read by :meth:`poll_channel`, :meth:`follow` and before each step's end.
    """

    def __init__(
        self,
        out: TextIO,
        log_dir: Path,
        *,
        verbose: bool = False,
        tty: bool | None = None,
        pipeline_root: Path | None = None,
        step_names: Iterable[str] = (),
        channel: Path | None = None,
    ) -> None:
        self.out = out
        self.log_dir = log_dir
        self.run_name: str | None = None
        self._run_path = (
            re.compile(re.escape(str(pipeline_root) + os.sep) + r"(?P<run>[^/\\\s\"']+)[/\\]")
            if pipeline_root is not None
            else None
        )
        self.verbose = verbose
        self.tty = _isatty(out) if tty is None else tty
        self.steps: list[StepRecord] = []
        self._live: dict[str, _Live] = {}  # task name -> state, for running steps
        self._by_thread: dict[int, str] = {}  # thread id -> its current (or last) task
        self._partial: dict[int, str] = {}
        self._progress_shown = False
        self._lock = threading.RLock()
        self._width = max((len(name) + 2 for name in step_names), default=0)
        self._channel = ChannelReader(channel) if channel is not None else None
        self._following: threading.Thread | None = None
        self._stop_following = threading.Event()
        log_dir.mkdir(parents=True, exist_ok=True)
        self._run_log = (log_dir / RUN_LOG_NAME).open("a", encoding="utf-8")

    # ---- the stream --------------------------------------------------------------------------

    def write(self, text: str) -> None:
        """Take raw text written by the current thread to stdout or stderr."""
        ident = threading.get_ident()
        with self._lock:
            if self.verbose:
                self.out.write(text)
                self.out.flush()
            self._run_log.write(text)
            buffered = self._partial.pop(ident, "") + text
            *lines, rest = buffered.split("\n")
            if rest:
                self._partial[ident] = rest
            for line in lines:
                self._line(ident, line)
            if lines:
                self._run_log.flush()

    def _line(self, ident: int, raw: str) -> None:
        line = _ANSI.sub("", raw).rstrip("\r")
        start = _TASK_START.match(line)
        if start:
            self._start(ident, start["task"])
            return
        end = _TASK_END.match(line)
        if end:
            # the step has exited: whatever it reported is in the channel now
            self.poll_channel()
            self._end(end["task"], end["status"])
            return
        task = self._by_thread.get(ident)
        live = self._live.get(task) if task else None
        if live is None:
            return  # between steps (kfp's outputs listing, rules): pipeline.log only
        text = line.removeprefix(_KFP_INDENT)
        if self.run_name is None and self._run_path is not None:
            found = self._run_path.search(text)
            if found:
                self.run_name = found["run"]
                self.move_to(self.log_dir.with_name(self.run_name))
                live.log.flush()
        live.log.write(text + "\n")
        live.tail.append(text)
        self._keras_progress(live, text)

    def _keras_progress(self, live: _Live, text: str) -> None:
        if not live.marked:  # Keras' own lines, for steps that report no progress themselves
            keras = _KERAS_EPOCH.match(text.strip())
            if keras:
                self._progress(live, f"epoch {keras['n']}/{keras['total']}", keras["n"])
            elif live.epoch and " - loss: " in text:
                # the end-of-epoch Keras progress bar: add its metrics to the epoch line
                metrics = " ".join(
                    f"{m['name']}={m['value']}" for m in _KERAS_METRIC.finditer(text)
                )
                if metrics and live.progress.startswith("epoch "):
                    head = live.progress.split(" ", 2)[:2]
                    self._progress(live, " ".join([*head, metrics]), live.epoch)

    # ---- the channel -------------------------------------------------------------------------

    def poll_channel(self) -> None:
        """Take every record the steps appended to the channel since the last poll."""
        if self._channel is None:
            return
        with self._lock:
            for record in self._channel.read():
                self.take(record)

    def follow(self, interval: float = CHANNEL_POLL_SECONDS) -> None:
        """Poll the channel every ``interval`` seconds in a thread, until :meth:`close`."""
        if self._channel is None or self._following is not None:
            return

        def loop() -> None:
            while not self._stop_following.wait(interval):
                self.poll_channel()

        self._following = threading.Thread(target=loop, name="cxrflow-channel", daemon=True)
        self._following.start()

    def take(self, record: dict[str, Any]) -> None:
        """Take one record a step reported (see :mod:`cxrflow.logs` for its fields)."""
        with self._lock:
            kind, step = record.get("kind"), str(record.get("step", ""))
            live = self._live_by_name(step)
            done = None if live is not None else self._done_by_name(step)
            if live is None and done is None and len(self._live) == 1:
                # a step that names itself unlike its task: the one running is the sender
                live = next(iter(self._live.values()))
            if live is None:
                if done is not None and kind == TIMING_KIND:
                    done.timing = dict(record.get("report") or {})
                elif done is not None and kind == SUMMARY_KIND:
                    done.summary = str(record.get("text", ""))
                return
            if kind == TIMING_KIND:
                report = dict(record.get("report") or {})
                live.record.timing = report
                live.log.write(f"{TIMING_MARKER} {json.dumps(report, sort_keys=True)}\n")
            elif kind == SUMMARY_KIND:
                live.record.summary = str(record.get("text", ""))
                live.log.write(f"{SUMMARY_MARKER} {step}: {live.record.summary}\n")
            elif kind == PROGRESS_KIND:
                progress = str(record.get("text", ""))
                live.log.write(f"{PROGRESS_MARKER} {step}: {progress}\n")
                live.marked = True
                epoch = _EPOCH_IN_TEXT.search(progress)
                self._progress(live, progress, epoch.group(0) if epoch else progress)
            live.log.flush()

    def _live_by_name(self, step: str) -> _Live | None:
        return next(
            (
                live
                for live in self._live.values()
                if step in (live.record.name, live.task) or step_key(step) == live.record.name
            ),
            None,
        )

    def _done_by_name(self, step: str) -> StepRecord | None:
        return next((s for s in reversed(self.steps) if s.name == step_key(step)), None)

    # ---- steps -------------------------------------------------------------------------------

    def _start(self, ident: int, task: str) -> None:
        name = step_key(task)
        record = StepRecord(name=name, started_at=time.time())
        self.steps.append(record)
        # append: a retried task (kfp retry policy) logs every attempt in one file
        log = (self.log_dir / f"{name}.log").open("a", encoding="utf-8")
        now = time.monotonic()
        # progress_printed_at=now: without a terminal, quick steps show no progress at all
        self._live[task] = _Live(
            record=record, task=task, started=now, log=log, progress_printed_at=now
        )
        self._by_thread[ident] = task
        self._show(f"{'start':<7}{name}")

    def _end(self, task: str, status: str) -> None:
        live = self._live.pop(task, None)
        if live is None:
            return
        record = live.record
        record.seconds = time.monotonic() - live.started
        record.status = "ok" if status == "SUCCESS" else "FAILED"
        if record.status == "FAILED":
            record.error = last_error_line(list(live.tail))
        live.log.close()
        detail = record.summary if record.status == "ok" else record.error
        self._show(
            f"{record.status:<7}{record.name:<{self._name_width()}}"
            f"{_duration(record.seconds):>8}  {detail}".rstrip()
        )

    def _progress(self, live: _Live, text: str, epoch: str) -> None:
        live.progress = text
        live.epoch = epoch
        if self.verbose:
            return
        line = f"{'':<7}{live.record.name:<{self._name_width()}}{'':>8}  {text}"
        if self.tty:
            width = shutil.get_terminal_size((100, 24)).columns - 1
            self.out.write("\r\x1b[K" + line[:width])
            self.out.flush()
            self._progress_shown = True
            return
        now = time.monotonic()
        if epoch != live.progress_printed and now - live.progress_printed_at >= (
            NON_TTY_PROGRESS_SECONDS
        ):
            live.progress_printed = epoch
            live.progress_printed_at = now
            self._print(line)

    def _show(self, line: str) -> None:
        if not self.verbose:
            self._print(line)

    def _print(self, line: str) -> None:
        if self._progress_shown:
            self.out.write("\r\x1b[K")
            self._progress_shown = False
        self.out.write(line + "\n")
        self.out.flush()

    def _name_width(self) -> int:
        self._width = max(self._width, *(len(s.name) + 2 for s in self.steps), 10)
        return self._width

    # ---- the end -----------------------------------------------------------------------------

    def running_steps(self) -> list[str]:
        """The steps running now, in the order they started."""
        with self._lock:
            return [live.record.name for live in self._live.values()]

    def stop_running(self) -> list[str]:
        """End the running steps as ``stopped`` (the run was interrupted), without a line.

        Returns:
            Their names.
        """
        with self._lock:
            stopped = []
            for live in self._live.values():
                live.record.status = "stopped"
                live.record.seconds = time.monotonic() - live.started
                live.log.close()
                stopped.append(live.record.name)
            self._live.clear()
            return stopped

    def failed_step(self) -> StepRecord | None:
        """The last step that ended FAILED (the last attempt, for a retried one), if any."""
        return next((s for s in reversed(self.steps) if s.status == "FAILED"), None)

    def note(self, line: str) -> None:
        """Print one line of our own on the console (also in verbose mode)."""
        with self._lock:
            self._print(line)

    def move_to(self, log_dir: Path) -> None:
        """Rename the log folder (open files follow the rename on POSIX)."""
        with self._lock:
            if log_dir == self.log_dir or log_dir.exists():
                return
            log_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(self.log_dir, log_dir)
            except OSError:
                return
            self.log_dir = log_dir

    def close(self) -> None:
        """Take the channel's last records and partial lines; close the logs; clear progress.

        Also stops :meth:`follow`'s thread.
        """
        if self._following is not None:
            self._stop_following.set()
            self._following.join()
            self._following = None
        with self._lock:
            self.poll_channel()
            for ident, rest in list(self._partial.items()):
                self._line(ident, rest)
            self._partial.clear()
            for live in self._live.values():
                live.log.close()
            if self._progress_shown:
                self.out.write("\r\x1b[K")
                self.out.flush()
                self._progress_shown = False
            self._run_log.close()


class StreamCapture(io.TextIOBase):
    """A text stream standing in for ``sys.stdout`` / ``sys.stderr`` that feeds a console."""

    def __init__(self, console: RunConsole, like: TextIO) -> None:
        super().__init__()
        self._console = console
        self._encoding = getattr(like, "encoding", None) or "utf-8"

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only on io.TextIOBase
        return self._encoding

    def write(self, text: str) -> int:
        self._console.write(text)
        return len(text)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else as is."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
