"""Running ``git`` and ``dvc`` for the data registry: environment, identity, timeouts, errors.

Commands run as subprocesses (``python -m dvc`` of this interpreter, and ``git``) with captured
output. ``dvc`` runs with ``DVC_NO_ANALYTICS=1``. A command that does not finish within
``CXRFLOW_DVC_TIMEOUT`` seconds (default 1800) is killed: a stuck remote must fail a nightly
run, not hang it. A failing command raises :class:`DataRegistryError` (a :class:`RuntimeError`)
naming the command and its error output. Commits use the configured git identity, or
``cxrflow <cxrflow@localhost>`` where none is configured (:func:`git_identity_args`).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

GIT_FALLBACK_IDENTITY: tuple[tuple[str, str], ...] = (
    ("user.name", "cxrflow"),
    ("user.email", "cxrflow@localhost"),
)
"""Used for commits and tags only where git has no identity configured."""
TIMEOUT_ENV = "CXRFLOW_DVC_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
ERROR_TAIL = 4000
"""Characters of a failed command's output kept in the error message."""


class DataRegistryError(RuntimeError):
    """A registry operation failed: a git/dvc command, a missing path, an unreachable remote."""


def tail(text: str) -> str:
    """The last :data:`ERROR_TAIL` characters of a command's output, stripped."""
    text = text.strip()
    return text if len(text) <= ERROR_TAIL else "..." + text[-ERROR_TAIL:]


def first_line(text: str) -> str:
    """The first non-blank line of a command's output, or ``(no output)``."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no output)"


def run(
    cmd: Sequence[str], cwd: Path, *, env: Mapping[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in ``cwd`` with captured text output.

    Args:
        cmd: The command and its arguments.
        cwd: Working directory.
        env: The whole environment of the command; ``None`` inherits this process's.
        check: Raise when the command exits non-zero.

    Raises:
        DataRegistryError: The command failed (with ``check``), could not start, or ran longer
            than ``CXRFLOW_DVC_TIMEOUT`` seconds (default 1800) and was killed.
    """
    log.debug("run: %s (in %s)", shlex.join(cmd), cwd)
    timeout = float(os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S)))
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise DataRegistryError(
            f"command timed out after {timeout:.0f} s: {shlex.join(cmd)} (in {cwd})"
        ) from exc
    except OSError as exc:
        raise DataRegistryError(f"cannot run {shlex.join(cmd)!r} in {cwd}: {exc}") from exc
    if check and proc.returncode != 0:
        output = "\n".join(s for s in (tail(proc.stderr), tail(proc.stdout)) if s)
        raise DataRegistryError(
            f"command failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
            f"  in {cwd}\n{output or '(no output)'}"
        )
    return proc


def dvc_env() -> dict[str, str]:
    """This process's environment with DVC analytics off (endpoint and credentials inherited)."""
    env = dict(os.environ)
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m dvc <args>`` of this interpreter in ``root`` (see :func:`run`)."""
    return run([sys.executable, "-m", "dvc", *args], root, env=dvc_env(), check=check)


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``git <args>`` in ``root`` (see :func:`run`)."""
    return run(["git", *args], root, check=check)


def git_identity_args(root: Path) -> list[str]:
    """``-c user.name=... -c user.email=...`` for whichever of the two git lacks."""
    args: list[str] = []
    for key, value in GIT_FALLBACK_IDENTITY:
        if git(root, "config", "--get", key, check=False).returncode != 0:
            args += ["-c", f"{key}={value}"]
    return args
