"""Logging setup, and the channel through which a step reports to the runner that started it.

:func:`setup_logging` is called by entry points, never at import.

A step tells its runner its key figure (:func:`emit_summary`), training progress
(:func:`emit_progress`) and where its time went (:func:`emit_timing`). These reports go to the
runner only, through the file the runner names in :data:`CHANNEL_ENV`, never onto stdout: a
step run by hand (``cxrflow ingest ...``) prints no runner marker, and kfp.local, which captures
a step's stdout, is not in the way. The local runner (``pipelines/local.py``) sets the variable
for its steps; the warm server passes it on with the rest of a step's environment.

The channel is a file of JSON lines, one record per write::

    {"kind": "summary" | "progress" | "timing", "step": "<step key>", "text": ..., "report": ...}

Each record is one ``write`` on a descriptor opened with ``O_APPEND``, which on a local file
system lands whole at the end of the file even when steps running in parallel append at once
(the records are short). Without a channel, a summary is one human line in the log (INFO), a
progress line a DEBUG one, and the timing report goes nowhere.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not when it was made
    (a test's captured stream, a step's redirected stderr), so it never writes to a closed
    stream."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once (stderr, ISO timestamps, level from ``CXRFLOW_LOG_LEVEL``)."""
    level_name = "DEBUG" if verbose else os.environ.get("CXRFLOW_LOG_LEVEL", "INFO")
    level = getattr(logging, level_name.upper(), logging.INFO)
    root = logging.getLogger()
    if not any(getattr(h, "_cxrflow", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
            )
        )
        handler._cxrflow = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for noisy in ("alembic", "urllib3", "botocore", "great_expectations", "h5py", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


CHANNEL_ENV = "CXRFLOW_RUNNER_CHANNEL"
"""The environment variable naming the runner's channel file (set by the local runner)."""

SUMMARY_KIND, PROGRESS_KIND, TIMING_KIND = "summary", "progress", "timing"
"""The ``kind`` of a channel record."""

SUMMARY_MARKER = "::cxrflow-summary::"
"""Prefix of a step's summary line in its log file (written there by the local runner)."""

PROGRESS_MARKER = "::cxrflow-progress::"
"""Prefix of a training progress line in a step's log file (written by the local runner)."""

TIMING_MARKER = "::cxrflow-timing::"
"""Prefix of a step's timing report (one JSON object) in its log file (written by the local
runner, which also keeps the report in ``runs/<run>/steps.json``)."""

_logger = logging.getLogger(__name__)
_failed_channels: set[str] = set()  # warned once each: a report is not worth failing a step


def channel_path() -> str | None:
    """The runner's channel file for this process, or None when no runner asked for reports."""
    return os.environ.get(CHANNEL_ENV) or None


def write_record(record: Mapping[str, Any]) -> bool:
    """Append ``record`` to the runner's channel as one JSON line.

    Args:
        record: a JSON-serialisable mapping with at least ``kind`` and ``step``.

    Returns:
        Whether a channel was set and the record written (a channel that cannot be written is
        logged once as a warning, not raised: the step's work matters more than its report).
    """
    path = channel_path()
    if path is None:
        return False
    line = (json.dumps(dict(record), sort_keys=True, default=str) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write: appended whole, see the module doc
        finally:
            os.close(fd)
    except OSError as exc:
        if path not in _failed_channels:
            _failed_channels.add(path)
            _logger.warning("cannot write the runner's channel %s: %s", path, exc)
        return False
    return True


def emit_summary(step: str, text: str) -> None:
    """Report the step's key figure: to the runner's channel, else as one INFO log line.

    Args:
        step: the step key (``ingest``, ``model_0``, ...).
        text: one line, e.g. ``kept 5216 images``.
    """
    if not write_record({"kind": SUMMARY_KIND, "step": step, "text": text}):
        _logger.info("%s: %s", step, text)


def emit_progress(step: str, text: str) -> None:
    """Report one training progress line: to the runner's channel, else as a DEBUG log line.

    Keras prints its own line per epoch on a terminal, so without a runner this adds nothing
    at the default level.

    Args:
        step: the step key (``model_0``, ...).
        text: e.g. ``head epoch 3/40 loss=0.41 val_accuracy=0.88``.
    """
    if not write_record({"kind": PROGRESS_KIND, "step": step, "text": text}):
        _logger.debug("%s: %s", step, text)


def emit_timing(report: dict[str, Any]) -> None:
    """Send a step's timing report to the runner's channel; without a runner, drop it.

    Args:
        report: :meth:`cxrflow.steps.StepTimes.report`'s mapping; its ``step`` names the step.
    """
    write_record({"kind": TIMING_KIND, "step": str(report.get("step", "")), "report": report})
