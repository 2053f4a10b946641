"""dvc.yaml runs for real: `dvc repro` on the smoke profile, then nothing reruns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert res.returncode == 0, f"{cmd}: {res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


def test_dvc_repro_smoke(tmp_path: Path) -> None:
    work = tmp_path / "proj"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, work / name)
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
        "CXRFLOW_PROFILE": "smoke",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}",
        "CXRFLOW_ARTIFACT_ROOT": (tmp_path / "mlartifacts").as_uri(),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@localhost",
    }
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], work, env)
    _run([*dvc, "init", "-q"], work, env)
    _run([*dvc, "repro"], work, env)
    metrics = json.loads((work / "reports/evaluate/metrics.json").read_text())
    assert sorted(metrics) == ["model_0", "model_1", "model_2", "model_3"]
    registered = json.loads((work / "reports/register/registered.json").read_text())
    assert registered["alias"] == "champion"
    assert (work / "dvc.lock").is_file()
    again = _run([*dvc, "repro"], work, env)
    assert "Running stage" not in again.stdout
    status = _run([*dvc, "status"], work, env)
    assert "up to date" in status.stdout
