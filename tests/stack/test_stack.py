"""The pipeline against the stack of ``make stack``: PostgreSQL, S3 (moto) and ``mlflow server``.

Two kfp.local runs on the smoke profile go through the real ``mlflow server`` (basic auth,
PostgreSQL backend, artifacts proxied to an S3 bucket). What they leave is checked where it is
stored: runs, metrics, params, logged and registered models and the alias with SQL in
PostgreSQL, artifacts with boto3 in the bucket; never only through MLflow. The runs are lighter
than the smoke profile's (model_3 a small CNN instead of ResNet50, the cheapest evaluation):
this file is about the servers, not the models.

The second run is hit twice while it runs:

1. The MLflow server is stopped (SIGTERM to its process group) once a model step has opened its
   MLflow run, held down, then restarted on the same port. What lets the step survive is the
   MLflow client's own HTTP retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7, with
   exponential backoff: about four minutes in all), not a KFP retry: an outage shorter than
   that is invisible to the pipeline. A longer one fails the step, and the runner's message is
   one line naming the step and the server: that path is checked during the outage on a
   client with retries off, through the same ``LocalStepError`` formatting the runner uses,
   rather than by waiting four minutes.
2. S3 answers every request with 503 SlowDown / 500 InternalError for a while (a proxy
   between the MLflow server and moto: moto has no fault injection). The server's boto3
   retries them (``AWS_RETRY_MODE=standard``, ``AWS_MAX_ATTEMPTS=10``, set by the stack); a
   5xx that still reached the client would be retried by the client in turn.

In both cases the run must succeed, and everything stored before the fault (rows and objects)
must still be there afterwards, unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from stack_support import StackHandle

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("model_0", "model_1", "model_2", "model_3")  # model_2 reads model_0 back
OUTAGE_STEP = "model_1"
OUTAGE_HOLD_S = 5.0  # down at least this long, then the restart (~15-40 s)
S3_FAULT_S = 10.0
ARTIFACTS = "mlflow-artifacts:/"
KIND = "cxrflow.run_kind"

pytestmark = [pytest.mark.slow, pytest.mark.s3]


# --------------------------------------------------------------------------------------------
# helpers


def _params() -> Any:
    """The smoke profile, lighter: model_3 a small CNN, the cheapest evaluation.

    The pipeline is built with ``retries=False`` (as every local run is), so what the fault
    tests see is the MLflow client's and boto3's own retrying, and a failing step fails the
    test at once.
    """
    from cxrflow.config import load_params

    return load_params(
        ROOT / "params.yaml",
        "smoke",
        [
            "models.model_3={architecture: small_cnn, init: scratch, unfreeze_last: null}",
            "evaluate.bootstrap_samples=100",
            "evaluate.gradcam_per_class=0",
            "evaluate.latency_samples=2",
            "audit.enabled=false",
            # not audited: eligible for champion only by the explicit, recorded override
            "register.allow_unaudited=true",
        ],
    )


def _key(uri: str) -> str:
    """The bucket key of a ``mlflow-artifacts:/`` URI (the server's destination is the root)."""
    assert uri.startswith(ARTIFACTS), uri
    return uri[len(ARTIFACTS) :].strip("/")


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@dataclass
class Snapshot:
    """Rows and objects at one moment, to check that nothing stored is lost later."""

    runs: dict[str, str]
    rows: dict[str, set[tuple[Any, ...]]]
    objects: dict[str, str]

    def lost_in(self, later: Snapshot) -> list[str]:
        """What this snapshot holds that ``later`` lacks or changed; empty when nothing."""
        lost = [f"run {r} gone" for r in self.runs if r not in later.runs]
        lost += [
            f"run {r} was {s}, now {later.runs[r]}"
            for r, s in self.runs.items()
            if s != "RUNNING" and r in later.runs and later.runs[r] != s
        ]
        for table, rows in self.rows.items():
            lost += [f"{table} row {row} gone" for row in sorted(rows - later.rows[table], key=str)]
        lost += [f"object {k} gone" for k in self.objects if k not in later.objects]
        lost += [
            f"object {k} changed"
            for k, etag in self.objects.items()
            if k in later.objects and later.objects[k] != etag
        ]
        return lost


_SNAPSHOT_ROWS = {
    # value as text: NaN never equals itself
    "metrics": "SELECT run_uuid, key, step, timestamp, value::text FROM metrics",
    "params": "SELECT run_uuid, key, value FROM params",
    "tags": "SELECT run_uuid, key FROM tags",  # values may change (cxrflow.last_phase)
    "logged_models": "SELECT model_id, artifact_location FROM logged_models",
    "registered_models": "SELECT name FROM registered_models",
    "model_versions": "SELECT name, version, run_id, storage_location FROM model_versions",
    "registered_model_aliases": "SELECT name, alias FROM registered_model_aliases",
}


def snapshot(h: StackHandle) -> Snapshot:
    return Snapshot(
        runs=dict(h.sql("SELECT run_uuid, status FROM runs")),
        rows={table: set(h.sql(query)) for table, query in _SNAPSHOT_ROWS.items()},
        objects=h.objects(),
    )


def _tags(h: StackHandle, run_ids: list[str]) -> dict[str, dict[str, str]]:
    tags: dict[str, dict[str, str]] = {r: {} for r in run_ids}
    for run, key, value in h.sql(
        "SELECT run_uuid, key, value FROM tags WHERE run_uuid = ANY(%s)", (run_ids,)
    ):
        tags[run][key] = value
    return tags


@dataclass
class PipelineRun:
    """One kfp.local run of the pipeline and what it left in PostgreSQL."""

    result: Any
    seconds: float
    parent: str
    models: dict[str, str]  # model key -> MLflow run id
    error: BaseException | None = None
    events: dict[str, Any] = field(default_factory=dict)


def _run_pipeline(
    h: StackHandle,
    tmp: Path,
    known: set[str],
    chaos: Callable[[threading.Event], None] | None = None,
) -> PipelineRun:
    """Run the pipeline with only the tracking URI and credentials in the environment.

    ``chaos``, if given, runs in a thread beside the run; it gets an event set when the run
    has ended, and whatever it raises is raised here.
    """
    from pipelines.cxrflow_pipeline import build_pipeline
    from pipelines.local import run_local

    env = h.client_env()
    errors: list[BaseException] = []
    ended = threading.Event()

    def guarded() -> None:
        try:
            assert chaos is not None
            chaos(ended)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("MLFLOW_", "AWS_")) or name == "CXRFLOW_ARTIFACT_ROOT":
                mp.delenv(name)
        # the steps need no S3 access: artifacts go through the MLflow server
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            mp.setenv(name, env[name])
        mp.chdir(tmp)  # a fallback to a local store would show up here
        thread = threading.Thread(target=guarded, daemon=True) if chaos else None
        started = time.monotonic()
        if thread is not None:
            thread.start()
        try:
            result = run_local(build_pipeline(_params(), retries=False), {}, tmp / "kfp")
        finally:
            ended.set()
            if thread is not None:
                thread.join(timeout=120)
        seconds = time.monotonic() - started
    if errors:
        raise errors[0]
    new = [r for (r,) in h.sql("SELECT run_uuid FROM runs") if r not in known]
    tags = _tags(h, new)
    parents = [r for r in new if tags[r].get(KIND) == "pipeline"]
    assert len(parents) == 1, f"expected one new parent run, found {parents}"
    model_runs = [(t["cxrflow.model_key"], r) for r, t in tags.items() if t.get(KIND) == "model"]
    # one run per model: a request retried after the server had done it would show here
    assert sorted(k for k, _ in model_runs) == sorted(MODELS), model_runs
    return PipelineRun(result, seconds, parents[0], dict(model_runs))


