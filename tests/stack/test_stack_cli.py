"""``infra/stack/stack.py`` as ``make stack`` runs it (a script beside its package), no servers.

The servers themselves are tested in ``test_stack.py``; these check the entry path and the
answers for a state folder with no stack in it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stack_support import ROOT

STACK_PY = ROOT / "infra" / "stack" / "stack.py"


def _stack_py(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXRFLOW_STACK_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ under infra/
    return subprocess.run(
        [sys.executable, str(STACK_PY), "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_status_of_no_stack_lists_three_services_not_running(tmp_path: Path) -> None:
    done = _stack_py(tmp_path, "status")
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["postgres", "s3", "mlflow"]
    assert all(line.endswith("not running") for line in lines)
    assert "127.0.0.1:15432" in lines[0]


def test_env_without_a_stack_is_one_error_line(tmp_path: Path) -> None:
    done = _stack_py(tmp_path, "env")
    assert done.returncode == 1
    assert done.stderr == f"stack: error: no stack in {tmp_path}: run `make stack` first\n"


def test_down_without_a_stack_stops_nothing(tmp_path: Path) -> None:
    done = _stack_py(tmp_path, "down")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "stack down: stopped nothing (not running)\n"
