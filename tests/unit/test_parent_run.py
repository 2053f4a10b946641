"""The MLflow parent run of a pipeline run: found or created race-safely by parallel steps, and
recording data steps reused from an earlier run (KFP caching), against a local sqlite store."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from cxrflow import names, steps, tracking
from cxrflow.config import Params, flatten_params, load_params
from cxrflow.steps import lineage
from cxrflow.steps.registry import data_steps

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "cxrflow"


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An empty sqlite tracking store; returns an MlflowClient on it."""
    from mlflow.tracking import MlflowClient

    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CXRFLOW_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())
    monkeypatch.setattr(tracking.runs, "PARENT_SETTLE_SECONDS", 0.0)  # no parallel steps here
    mlflow.set_tracking_uri(uri)
    tracking.configure(EXPERIMENT)
    return MlflowClient()


def _parents(client: Any, pipeline_run_id: str, deleted: bool = False) -> list[Any]:
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name(EXPERIMENT)
    flt = f"tags.`{names.TAG_PIPELINE_RUN}` = '{pipeline_run_id}'"
    view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
    return list(client.search_runs([exp.experiment_id], flt, run_view_type=view))


def _create_parent(client: Any, pipeline_run_id: str, start_time: int | None = None) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    run = client.create_run(
        exp.experiment_id,
        start_time=start_time,
        tags={names.TAG_PIPELINE_RUN: pipeline_run_id, names.TAG_KIND: "pipeline"},
    )
    return str(run.info.run_id)


def test_parallel_steps_converge_on_one_parent(store: Any) -> None:
    """Model steps start together, each finds no parent and creates one: one survives."""
    n = 4
    barrier = threading.Barrier(n)
    got: list[str] = []
    errors: list[BaseException] = []

    def step() -> None:
        try:
            barrier.wait()
            got.append(
                tracking.get_or_create_parent_run(
                    EXPERIMENT,
                    "kfp-run-1",
                    {"cxrflow.profile": "smoke"},
                    {"a": "1"},
                    settle_seconds=0.5,
                )
            )
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=step) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(got) == n and len(set(got)) == 1
    (alive,) = _parents(store, "kfp-run-1")
    assert alive.info.run_id == got[0]
    assert alive.data.params == {"a": "1"}  # logged once, by the step whose parent won
    assert alive.data.tags["cxrflow.profile"] == "smoke"
    assert tracking.find_parent_run(EXPERIMENT, "kfp-run-1") == got[0]
    assert len(_parents(store, "kfp-run-1", deleted=True)) < n