def _wait_for(what: str, check: Callable[[], Any], ended: threading.Event) -> Any:
    """Poll ``check`` until it returns something true; fail if the run ends first."""
    while not ended.is_set():
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"the run ended before {what}")


def _one_line_failure(h: StackHandle) -> str:
    """The runner's message for a step whose MLflow calls fail (client retries off)."""
    from pipelines.progress import LocalStepError, last_error_line

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))},
        **{k: v for k, v in h.client_env().items() if k.startswith("MLFLOW_TRACKING_")},
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    code = "from cxrflow import tracking; tracking.configure('cxrflow')"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0, "an MLflow call succeeded with the server down"
    lines = (done.stdout + done.stderr).splitlines()
    return str(LocalStepError(OUTAGE_STEP, last_error_line(lines), Path(f"{OUTAGE_STEP}.log")))


# --------------------------------------------------------------------------------------------
# fixtures: the two runs


@pytest.fixture(scope="module")
def first_run(stack_handle: StackHandle, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    known = {r for (r,) in stack_handle.sql("SELECT run_uuid FROM runs")}
    return _run_pipeline(stack_handle, tmp_path_factory.mktemp("run1"), known)


@pytest.fixture(scope="module")
def faulted_run(
    stack_handle: StackHandle, first_run: PipelineRun, tmp_path_factory: pytest.TempPathFactory
) -> PipelineRun:
    """The second run: the MLflow server stopped during a model step, then S3 errors."""
    h = stack_handle
    known = {r for (r,) in h.sql("SELECT run_uuid FROM runs")}
    events: dict[str, Any] = {}

    def step_run_open() -> str | None:
        rows = h.sql(
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'cxrflow.model_key' AND t.value = %s AND r.status = 'RUNNING'",
            (OUTAGE_STEP,),
        )
        fresh = [r for (r,) in rows if r not in known]
        return fresh[0] if fresh else None

    def chaos(ended: threading.Event) -> None:
        events["outage_run"] = _wait_for(
            f"the {OUTAGE_STEP} MLflow run opened", step_run_open, ended
        )
        events["before_outage"] = snapshot(h)
        t0 = time.monotonic()
        h.stack.stop("mlflow")
        events["stop_s"] = time.monotonic() - t0
        events["one_line"] = _one_line_failure(h)
        time.sleep(max(0.0, OUTAGE_HOLD_S - (time.monotonic() - t0)))
        t1 = time.monotonic()
        h.stack.start_mlflow()
        events["start_s"] = time.monotonic() - t1
        events["outage_s"] = time.monotonic() - t0
        # S3 next: errors from the next request on (the next artifact upload)
        events["before_s3"] = snapshot(h)
        h.proxy.fail_next_for(S3_FAULT_S)

    run = _run_pipeline(h, tmp_path_factory.mktemp("run2"), known, chaos)
    run.events = events
    run.events["window"] = h.proxy.window()
    run.events["refused"] = h.proxy.refused
    run.events["after"] = snapshot(h)
    timings = {k: v for k, v in run.events.items() if isinstance(v, int | float | str | tuple)}
    timings["run_s"] = run.seconds
    timings["steps_s"] = {s.name: round(s.seconds, 1) for s in run.result.steps}
    (run.result.log_dir / "faults.json").write_text(json.dumps(timings, indent=2, default=str))
    return run


# --------------------------------------------------------------------------------------------
# the stack itself


def test_servers_listen_on_loopback_only(stack_handle: StackHandle) -> None:
    import psutil

    listening: dict[str, set[str]] = {}
    for name, proc in stack_handle.stack.procs().items():
        for pid in proc.group():
            with contextlib.suppress(psutil.NoSuchProcess):
                for c in psutil.Process(pid).net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        listening.setdefault(name, set()).add(c.laddr.ip)
    assert set(listening) == {"postgres", "s3", "mlflow"}, listening
    assert all(ips == {"127.0.0.1"} for ips in listening.values()), listening


def test_unauthenticated_client_is_refused(stack_handle: StackHandle, monkeypatch) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    h = stack_handle
    base = h.config.mlflow_url
    search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
    artifacts = f"{base}/api/2.0/mlflow-artifacts/artifacts?path=0"
    good = h.module.basic_auth_header(
        h.module.ADMIN_USER, h.client_env()["MLFLOW_TRACKING_PASSWORD"]
    )
    wrong = h.module.basic_auth_header(h.module.ADMIN_USER, "not-the-admin-password")
    unknown = h.module.basic_auth_header("nobody", "not-a-user-password")
    assert _status(f"{base}/health") == 200  # liveness stays open
    assert _status(search) == 401
    assert _status(search, wrong) == 401
    assert _status(search, unknown) == 401
    assert _status(artifacts) == 401  # the artifact proxy too
    assert _status(search, good) == 200
    # the Python client, as a pipeline step would use it, without credentials
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException, match=r"401|nauthori|credentials"):
        MlflowClient(tracking_uri=base).create_experiment("intruder")
    assert not h.sql("SELECT 1 FROM experiments WHERE name = 'intruder'")


