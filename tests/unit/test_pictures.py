"""docs/pictures: the pipeline picture's DAG reader and drawing (no browser, server or network).

``make_pictures.py`` draws ``pipeline.png`` from the compiled PipelineSpec and a run's
``runs/<run>/steps.json``. Here the smoke profile is compiled with the project's own
``compile_pipeline``; the reader must find every step of the registry with the dependencies
the registry implies, the picture must drop exactly the edges a longer path implies, and a
synthetic ``steps.json`` must draw a 1400-pixel PNG with each step in its status's colour.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from cxrflow.config import Params, load_params
from cxrflow.steps.registry import STEPS, pipeline_steps
from cxrflow.steps.spec import BASE_MODEL, CANDIDATES, MODELS
from pipelines.compile import compile_pipeline

ROOT = Path(__file__).resolve().parents[2]
PICTURES = ROOT / "docs" / "pictures"
EXIT_STEPS = {s.name for s in STEPS if s.exit_handler}


@pytest.fixture(scope="module")
def pictures() -> Iterator[dict[str, ModuleType]]:
    """The picture modules, imported as ``make_pictures.py`` imports them (its folder on the
    path: Python puts it there when the script runs as a file)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(PICTURES))
        yield {
            name: importlib.import_module(name)
            for name in ("finished_run", "pipeline_dag", "pipeline_picture", "make_pictures")
        }


@pytest.fixture(scope="module")
def compiled(
    pictures: Mapping[str, ModuleType], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Params, Any]:
    """The smoke profile's params and the DAG the picture reads from its compiled spec."""
    params = load_params(ROOT / "params.yaml", "smoke")
    spec = compile_pipeline(params, tmp_path_factory.mktemp("spec") / "pipeline.yaml")
    return params, pictures["pipeline_dag"].read_dag(spec)


def _registry_deps(params: Params) -> dict[str, set[str]]:
    """Each task's direct dependencies as the step registry describes them: the producer of
    each input, the models behind a models input, the model it starts from, ``after``."""
    producer: dict[str, list[str]] = {}
    deps: dict[str, set[str]] = {}
    for spec in STEPS:
        if spec.exit_handler:
            continue
        for task in params.model_keys if spec.per_model else (spec.name,):
            wanted = set(spec.after)
            for name in spec.inputs:
                if name == MODELS:
                    wanted |= set(params.model_keys)
                elif name == CANDIDATES:
                    wanted |= {k for k in params.register.candidates if k in params.models}
                elif name == BASE_MODEL:
                    base = params.models[task].base_model_key
                    wanted |= {base} if base else set()
                else:
                    wanted |= set(producer[name][-1:])
            deps[task] = wanted
        for port in spec.outputs:
            producer.setdefault(port.name, []).append(spec.name)
    return deps