def test_a_step_that_created_a_duplicate_adopts_the_older_parent_and_deletes_its_own(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = _create_parent(store, "kfp-run-2")
    # this step looked before `older` existed: it creates its own parent
    monkeypatch.setattr(tracking.runs, "find_parent_run", lambda *_: None)
    got = tracking.get_or_create_parent_run(EXPERIMENT, "kfp-run-2", {}, {}, settle_seconds=0)
    monkeypatch.undo()
    assert got == older
    assert [r.info.run_id for r in _parents(store, "kfp-run-2")] == [older]
    (deleted,) = _parents(store, "kfp-run-2", deleted=True)
    assert deleted.info.run_id != older


def test_the_oldest_parent_wins_ties_by_run_id(store: Any) -> None:
    """Every step must pick the same parent: start time, then run id."""
    a = _create_parent(store, "kfp-run-3", start_time=1_000)
    b = _create_parent(store, "kfp-run-3", start_time=1_000)
    c = _create_parent(store, "kfp-run-3", start_time=999)
    assert tracking.find_parent_run(EXPERIMENT, "kfp-run-3") == c
    store.delete_run(c)
    assert tracking.find_parent_run(EXPERIMENT, "kfp-run-3") == min(a, b)


# ------------------------------------------------------------------------- reused data steps


@pytest.fixture()
def ingested(store: Any, tmp_path: Path) -> tuple[Params, Path]:
    """Smoke phantom data ingested by pipeline run ``run-a`` (whose parent marks it done)."""
    params = load_params(ROOT / "params.yaml", "smoke")
    steps.run_ingest(params, tmp_path / "dataset", "run-a")
    return params, tmp_path / "dataset"


def _tags(pipeline_run_id: str) -> dict[str, str]:
    parent = tracking.find_parent_run(EXPERIMENT, pipeline_run_id)
    assert parent is not None
    return tracking.run_tags(parent)


def test_a_run_reusing_cached_data_records_where_it_came_from(
    store: Any, ingested: tuple[Params, Path]
) -> None:
    params, dataset = ingested
    prov = steps.read_provenance(dataset)
    assert prov.pipeline_run_id == "run-a"
    # run-b's data steps were cache hits: its model steps (in parallel) find the reuse
    first = lineage.parent_run(params, prov, "run-b", step="model_0", dataset_dir=dataset)
    again = lineage.parent_run(params, prov, "run-b", step="model_1", dataset_dir=dataset)
    assert first == again != tracking.find_parent_run(EXPERIMENT, "run-a")
    tags = _tags("run-b")
    assert tags[names.TAG_DATA_REUSED_FROM] == "run-a"
    assert {s: tags[names.TAG_STEP_DONE_PREFIX + s] for s in data_steps()} == dict.fromkeys(
        data_steps(), names.STEP_CACHED
    )
    assert tags[names.TAG_MANIFEST_HASH] == prov.manifest_hash
    assert tags[names.TAG_PIPELINE_RUN] == "run-b"
    run = store.get_run(first)
    (manifest,) = run.inputs.dataset_inputs  # logged once, whoever adopted first
    assert manifest.dataset.name == "manifest"
    assert prov.manifest_hash.startswith(manifest.dataset.digest)
    assert run.data.params == {k: v[:6000] for k, v in flatten_params(params).items()}
    # the run that made the data records no reuse
    assert names.TAG_DATA_REUSED_FROM not in _tags("run-a")
    assert _tags("run-a")[names.TAG_STEP_DONE_PREFIX + "ingest"] == "true"


def test_finalize_names_the_failed_step_not_a_reused_one(
    store: Any, ingested: tuple[Params, Path]
) -> None:
    params, dataset = ingested
    prov = steps.read_provenance(dataset)
    lineage.parent_run(params, prov, "run-b", step="model_0", dataset_dir=dataset)
    result = steps.run_finalize(params, "run-b", "FAILED", "model_0: node preempted")
    assert result["status"] == "FAILED"
    assert result["failed_step"] == "model_0"


def test_a_data_step_rerun_in_this_run_keeps_its_own_done_tag(
    store: Any, ingested: tuple[Params, Path]
) -> None:
    """ingest cached, validate executed in run-c (new params), split now runs: only ingest is
    marked as reused."""
    params, dataset = ingested
    prov = steps.read_provenance(dataset)
    parent = lineage.parent_run(params, prov, "run-c", step="validate", dataset_dir=dataset)
    lineage.mark_done(parent, "validate")
    assert lineage.parent_run(params, prov, "run-c", step="split", dataset_dir=dataset) == parent
    tags = _tags("run-c")
    assert tags[names.TAG_STEP_DONE_PREFIX + "ingest"] == names.STEP_CACHED
    assert tags[names.TAG_STEP_DONE_PREFIX + "validate"] == "true"
    assert names.TAG_STEP_DONE_PREFIX + "split" not in tags


def test_without_a_current_run_id_steps_log_to_the_run_that_made_the_data(
    store: Any, ingested: tuple[Params, Path]
) -> None:
    """The CLI and DVC give no run id after ingest: as before, provenance names the run."""
    params, dataset = ingested
    prov = steps.read_provenance(dataset)
    parent = lineage.parent_run(params, prov, step="validate", dataset_dir=dataset)
    assert parent == tracking.find_parent_run(EXPERIMENT, "run-a")
    assert names.TAG_DATA_REUSED_FROM not in _tags("run-a")


# ----------------------------------------------------------------- run ids and checkpoints


def test_the_runner_s_run_id_wins_over_the_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(steps.PIPELINE_RUN_ENV, raising=False)
    assert steps.current_pipeline_run("kfp-uuid") == "kfp-uuid"
    assert steps.current_pipeline_run() is None
    monkeypatch.setenv(steps.PIPELINE_RUN_ENV, "local-1")
    assert steps.current_pipeline_run("kfp-uuid") == "local-1"
    monkeypatch.setenv(steps.PIPELINE_RUN_ENV, " ")
    assert steps.current_pipeline_run("kfp-uuid") == "kfp-uuid"


def test_checkpoints_go_to_the_volume_where_it_is_mounted(tmp_path: Path) -> None:
    params = load_params(ROOT / "params.yaml", "smoke")
    out = tmp_path / "out"
    volume = tmp_path / "volume"
    volume.mkdir()
    assert steps.checkpoint_dir(params, "r1", "model_0", out, volume) == volume / "r1" / "model_0"
    # kfp.local mounts nothing: the output keeps them
    missing = tmp_path / "not-mounted"
    assert steps.checkpoint_dir(params, "r1", "model_0", out, missing) == out / "checkpoints"
    assert steps.checkpoint_dir(params, "r1", "model_0", out) == out / "checkpoints"
    explicit = load_params(
        ROOT / "params.yaml", "smoke", [f"train.checkpoint_root={tmp_path / 'mine'}"]
    )
    got = steps.checkpoint_dir(explicit, "r1", "model_0", out, volume)
    assert got == tmp_path / "mine" / "r1" / "model_0"