# --------------------------------------------------------------------------------------------
# a clean run: what it leaves in PostgreSQL and in the bucket


def test_pipeline_run_lands_in_postgres_and_bucket(
    stack_handle: StackHandle, first_run: PipelineRun
) -> None:
    from pipelines.local import find_registered

    h, run = stack_handle, first_run
    params = _params()
    assert all(s.status == "ok" for s in run.result.steps), run.result.steps
    ids = [run.parent, *run.models.values()]
    assert sorted(run.models) == sorted(MODELS)

    # runs, params, tags: PostgreSQL
    rows = h.sql(
        "SELECT r.run_uuid, r.status, r.end_time, r.artifact_uri, e.name, e.artifact_location "
        "FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
        "WHERE r.run_uuid = ANY(%s)",
        (ids,),
    )
    assert len(rows) == len(ids)
    for run_id, status, end_time, artifact_uri, experiment, location in rows:
        assert (status, experiment) == ("FINISHED", params.tracking.experiment_name), run_id
        assert end_time is not None
        assert location.startswith(ARTIFACTS), location  # proxied by the server
        assert artifact_uri.startswith(location), artifact_uri
    tags = _tags(h, ids)
    pipeline_ids = {t["cxrflow.pipeline_run_id"] for t in tags.values()}
    assert len(pipeline_ids) == 1
    assert {tags[r]["mlflow.parentRunId"] for r in run.models.values()} == {run.parent}
    counts = dict(
        h.sql("SELECT run_uuid, count(*) FROM params WHERE run_uuid = ANY(%s) GROUP BY 1", (ids,))
    )
    assert len(set(counts.values())) == 1 and min(counts.values()) > 20, counts
    assert h.sql(
        "SELECT DISTINCT value FROM params WHERE key = 'train.image_size' AND run_uuid = ANY(%s)",
        (ids,),
    ) == [("32",)]

    # metrics: per epoch while training, then the test metrics
    for key, run_id in run.models.items():
        names = {
            k: n
            for k, n in h.sql(
                "SELECT key, count(*) FROM metrics WHERE run_uuid = %s GROUP BY 1", (run_id,)
            )
        }
        assert names.get("val_loss", 0) >= 1, key
        assert {"test_accuracy", "test_f1_macro"} <= set(names), key

    # logged models, the registered model, its version and alias
    logged = dict(
        h.sql(
            "SELECT source_run_id, artifact_location FROM logged_models "
            "WHERE source_run_id = ANY(%s) AND name = 'model'",  # not export's model_int8
            (list(run.models.values()),),
        )
    )
    assert set(logged) == set(run.models.values())
    registered = find_registered(run.result.run_dir)
    name = params.register.model_name
    assert h.sql("SELECT name FROM registered_models WHERE name = %s", (name,)) == [(name,)]
    (version,) = h.sql(
        "SELECT v.version, v.run_id, v.storage_location, v.status FROM model_versions v "
        "JOIN registered_model_aliases a ON a.name = v.name AND a.version = v.version "
        "WHERE v.name = %s AND a.alias = %s",
        (name, registered["alias"]),
    )
    assert version[0] == registered["version"]
    assert version[1] == run.models[registered["model_key"]]
    assert version[3] == "READY"

    # artifacts: the bucket, read with boto3 from moto itself
    objects = h.objects()
    for run_id, location in logged.items():
        prefix = _key(location)
        assert f"{prefix}/MLmodel" in objects, run_id
        assert f"{prefix}/artifacts/model.keras" in objects, run_id  # the pyfunc's backend
    assert f"{_key(version[2])}/MLmodel" in objects
    uris = {r[0]: r[3] for r in rows}
    for key, run_id in run.models.items():
        plots = [k for k in objects if k.startswith(f"{_key(uris[run_id])}/evaluation/")]
        assert any(k.endswith(".png") for k in plots), key
    s3 = h.stack.s3_client()
    body = s3.get_object(Bucket=h.bucket, Key=f"{_key(uris[run.parent])}/evaluate/metrics.json")
    stored = json.loads(body["Body"].read())
    assert set(stored) >= set(MODELS), sorted(stored)

    # nothing fell back to a local store in the working directory
    cwd = run.result.run_dir.parents[1]
    assert not (cwd / "mlruns.db").exists() and not (cwd / "mlartifacts").exists()


