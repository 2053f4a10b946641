"""The tracking store itself: creating a sqlite store's schema once, checking that one exists
before a read-only command touches it, and :class:`RunStore`, the read-only run queries of
``cxrflow compare``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from cxrflow.tracking import session


def ensure_store(uri: str | None = None) -> bool:
    """Create a sqlite tracking store's schema now, once, whoever else is starting.

    MLflow creates a sqlite store's tables when a process first opens it and finds some
    missing; two processes doing so at once both create them and the second fails (``table
    webhooks already exists``): two local runs started together on a new store. A runner calls
    this before any step starts. It holds an exclusive ``flock`` on the database's folder (no
    lock file is left behind) while it checks the schema (stdlib ``sqlite3``, read-only) and,
    only when the store is new, lets MLflow create it; an existing store costs no MLflow import.
    Other URIs (a tracking server, PostgreSQL) are left alone: their schema is the server's.

    Args:
        uri: The tracking URI (default: :func:`tracking_uri`).

    Returns:
        Whether this call created the schema.
    """
    import fcntl

    uri = uri or session.tracking_uri()
    if not uri.startswith("sqlite:///"):
        return False
    db = Path(uri[len("sqlite:///") :]).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        if _has_schema(db):
            return False
        from mlflow.tracking import MlflowClient

        # the first request opens the store: MLflow creates every table and the default
        # experiment, as a step would, but alone
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        return True
    finally:
        os.close(folder)  # releases the lock


def _has_schema(db: Path) -> bool:
    """Whether the sqlite file ``db`` holds MLflow's tables (its migrations ran to the end)."""
    import sqlite3

    if not db.is_file():
        return False
    try:
        with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not {"alembic_version", "experiments", "runs"} <= tables:
                return False
            return bool(conn.execute("SELECT version_num FROM alembic_version").fetchall())
    except sqlite3.Error:
        return False


def tracking_store_exists() -> bool:
    """False when the default sqlite store has never been created (nothing was ever tracked).

    Read-only commands check this first, so that they never create an empty database.
    """
    uri = session.tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).is_file()
    return True


RUN_ID_PATTERN = r"^[0-9a-f]{32}$"
"""What an MLflow run id looks like (a pipeline run id never does: KFP's are UUIDs with dashes,
kfp.local's are ``<pipeline>-<timestamp>``)."""


class RunStore:
    """Read-only queries of a tracking server for ``cxrflow compare`` (any MLflow 3 server:
    sqlite, PostgreSQL, ``http(s)://``, Databricks), returning plain dicts so that callers need
    no MLflow types.

    A run record is ``{"run_id", "experiment_id", "run_name", "status", "start_time", "tags",
    "metrics", "params"}``; ``metrics`` holds each metric's latest value.

    Args:
        uri: The tracking URI (default: :func:`tracking_uri`).

    Raises:
        LookupError: The URI is the local sqlite default and no store was ever made there.
    """

    PAGE_SIZE = 500

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or session.tracking_uri()
        if self.uri.startswith("sqlite:///") and not Path(self.uri[len("sqlite:///") :]).is_file():
            raise LookupError(
                f"no MLflow tracking store at {self.uri}: nothing has been tracked there; set "
                "MLFLOW_TRACKING_URI or --tracking-uri to your tracking server"
            )
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)

    def experiment_id(self, name: str) -> str | None:
        """The id of the experiment called ``name`` (None when there is none)."""
        exp = self._client.get_experiment_by_name(name)
        return None if exp is None else str(exp.experiment_id)

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The record of one run (None when the server has no such run)."""
        from mlflow.exceptions import MlflowException

        try:
            return _record(self._client.get_run(run_id))
        except MlflowException:
            return None

    def search(
        self,
        experiment_ids: Sequence[str],
        filter_string: str = "",
        on_page: Any = None,
    ) -> list[dict[str, Any]]:
        """Every live run of the experiments matching ``filter_string``, oldest first.

        Pages through the results ``PAGE_SIZE`` at a time, calling ``on_page(n)`` after each
        page of ``n`` runs (a progress bar).
        """
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self._client.search_runs(
                list(experiment_ids),
                filter_string=filter_string,
                max_results=self.PAGE_SIZE,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            out.extend(_record(r) for r in page)
            if on_page is not None:
                on_page(len(page))
            token = page.token
            if not token:
                return out


def _record(run: Any) -> dict[str, Any]:
    return {
        "run_id": str(run.info.run_id),
        "experiment_id": str(run.info.experiment_id),
        "run_name": str(run.info.run_name or ""),
        "status": str(run.info.status),
        "start_time": int(run.info.start_time or 0),
        "tags": dict(run.data.tags),
        "metrics": {k: float(v) for k, v in run.data.metrics.items()},
        "params": dict(run.data.params),
    }
