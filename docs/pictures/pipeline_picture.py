"""``pipeline.png``: the pipeline compiled now for the run's profile, each step coloured by its
status in the run and labelled with its duration, over a timeline of where the run's time went.

The DAG comes from :mod:`pipeline_dag` (the compiled PipelineSpec), the statuses and timings
from :mod:`finished_run` (``runs/<run>/steps.json``). Drawn with matplotlib (Agg, no display).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finished_run import LocalRun, StepRun, latest_run, tracked_run
from pipeline_dag import (
    Dag,
    compile_spec,
    layout,
    open_groups,
    read_dag,
    step_key,
    transitive_reduction,
)

STATUS_COLOURS = {"ok": "#2e7d32", "FAILED": "#c62828", "stopped": "#ef6c00", "running": "#1565c0"}
NOT_RUN = "#9e9e9e"

PHASE_COLOURS = {
    "startup": "#9e9e9e",
    "imports": "#bdbdbd",
    "data": "#6a1b9a",
    "compute": "#1565c0",
    "model_io": "#00838f",
    "tracking": "#ef6c00",
    "other": "#e0e0e0",
}
"""The phases a step's timing report names (cxrflow.steps.timing), in the order drawn."""


def duration(seconds: float) -> str:
    """``43.4s`` or ``4m03s``, as the run's console prints it."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def draw_pipeline(dag: Dag, run: LocalRun | None, profile: str, out: Path) -> None:
    """``pipeline.png``: the DAG with each step's status and duration, over the run's timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    members = {m for group in dag.groups.values() for m in group}
    tasks = {t: d for t, d in dag.deps.items() if t not in dag.groups}
    # a dependency on a group is one on each of its members, for the layout
    opened = {t: open_groups(d, dag.groups) for t, d in tasks.items()}
    reduced = transitive_reduction(opened)
    where = layout(reduced)
    steps = run.steps if run else {}
    timeline = bool(steps)
    fig = plt.figure(figsize=(14, 8.6 if timeline else 5.2), dpi=100)
    graph = fig.add_axes((0.01, 0.40 if timeline else 0.08, 0.98, 0.50 if timeline else 0.80))
    graph.set_axis_off()
    columns = max(x for x, _ in where.values()) + 1
    rows = [y for _, y in where.values()]
    graph.set_xlim(-0.6, columns - 0.4)
    graph.set_ylim(max(rows) + 0.9, min(rows) - 0.9)
    for name, members_of in dag.groups.items():
        _draw_group(graph, [where[m] for m in members_of], dag.group_labels[name])
    for task, deps in reduced.items():
        for dep in sorted(deps):
            if dep in dag.groups or (task not in members and dep in members):
                continue
            _arrow(graph, where[dep], where[task])
    for task, deps in tasks.items():
        for group in deps & set(dag.groups):
            box = _group_box([where[m] for m in dag.groups[group]])
            x, y = where[task]
            graph.annotate(
                "", (x - 0.42, y), (box[1], y), arrowprops={"arrowstyle": "-|>", "color": "#555"}
            )
            graph.text(
                x,
                y + 0.34,
                _trigger_words(dag.trigger.get(task, "")),
                ha="center",
                va="top",
                fontsize=8,
                color="#555",
            )
    for task, (x, y) in where.items():
        _node(graph, x, y, step_key(task), steps.get(step_key(task)))
    title = f"{dag.title} pipeline, compiled for profile {profile or '(params.yaml)'}"
    if run:
        ok = sum(s.status == "ok" for s in run.steps.values())
        title += f"  ·  run {run.name}: {ok} of {len(run.steps)} steps ok, {duration(run.wall_s)}"
    fig.text(0.01, 0.975, title, fontsize=13, weight="bold", va="top")
    caption = (
        f"Read from the compiled PipelineSpec ({len(tasks)} tasks). Arrows: direct dependencies; "
        f"not drawn, as implied by a longer path: {_hidden_words(opened, reduced, members)}."
    )
    fig.text(
        0.01,
        0.94 if timeline else 0.91,
        textwrap.fill(caption, 200),
        fontsize=9,
        color="#444",
        va="top",
        linespacing=1.4,
    )
    if timeline and run:
        _draw_timeline(fig.add_axes((0.07, 0.06, 0.90, 0.29)), run)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _hidden_words(
    opened: Mapping[str, set[str]], reduced: Mapping[str, set[str]], members: set[str]
) -> str:
    """The direct dependencies the picture leaves out, in words (from the DAG, not a list)."""
    inside = {t: d & members for t, d in opened.items() if t in members}
    hidden = {t: inside[t] - reduced[t] for t in inside}
    # a task that feeds every task after it directly: one phrase for all its edges
    hiding = {s for d in hidden.values() for s in d}
    everywhere = sorted(
        (s for s in hiding if all(s in inside[t] for t in _later(s, inside))),
        key=lambda s: len(_later(s, inside)),
        reverse=True,
    )
    phrases = (
        [f"{' and '.join(map(step_key, everywhere))} feed every later step"] if everywhere else []
    )
    for task in sorted(hidden, key=lambda t: (len(_later(t, inside)), t), reverse=True):
        rest = sorted(step_key(s) for s in hidden[task] if s not in everywhere)
        if rest:
            phrases.append(f"{step_key(task)} reads {', '.join(rest)}")
    return "; ".join(phrases) or "none"