# --------------------------------------------------------------------------------------------
# faults during a second run


def test_mlflow_server_outage_mid_run_is_survived(
    stack_handle: StackHandle, first_run: PipelineRun, faulted_run: PipelineRun
) -> None:
    """The server is stopped while a model step logs; the run finishes and nothing is lost."""
    h, run, ev = stack_handle, faulted_run, faulted_run.events
    assert all(s.status == "ok" for s in run.result.steps), run.result.steps
    assert ev["outage_s"] >= OUTAGE_HOLD_S
    # the step really was mid-run: its MLflow run was open at the stop, its requests failed
    outage_run = ev["outage_run"]
    assert run.models[OUTAGE_STEP] == outage_run
    assert h.sql("SELECT status FROM runs WHERE run_uuid = %s", (outage_run,)) == [("FINISHED",)]
    step_log = (run.result.log_dir / f"{OUTAGE_STEP}.log").read_text()
    assert "Connection refused" in step_log or "Retrying" in step_log, (
        "the step never met the outage (no retried request in its log)"
    )
    # with no retries left, the failure is one line that names the step and the server
    line = ev["one_line"]
    assert "\n" not in line
    assert line.startswith(f"step {OUTAGE_STEP} failed: ")
    assert f"127.0.0.1:{h.config.mlflow_port}" in line or f"port={h.config.mlflow_port}" in line
    # nothing stored before the outage is lost: the first run's and the second's so far
    before = ev["before_outage"]
    assert set(first_run.models.values()) <= set(before.runs)
    assert before.lost_in(ev["after"]) == []


