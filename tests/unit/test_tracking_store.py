"""A new sqlite tracking store is created once, before any step: runners started together on
it do not race MLflow's schema creation (``table webhooks already exists``)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from cxrflow import tracking

PROCESSES = 4


def _ensure(uri: str, start: object, results: object) -> None:
    """In a child process: wait for the others, then create the store."""
    try:
        start.wait(30)  # type: ignore[attr-defined]
        created = tracking.ensure_store(uri)
        results.put(("ok", created))  # type: ignore[attr-defined]
    except BaseException as exc:  # reported to the test, which fails on it
        results.put(("error", f"{type(exc).__name__}: {exc}"))  # type: ignore[attr-defined]


def _tables(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_runners_started_together_create_the_store_once(tmp_path: Path) -> None:
    """Several processes create one new store at the same moment: all succeed, one creates it,
    and the schema is MLflow's whole, current one (MLflow itself finds nothing to create)."""
    db = tmp_path / "new" / "mlruns.db"
    uri = f"sqlite:///{db}"
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as runners are
    start, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_ensure, args=(uri, start, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(kind == "ok" for kind, _ in outcomes), outcomes
    assert sorted(created for _, created in outcomes) == [False] * (PROCESSES - 1) + [True]

    import mlflow.store.db.utils as db_utils
    from mlflow.store.db.base_sql_model import Base
    from mlflow.tracking import MlflowClient

    assert set(Base.metadata.tables) <= _tables(db)
    engine = db_utils.create_sqlalchemy_engine_with_retry(uri)
    db_utils._verify_schema(engine)  # raises when the schema is not MLflow's current one
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("cxrflow", artifact_location=(tmp_path / "a").as_uri())
    run = client.create_run(exp)
    client.set_terminated(run.info.run_id, "KILLED")
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert not list(db.parent.glob("*.lock"))  # the lock is the folder's: nothing left behind


def test_an_existing_store_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store with MLflow's schema: no MLflow import, nothing created (the quick path)."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert tracking.ensure_store(uri) is True
    import mlflow.tracking

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("opened MLflow for an existing store")

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", refuse)
    assert tracking.ensure_store(uri) is False


def test_a_tracking_server_is_not_touched() -> None:
    assert tracking.ensure_store("http://127.0.0.1:9/") is False


def test_finalize_ends_a_stopped_run_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's interrupted path: finalize with ``KILLED`` names the stopped step and ends
    the parent and the step's still-running nested run ``KILLED``."""
    from mlflow.tracking import MlflowClient

    import mlflow
    from cxrflow import names, steps
    from cxrflow.config import flatten_params, load_params

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CXRFLOW_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())
    monkeypatch.setattr(tracking.runs, "PARENT_SETTLE_SECONDS", 0.0)
    mlflow.set_tracking_uri(uri)
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml", "smoke")
    exp = params.tracking.experiment_name
    parent = tracking.get_or_create_parent_run(exp, "run-k", {}, flatten_params(params))
    client = MlflowClient()
    nested = client.create_run(
        tracking.configure(exp),
        tags={names.TAG_PIPELINE_RUN: "run-k", names.TAG_KIND: "model", names.TAG_MODEL_KEY: "m"},
    ).info.run_id
    result = steps.run_finalize(
        params, "run-k", "KILLED", "interrupted by SIGTERM during model_1", stopped_step="model_1"
    )
    assert result["status"] == "KILLED" and result["failed_step"] == "model_1"
    assert result["stale"] == [nested]
    assert client.get_run(parent).info.status == "KILLED"
    assert client.get_run(nested).info.status == "KILLED"
    tags = tracking.run_tags(parent)
    assert tags[names.TAG_FAILED_STEP] == "model_1"
    assert tags[names.TAG_ERROR] == "interrupted by SIGTERM during model_1"
