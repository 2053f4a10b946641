"""Run the pipeline on this machine through ``kfp.local`` (the embedded default)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from cxrflow.config import Params
from pipelines.cxrflow_pipeline import build_pipeline

log = logging.getLogger(__name__)


def run_local(params: Params, pipeline_root: str | Path, data_version: str = "") -> dict[str, Any]:
    """Run the whole pipeline with ``SubprocessRunner(use_venv=False)``.

    Steps run as subprocesses of this interpreter (so in this venv), in dependency order;
    GPU, node selector and toleration settings are ignored locally. Returns the run directory
    and the champion.
    """
    from kfp import local

    from cxrflow.tracking import tracking_uri

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    # subprocesses inherit the environment: pin the tracking URI to an absolute location
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()
    before = {p.name for p in root.iterdir()}
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )
    pipeline = build_pipeline(params)
    champion = pipeline(data_version=data_version)
    new = sorted(p for p in root.iterdir() if p.name not in before and p.is_dir())
    run_dir = new[-1] if new else root
    champion_value = getattr(champion, "output", champion)
    return {"run_dir": str(run_dir), "champion": str(champion_value)}


def find_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The evaluate step's ``metrics.json`` from a local run directory."""
    hits = sorted(Path(run_dir).glob("**/evaluation/metrics.json"))
    if not hits:
        raise FileNotFoundError(f"no evaluation/metrics.json under {run_dir}")
    return json.loads(hits[-1].read_text())