def _later(task: str, deps: Mapping[str, set[str]]) -> set[str]:
    """Every task that depends on ``task``, directly or not."""
    found = {t for t, d in deps.items() if task in d}
    for t in list(found):
        found |= _later(t, deps)
    return found


def _trigger_words(strategy: str) -> str:
    """What a KFP trigger strategy means, in words."""
    return {
        "ALL_UPSTREAM_TASKS_COMPLETED": "runs whatever the\nsteps' outcome",
        "ALL_UPSTREAM_TASKS_SUCCEEDED": "runs if all\nsucceeded",
    }.get(strategy, strategy.lower())


def _group_box(points: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """x0, x1, y0, y1 of the dashed box around a group's tasks."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs) - 0.5, max(xs) + 0.5, min(ys) - 0.6, max(ys) + 0.6


def _draw_group(ax: Any, points: list[tuple[float, float]], label: str) -> None:
    from matplotlib.patches import FancyBboxPatch

    x0, x1, y0, y1 = _group_box(points)
    ax.add_patch(
        FancyBboxPatch(
            (x0, y0),
            x1 - x0,
            y1 - y0,
            boxstyle="round,pad=0,rounding_size=0.15",
            fill=False,
            linestyle="--",
            edgecolor="#888",
            linewidth=1,
        )
    )
    ax.text(x0 + 0.08, y0 + 0.06, f"exit handler '{label}'", fontsize=8, color="#666", va="top")


def _arrow(ax: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    ax.annotate(
        "",
        (end[0] - 0.42, end[1]),
        (start[0] + 0.42, start[1]),
        arrowprops={
            "arrowstyle": "-|>",
            "color": "#555",
            "shrinkA": 0,
            "shrinkB": 0,
            "linewidth": 1.1,
        },
    )


def _node(ax: Any, x: float, y: float, key: str, step: StepRun | None) -> None:
    from matplotlib.patches import FancyBboxPatch

    colour = STATUS_COLOURS.get(step.status, NOT_RUN) if step else NOT_RUN
    ax.add_patch(
        FancyBboxPatch(
            (x - 0.42, y - 0.28),
            0.84,
            0.56,
            boxstyle="round,pad=0,rounding_size=0.08",
            facecolor=colour,
            edgecolor="none",
            alpha=0.92,
        )
    )
    ax.text(x, y - 0.08, key, ha="center", va="center", fontsize=11, color="white", weight="bold")
    below = f"{step.status} · {duration(step.seconds)}" if step else "not run"
    ax.text(x, y + 0.14, below, ha="center", va="center", fontsize=9, color="white")


def _draw_timeline(ax: Any, run: LocalRun) -> None:
    """One bar per step from its start, split by where its time went (phases not in order)."""
    order = sorted(run.steps, key=lambda k: run.steps[k].offset)
    seen: set[str] = set()
    for i, key in enumerate(order):
        step = run.steps[key]
        ax.barh(i, step.seconds, left=step.offset, color="#f5f5f5", edgecolor="#bbb", height=0.7)
        left = step.offset
        for phase, colour in PHASE_COLOURS.items():
            seconds = step.phases.get(phase, 0.0)
            ax.barh(
                i,
                seconds,
                left=left,
                color=colour,
                height=0.7,
                label=phase.replace("_", " ") if phase not in seen else None,
            )
            seen.add(phase)
            left += seconds
        ax.text(
            step.offset + step.seconds + 3,
            i,
            duration(step.seconds),
            va="center",
            fontsize=8,
            color="#333",
        )
    ax.set_yticks(range(len(order)), order, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, run.wall_s * 1.06)
    ax.set_xlabel("seconds since the run started", fontsize=9)
    ax.set_title(
        f"the run's {duration(run.wall_s)} (runs/{run.name}/steps.json)", fontsize=10, loc="left"
    )
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(
        unique.values(),
        unique.keys(),
        fontsize=8,
        ncols=len(unique),
        frameon=False,
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        borderaxespad=0.2,
        title="where each step's time went (its own report; light grey: outside it)",
        title_fontsize=8,
    )


def pipeline_picture(run_dir: Path, out: Path, tmp: Path) -> Path:
    """Compile the pipeline with the run's profile, read its DAG and draw ``pipeline.png``."""
    run = latest_run(run_dir)
    db = run_dir / "mlruns.db"
    profile = tracked_run(db, run.started_at if run else None).profile if db.exists() else ""
    dag = read_dag(compile_spec(run_dir, profile, tmp / "pipeline.yaml"))
    target = out / "pipeline.png"
    draw_pipeline(dag, run, profile, target)
    return target
