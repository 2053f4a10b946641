"""Logging setup: timestamps, to stderr. Called by entry points, never at import."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once (stderr, ISO timestamps, level from ``CXRFLOW_LOG_LEVEL``)."""
    level_name = "DEBUG" if verbose else os.environ.get("CXRFLOW_LOG_LEVEL", "INFO")
    level = getattr(logging, level_name.upper(), logging.INFO)
    root = logging.getLogger()
    if not any(getattr(h, "_cxrflow", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
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


SUMMARY_MARKER = "::cxrflow-summary::"
"""Prefix of the one line each step writes with its key figure; the local runner shows it."""

PROGRESS_MARKER = "::cxrflow-progress::"
"""Prefix of training progress lines (one per epoch); the local runner shows them live."""


def emit_summary(step: str, text: str) -> None:
    """Write the step's key figure as one marked line on stdout (read by the local runner)."""
    print(f"{SUMMARY_MARKER} {step}: {text}", flush=True)


def emit_progress(step: str, text: str) -> None:
    """Write one marked training progress line on stdout (read by the local runner)."""
    print(f"{PROGRESS_MARKER} {step}: {text}", flush=True)
