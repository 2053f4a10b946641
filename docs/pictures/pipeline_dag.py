"""The pipeline's DAG as KFP compiles it: ``cxrflow pipeline compile`` with a run's profile,
read back from the PipelineSpec YAML (nothing here names a step), and laid out in columns.

Pure but for :func:`compile_spec` (a subprocess): :func:`read_dag`,
:func:`transitive_reduction` and :func:`layout` take a spec file or a mapping of dependencies.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Dag:
    """The compiled pipeline's tasks: dependencies, and the groups (exit handlers) they sit in."""

    deps: dict[str, set[str]]
    groups: dict[str, list[str]]  # group task -> its member tasks
    group_labels: dict[str, str]
    trigger: dict[str, str]  # task -> trigger strategy, where it has one
    title: str


def compile_spec(run_dir: Path, profile: str, out: Path) -> Path:
    """``cxrflow pipeline compile`` of ``run_dir``'s params with the run's profile."""
    cxrflow = Path(sys.executable).with_name("cxrflow")
    cmd = [str(cxrflow), "--params", str(run_dir / "params.yaml")]
    cmd += ["--profile", profile] if profile else []
    cmd += ["pipeline", "compile", "--output", str(out)]
    subprocess.run(cmd, cwd=run_dir, check=True, capture_output=True, text=True)
    return out


def read_dag(spec_path: Path) -> Dag:
    """The DAG of a compiled PipelineSpec, with its sub-DAGs (exit handlers) opened up."""
    spec = next(yaml.safe_load_all(spec_path.read_text(encoding="utf-8")))
    components = spec["components"]
    deps: dict[str, set[str]] = {}
    groups: dict[str, list[str]] = {}
    labels: dict[str, str] = {}
    trigger: dict[str, str] = {}

    def walk(tasks: Mapping[str, Any]) -> None:
        for name, task in tasks.items():
            sub = components.get(task["componentRef"]["name"], {}).get("dag")
            if sub is not None:
                groups[name] = list(sub["tasks"])
                labels[name] = task.get("taskInfo", {}).get("name", name)
                walk(sub["tasks"])
            deps.setdefault(name, set()).update(task.get("dependentTasks", []))
            strategy = task.get("triggerPolicy", {}).get("strategy")
            if strategy:
                trigger[name] = strategy

    walk(spec["root"]["dag"]["tasks"])
    info = spec.get("pipelineInfo", {})
    return Dag(deps, groups, labels, trigger, str(info.get("name", "pipeline")))


def open_groups(deps: set[str], groups: Mapping[str, list[str]]) -> set[str]:
    """``deps`` with each group replaced by its members (a dependency on a group is one on
    each of its tasks)."""
    opened: set[str] = set()
    for dep in deps:
        opened |= set(groups.get(dep, [dep]))
    return opened


def transitive_reduction(deps: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """``deps`` less every edge implied by a longer path (the DAG stays readable)."""

    def ancestors(task: str, seen: set[str]) -> set[str]:
        for dep in deps.get(task, set()):
            if dep not in seen:
                seen.add(dep)
                ancestors(dep, seen)
        return seen

    reduced = {}
    for task, direct in deps.items():
        implied = set().union(*(ancestors(d, set()) for d in direct)) if direct else set()
        reduced[task] = direct - implied
    return reduced


def layout(edges: Mapping[str, set[str]]) -> dict[str, tuple[float, float]]:
    """Column (longest path from a source) and row (mean of the predecessors' rows) per task."""
    column: dict[str, int] = {}

    def depth(task: str) -> int:
        if task not in column:
            column[task] = 1 + max((depth(d) for d in edges[task]), default=-1)
        return column[task]

    for task in edges:
        depth(task)
    row: dict[str, float] = {}
    for col in range(max(column.values()) + 1):
        tasks = sorted(t for t in column if column[t] == col)
        wanted = {t: _mean([row[d] for d in edges[t]]) for t in tasks}
        order = sorted(tasks, key=lambda t: (wanted[t], t))
        centre = _mean([wanted[t] for t in order])
        for i, task in enumerate(order):
            row[task] = centre + i - (len(order) - 1) / 2
    return {t: (float(column[t]), row[t]) for t in column}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def step_key(task: str) -> str:
    """The cxrflow step key of a KFP task name (``model-0`` -> ``model_0``)."""
    return task.replace("-", "_")
