"""Benchmark: wall time of ``make run`` against the compute inside its steps (issue 9).

Runs ``cxrflow --profile demo pipeline run --local`` (what ``make run`` runs) in a temporary
folder with its own MLflow store, timing the whole command. Every step reports where its time
went (:class:`cxrflow.steps.StepTimes`, gathered by the local runner into
``runs/<run>/steps.json``): compute (training; evaluation and the shortcut audit), data work
(phantom generation, ingest, validation, split, image decoding), model I/O (saving, loading),
MLflow calls, imports, and the process around the step (start-up before the step's entry,
kfp's dispatch before it and the teardown after it). What is not in a step is the CLI and the
runner (loading params, building the pipeline, kfp.local between steps).

overhead share = (wall - compute) / wall; target <= 15 %. Both figures come from the same run.

Usage: ``python bench/overhead.py [--profile demo] [--set KEY=VALUE ...] [--keep]``.
Writes ``bench/results/overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from report import (  # bench/report.py (scripts run with bench/ on the path)
    machine_info,
    write_result,
)

ROOT = Path(__file__).resolve().parents[1]
MAX_OVERHEAD_SHARE = 0.15
TRAIN, EVALUATE, AUDIT = "train", "evaluate", "audit"
PROCESS = "process_start_imports"


def run_pipeline(workdir: Path, profile: str, overrides: Sequence[str]) -> tuple[float, str]:
    """Run the local pipeline as ``make run`` does, in ``workdir``; (wall seconds, output)."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlruns.db'}",
        "CXRFLOW_ARTIFACT_ROOT": (workdir / "mlartifacts").as_uri(),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "PYTHONUNBUFFERED": "1",
    }
    cli = Path(sys.executable).with_name("cxrflow")
    cmd = [str(cli), "--params", str(ROOT / "params.yaml"), "--profile", profile]
    for o in overrides:
        cmd += ["--set", o]
    cmd += ["pipeline", "run", "--local", "--pipeline-root", str(workdir / "runs" / "kfp")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    return wall, proc.stdout


def read_steps(workdir: Path) -> dict[str, Any]:
    """The run's ``steps.json`` (see :mod:`pipelines.local`)."""
    hits = sorted((workdir / "runs").glob("*/steps.json"))
    if not hits:
        raise SystemExit(f"no runs/*/steps.json under {workdir}: is pipelines.local current?")
    return dict(json.loads(hits[-1].read_text()))


def _kind(step: str) -> str:
    if step.startswith("model_"):
        return TRAIN
    return step


def breakdown(wall: float, steps_doc: Mapping[str, Any]) -> dict[str, Any]:
    """Compute, overhead share and where the overhead goes, from one run's ``steps.json``."""
    compute = {TRAIN: 0.0, EVALUATE: 0.0, AUDIT: 0.0}
    parts = {PROCESS: 0.0, "data": 0.0, "model_io": 0.0, "tracking": 0.0, "other_in_steps": 0.0}
    per_step = []
    steps_total = 0.0
    for s in steps_doc["steps"]:
        t = s.get("timing") or {}
        ph = dict(t.get("phases") or {})
        seconds = float(s["seconds"])
        steps_total += seconds
        row: dict[str, Any] = {"step": s["name"], "status": s["status"], "seconds": seconds}
        if not t:  # a step that wrote no timing line: all of it counts as overhead
            parts["other_in_steps"] += seconds
            per_step.append(row)
            continue
        started, ended = float(s["started_at"]), float(s["started_at"]) + seconds
        dispatch = max(0.0, float(t["process_start"]) - started)
        teardown = max(0.0, ended - float(t["end"]))
        process = dispatch + ph.pop("startup", 0.0) + ph.pop("imports", 0.0) + teardown
        kind = _kind(s["name"])
        c = ph.pop("compute", 0.0)
        if kind in compute:
            compute[kind] += c
        else:  # no other step should compute; if one does, it is not training or evaluation
            ph["other"] = ph.get("other", 0.0) + c
        parts[PROCESS] += process
        for name in ("data", "model_io", "tracking"):
            parts[name] += ph.pop(name, 0.0)
        parts["other_in_steps"] += sum(ph.values())
        row.update(
            warm=bool(t.get("warm")),  # forked from the runner's warm server (pipelines/warm.py)
            compute=c,
            process_start_imports=process,
            dispatch=dispatch,
            teardown=teardown,
            phases=t.get("phases"),
        )
        per_step.append(row)
    compute_total = sum(compute.values())
    parts["cli_and_runner"] = max(0.0, wall - steps_total)
    overhead = wall - compute_total
    return {
        "wall_s": wall,
        "compute_s": {**compute, "total": compute_total},
        "overhead_s": overhead,
        "overhead_share": overhead / wall if wall > 0 else None,
        "overhead_breakdown_s": parts,
        "overhead_breakdown_share_of_wall": {k: v / wall for k, v in parts.items()},
        "infrastructure_share": (
            (wall - compute_total - parts["data"]) / wall if wall > 0 else None
        ),
        "warm_steps": sum(1 for r in per_step if r.get("warm")),
        "steps": per_step,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo", help="params profile (make run: demo)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--quick", action="store_true", help="the smoke profile (compute is tiny)")
    ap.add_argument("--keep", action="store_true", help="keep the run's folder")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "overhead.json"))
    args = ap.parse_args()
    profile = "smoke" if args.quick else args.profile
    work = Path(tempfile.mkdtemp(prefix="cxrflow-overhead-"))
    try:
        wall, output = run_pipeline(work, profile, args.overrides)
        result = breakdown(wall, read_steps(work))
    finally:
        if args.keep:
            print(f"run kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    share = result["overhead_share"]
    verdict = {
        "overhead_share": share,
        "overhead_ok": share is not None and share <= MAX_OVERHEAD_SHARE,
        "max_overhead_share": MAX_OVERHEAD_SHARE,
        "infrastructure_share": result["infrastructure_share"],
    }
    doc = {
        "benchmark": "overhead",
        "profile": profile,
        "overrides": args.overrides,
        "quick": bool(args.quick),
        "machine": machine_info(),
        **result,
        "verdict": verdict,
        "console": output.splitlines()[-40:],
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    parts = result["overhead_breakdown_s"]
    print(
        f"wall {wall:.0f} s, compute {result['compute_s']['total']:.0f} s "
        f"(train {result['compute_s'][TRAIN]:.0f}, evaluate {result['compute_s'][EVALUATE]:.0f}, "
        f"audit {result['compute_s'][AUDIT]:.0f}); overhead {100 * share:.1f} %: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in parts.items()),
        file=sys.stderr,
    )
    write_result(args.out, doc)
    return 0 if verdict["overhead_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