def _closure(deps: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """Every task's ancestors, directly or not."""

    def up(task: str) -> set[str]:
        found = set(deps.get(task, set()))
        for dep in deps.get(task, set()):
            found |= up(dep)
        return found

    return {task: up(task) for task in deps}


def test_reader_finds_every_step_in_one_exit_handler(compiled, pictures) -> None:
    params, dag = compiled
    key = pictures["pipeline_dag"].step_key
    steps = set(pipeline_steps(params))
    assert {key(t) for t in dag.deps if t not in dag.groups} == steps | EXIT_STEPS
    assert len(dag.groups) == 1
    group, members = next(iter(dag.groups.items()))
    assert {key(m) for m in members} == steps
    for task in EXIT_STEPS:  # the exit handler waits for the group whatever its outcome
        assert dag.deps[task] == {group}
        assert dag.trigger[task] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert dag.title == "cxrflow"


def test_reader_gets_the_dependencies_the_registry_implies(compiled, pictures) -> None:
    params, dag = compiled
    key = pictures["pipeline_dag"].step_key
    read = {key(t): {key(d) for d in deps} for t, deps in dag.deps.items() if t not in dag.groups}
    expected = _registry_deps(params)
    assert {t: d for t, d in read.items() if t not in EXIT_STEPS} == expected
    assert "model_0" in read["model_2"] and "model_0" not in read["model_1"]  # a transfer


def test_reduction_drops_only_edges_a_longer_path_implies(compiled, pictures) -> None:
    _, dag = compiled
    pd = pictures["pipeline_dag"]
    opened = {t: pd.open_groups(d, dag.groups) for t, d in dag.deps.items() if t not in dag.groups}
    reduced = pd.transitive_reduction(opened)
    assert _closure(reduced) == _closure(opened)  # the same order of steps
    for task, deps in reduced.items():
        assert deps <= opened[task]
        for dep in deps:  # no edge kept that another of the task's dependencies implies
            assert all(dep not in _closure(opened)[other] for other in deps - {dep}), (task, dep)
    assert "ingest" in opened["split"] and reduced["split"] == {"validate"}
    assert reduced["model-2"] == {"model-0"}
    members = set(next(iter(dag.groups.values())))
    last = {m for m in members if not any(m in opened[t] for t in members)}
    assert all(reduced[t] == last for t in EXIT_STEPS)  # finalize: after the last steps only
    assert len(pd.layout(reduced)) == len(reduced)


def test_reduction_of_a_hand_written_dag(pictures) -> None:
    deps = {"a": set(), "b": {"a"}, "c": {"a", "b"}, "d": {"a", "b", "c"}, "e": {"a"}}
    reduced = pictures["pipeline_dag"].transitive_reduction(deps)
    assert reduced == {"a": set(), "b": {"a"}, "c": {"b"}, "d": {"c"}, "e": {"a"}}
    where = pictures["pipeline_dag"].layout(reduced)
    assert [where[t][0] for t in "abcde"] == [0.0, 1.0, 2.0, 3.0, 1.0]


def _steps_json(run_dir: Path, statuses: Mapping[str, str]) -> Path:
    """A ``runs/<run>/steps.json`` as the local runner writes it (a step not run: no start,
    no timing report)."""
    start, at, steps = 1_800_000_000.0, 1_800_000_002.0, []
    for name, status in statuses.items():
        seconds = 0.0 if status == "not run" else 30.0
        steps.append(
            {
                "name": name,
                "status": status,
                "seconds": seconds,
                "summary": "",
                "error": "boom" if status == "FAILED" else "",
                "started_at": None if status == "not run" else at,
                "timing": None
                if status == "not run"
                else {"phases": {"startup": 1.0, "data": 20.0, "tracking": 5.0}},
            }
        )
        at += seconds
    doc = {"started_at": start, "ended_at": at, "wall_s": at - start, "steps": steps}
    path = run_dir / "runs" / "cxrflow-test-run" / "steps.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _has_colour(image: Image.Image, hex_colour: str, alpha: float = 0.92) -> bool:
    """Whether a node's fill (``hex_colour`` at ``alpha`` over white) shows in ``image``."""
    rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    want = tuple(round(alpha * c + (1 - alpha) * 255) for c in rgb)
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    return any(all(abs(a - b) <= 3 for a, b in zip(c, want, strict=True)) for _, c in colours)


def test_draws_a_png_from_a_synthetic_steps_json(compiled, pictures, tmp_path: Path) -> None:
    params, dag = compiled
    run_module, picture = pictures["finished_run"], pictures["pipeline_picture"]
    names = [*pipeline_steps(params), *EXIT_STEPS]
    statuses = dict.fromkeys(names, "ok") | {"register": "FAILED", "export": "not run"}
    _steps_json(tmp_path, statuses)
    run = run_module.latest_run(tmp_path)
    assert run is not None and run.name == "cxrflow-test-run"
    assert run.steps["ingest"].offset == 2.0 and run.steps["export"].offset == 0.0
    assert run.steps["ingest"].phases["data"] == 20.0 and run.steps["export"].phases == {}

    out = tmp_path / "pipeline.png"
    picture.draw_pipeline(dag, run, "smoke", out)
    with Image.open(out) as image:
        assert (image.format, image.size) == ("PNG", (1400, 860))
        for status in ("ok", "FAILED"):
            assert _has_colour(image, picture.STATUS_COLOURS[status]), status
        assert not _has_colour(image, picture.STATUS_COLOURS["running"])

    bare = tmp_path / "bare.png"  # no steps.json: the DAG alone, every step grey
    picture.draw_pipeline(dag, None, "", bare)
    with Image.open(bare) as image:
        assert image.size == (1400, 520)
        assert _has_colour(image, picture.NOT_RUN)
        assert not _has_colour(image, picture.STATUS_COLOURS["ok"])


def test_duration_reads_like_the_console(pictures) -> None:
    duration = pictures["pipeline_picture"].duration
    assert [duration(s) for s in (43.44, 59.94, 243.0)] == ["43.4s", "59.9s", "4m03s"]


def test_make_pictures_refuses_a_folder_without_a_run(pictures, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no mlruns\.db"):
        pictures["make_pictures"].main(["--run-dir", str(tmp_path), "--out", str(tmp_path)])