def test_s3_errors_mid_run_are_survived(
    stack_handle: StackHandle, first_run: PipelineRun, faulted_run: PipelineRun
) -> None:
    """S3 answers 503/500 for a while during uploads; the run finishes and nothing is lost."""
    h, run, ev = stack_handle, faulted_run, faulted_run.events
    assert all(s.status == "ok" for s in run.result.steps), run.result.steps
    assert ev["window"] is not None, "no S3 request came after the window was armed"
    assert ev["refused"] > 0
    before, after = ev["before_s3"], ev["after"]
    assert set(first_run.models.values()) <= set(before.runs)
    assert before.lost_in(after) == []
    # what was uploaded during and after the window is all there
    assert len(after.objects) > len(before.objects)
    for run_id, location in h.sql(
        "SELECT source_run_id, artifact_location FROM logged_models WHERE source_run_id = ANY(%s)",
        (list(run.models.values()),),
    ):
        assert f"{_key(location)}/MLmodel" in after.objects, run_id
    (alias_version,) = h.sql(
        "SELECT v.storage_location FROM model_versions v JOIN registered_model_aliases a "
        "ON a.name = v.name AND a.version = v.version WHERE a.alias = 'champion' "
        "AND v.name = %s",  # not the int8 model's champion (<name>-int8)
        (_params().register.model_name,),
    )
    assert f"{_key(alias_version[0])}/MLmodel" in after.objects


def test_down_stops_every_process(stack_handle: StackHandle) -> None:
    stack = stack_handle.stack
    groups = {name: proc.group() for name, proc in stack.procs().items()}
    assert all(groups.values()), groups
    stack.down()
    assert stack.leftovers() == {}
    module = stack_handle.module
    for port in (stack.config.pg_port, stack.config.s3_port, stack.config.mlflow_port):
        assert module.port_free(port), port
