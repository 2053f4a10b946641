"""What a finished cxrflow run left behind: its ``runs/<run>/steps.json`` and, in ``mlruns.db``,
its pipeline parent run and the model it registered.

Read only: the tracking store is opened read-only with :mod:`sqlite3` (no MLflow client, no
server), so that the pictures can be drawn from any copy of a run folder.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from cxrflow import names


@dataclass(frozen=True)
class StepRun:
    """One step as the local runner recorded it in ``steps.json``."""

    status: str
    seconds: float
    offset: float  # seconds from the run's start to the step's start
    phases: dict[str, float] = field(default_factory=dict)  # the step's own timing report


@dataclass(frozen=True)
class LocalRun:
    """A finished local run: its name, wall time and steps (empty without ``steps.json``)."""

    name: str
    started_at: float
    wall_s: float
    steps: dict[str, StepRun] = field(default_factory=dict)


def latest_run(run_dir: Path) -> LocalRun | None:
    """The newest ``runs/<run>/steps.json`` under ``run_dir``, read; None if there is none."""
    found = sorted(run_dir.glob("runs/*/steps.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        return None
    doc = json.loads(found[-1].read_text(encoding="utf-8"))
    start = float(doc["started_at"])
    steps = {
        str(s["name"]): StepRun(
            str(s["status"]),
            float(s["seconds"]),
            float(s["started_at"] or start) - start,
            {k: float(v) for k, v in (s.get("timing") or {}).get("phases", {}).items()},
        )
        for s in doc["steps"]
    }
    return LocalRun(found[-1].parent.name, start, float(doc["wall_s"]), steps)


@dataclass(frozen=True)
class Tracked:
    """Where the run's pipeline parent run sits in the tracking store."""

    experiment_id: str
    run_id: str
    run_name: str
    profile: str


def tracked_run(db: Path, started_at: float | None) -> Tracked:
    """The pipeline parent run that started nearest ``started_at`` (else the newest one)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        rows = con.execute(
            "SELECT r.run_uuid, r.experiment_id, r.name, r.start_time, "
            "(SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ?) "
            "FROM runs r JOIN tags k ON k.run_uuid = r.run_uuid "
            "WHERE k.key = ? AND k.value = 'pipeline' AND r.lifecycle_stage = 'active'",
            (names.TAG_PROFILE, names.TAG_KIND),
        ).fetchall()
    if not rows:
        raise SystemExit(f"no cxrflow pipeline run in {db}: run `make run` first")
    target = (started_at or 0.0) * 1000
    best = (
        min(rows, key=lambda r: abs(r[3] - target)) if started_at else max(rows, key=lambda r: r[3])
    )
    return Tracked(str(best[1]), str(best[0]), str(best[2]), str(best[4] or ""))


def registered_model(db: Path, parent_run_id: str) -> str | None:
    """The registered model a model run of this pipeline run became (the shortest name: the
    Keras model, not its ``-int8`` export); None if nothing was registered."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        row = con.execute(
            "SELECT DISTINCT v.name FROM model_versions v JOIN tags t ON t.run_uuid = v.run_id "
            "WHERE t.key = 'mlflow.parentRunId' AND t.value = ? ORDER BY length(v.name) LIMIT 1",
            (parent_run_id,),
        ).fetchone()
    return str(row[0]) if row else None
