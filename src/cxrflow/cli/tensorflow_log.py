"""TensorFlow's start-up log lines, filtered by ``TF_CPP_MIN_LOG_LEVEL`` as they claim to be.

TensorFlow 2.21 logs through absl before absl's logging is initialised, so importing it writes
``WARNING: All log messages before absl::InitializeLog() is called are written to STDERR`` and
``I0000 ... port.cc:153] oneDNN custom operations are on ...`` to file descriptor 2 whatever
``TF_CPP_MIN_LOG_LEVEL`` says (measured: levels 2 and 3, ``ABSL_MIN_LOG_LEVEL`` and
``GLOG_minloglevel`` leave both lines). ``TF_ENABLE_ONEDNN_OPTS=0`` would silence the second by
turning the oneDNN kernels off, which changes speed and numerics, so it is not set. Instead
:func:`quiet_tensorflow_import` catches what the first ``import tensorflow`` writes to the
process's stderr and writes it back without the lines below ``TF_CPP_MIN_LOG_LEVEL``: a
``cxrflow: error:`` line is then the first thing on stderr, as for every other command.
"""

from __future__ import annotations

import importlib.abc
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called"
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def min_log_level() -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as a number (0: everything, 1: no INFO, 2: no WARNING...)."""
    try:
        return int(os.environ.get(LEVEL_ENV, "0").strip() or 0)
    except ValueError:
        return 0


def keep_line(line: str, min_level: int) -> bool:
    """Whether a line TensorFlow's native code wrote is at or above ``min_level``.

    Args:
        line: One line of stderr.
        min_level: The ``TF_CPP_MIN_LOG_LEVEL`` to apply.

    Returns:
        False for absl log lines below the level (and absl's notice about them), else True.
    """
    if line.startswith(ABSL_NOTICE):
        return min_level < 1
    match = _ABSL_LINE.match(line)
    return match is None or _SEVERITY[match.group(1)] >= min_level


@contextmanager
def filtered_stderr(min_level: int) -> Iterator[None]:
    """Catch what is written to file descriptor 2 inside the block; write back the lines that
    :func:`keep_line` keeps (in their order) when it ends."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            with suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if keep_line(line, min_level))
            if kept:
                os.write(2, kept.encode())


class _QuietLoader(importlib.abc.Loader):
    """Executes the real loader of ``tensorflow`` inside :func:`filtered_stderr`."""

    def __init__(self, finder: _TensorFlowFinder, spec: ModuleSpec) -> None:
        self._finder = finder
        self._spec = spec
        self._loader: Any = spec.loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        # the module keeps its real loader: nothing after the import sees this wrapper
        self._spec.loader = self._loader
        module.__loader__ = self._loader
        self._finder.uninstall()
        with filtered_stderr(min_log_level()):
            self._loader.exec_module(module)


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` with the other finders and wraps its loader in :class:`_QuietLoader`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _QuietLoader(self, spec)
                return spec
        return None

    def uninstall(self) -> None:
        """Stop watching for the import (idempotent)."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)


@contextmanager
def quiet_tensorflow_import() -> Iterator[None]:
    """Within the block, the first ``import tensorflow`` writes only the start-up lines at or
    above ``TF_CPP_MIN_LOG_LEVEL`` to stderr (nothing is filtered when it is 0 or TensorFlow is
    already imported)."""
    if "tensorflow" in sys.modules or min_log_level() < 1:
        yield
        return
    finder = _TensorFlowFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        finder.uninstall()
