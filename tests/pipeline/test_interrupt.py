"""A local pipeline run stopped by a real signal ends cleanly.

``cxrflow --profile smoke pipeline run --local`` runs in its own session, as a user's shell
would start it; once a model step has its MLflow run, the test signals the main process alone:
SIGTERM (``kill -TERM``), then SIGINT with SIGINT ignored as a shell starts a background job
(``kill -INT`` of a ``&`` job, which the run used to ignore and finish). Each time: the exit
status is the signal's (143, 130), one line says what was stopped, the MLflow parent run and
the model's nested run are ``KILLED`` with the step named, nothing is registered and no process
of the run is left. The second run uses the first one's tracking store: the next run works.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cxrflow import names

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "cxrflow"
MODEL_STARTED = re.compile(r"^start\s+(model_\d+)\s*$")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tracking store for the module's runs (the second run finds the first's)."""
    return tmp_path_factory.mktemp("interrupt")


class _Run:
    """The pipeline run in a subprocess, its output read as it comes."""

    def __init__(self, tmp: Path, ignore_sigint: bool) -> None:
        self.uri = f"sqlite:///{tmp / 'mlruns.db'}"
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.uri,
            "CXRFLOW_ARTIFACT_ROOT": (tmp / "mlartifacts").as_uri(),
            "PYTHONUNBUFFERED": "1",
        }

        def ignore() -> None:  # what a non-interactive shell does for a background job
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        cmd = [
            *(sys.executable, "-m", "cxrflow.cli", "--params", str(ROOT / "params.yaml")),
            *("--profile", "smoke", "pipeline", "run", "--local"),
            *("--pipeline-root", str(tmp / "kfp")),
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=ignore if ignore_sigint else None,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.model_started = threading.Event()
        self.step = ""
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))
            found = MODEL_STARTED.match(line.strip())
            if found and not self.step:
                self.step = found[1]
                self.model_started.set()

    def wait_for_model_run(self, timeout: float = 420) -> str:
        """Wait until a model step runs and has its nested MLflow run; returns the step."""
        if not self.model_started.wait(timeout):
            self._fail("no model step started")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail("the run ended before it was signalled")
            if any(r.info.status == "RUNNING" for r in _runs(self.uri)[1]):
                return self.step
            time.sleep(0.5)
        self._fail("the model step made no MLflow run")
        raise AssertionError  # unreachable

    def processes(self) -> list[Any]:
        import psutil

        me = psutil.Process(self.proc.pid)
        return [me, *me.children(recursive=True)]

    def finish(self, timeout: float = 120) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self._fail(f"still running {timeout}s after the signal")
        for reader in self._readers:
            reader.join(10)
        return code

    def _fail(self, why: str) -> None:
        out, err = "\n".join(self.stdout[-40:]), "\n".join(self.stderr[-40:])
        pytest.fail(f"{why}\n--- stdout\n{out}\n--- stderr\n{err}")


def _runs(uri: str) -> tuple[list[Any], list[Any], Any]:
    """(parent runs, model runs, client) of the store; empty before the first run made it."""
    from mlflow.tracking import MlflowClient

    if not Path(uri.removeprefix("sqlite:///")).is_file():
        return [], [], None
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return [], [], client
    runs = client.search_runs([exp.experiment_id], max_results=200)
    kind = names.TAG_KIND
    parents = [r for r in runs if r.data.tags.get(kind) == "pipeline"]
    models = [r for r in runs if r.data.tags.get(kind) == "model"]
    return parents, models, client


def _left(procs: list[Any]) -> list[str]:
    """The processes of ``procs`` still alive (zombies are not: they hold no resources)."""
    import psutil

    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            continue
    return alive


def _stop(store: Path, signum: int, *, ignore_sigint: bool) -> tuple[_Run, str, int, list[Any]]:
    run = _Run(store, ignore_sigint)
    before = {r.info.run_id for r in _runs(run.uri)[0]}
    step = run.wait_for_model_run()
    procs = run.processes()
    assert len(procs) > 2, procs  # the runner, its steps, the warm server
    os.kill(run.proc.pid, signum)  # the main process alone, not its group
    code = run.finish()
    parents = [r for r in _runs(run.uri)[0] if r.info.run_id not in before]
    return run, step, code, [procs, parents]


def _check(run: _Run, step: str, signame: str, procs: list[Any], parents: list[Any]) -> None:
    interrupted = [line for line in run.stderr if line.startswith("cxrflow: interrupted")]
    assert len(interrupted) == 1, run.stderr
    (line,) = interrupted
    print(line)  # shown with -s
    assert f"({signame})" in line and f"during {step}" in line, line
    assert not any("Traceback" in line for line in run.stdout + run.stderr), run.stderr[-30:]
    assert "cxrflow pipeline finished" not in "\n".join(run.stdout)

    (parent,) = parents
    assert parent.info.status == "KILLED"
    assert parent.info.run_id in line and "marked KILLED" in line
    assert parent.data.tags[names.TAG_FAILED_STEP] == step
    assert f"interrupted by {signame}" in parent.data.tags[names.TAG_ERROR]
    pipeline_run = parent.data.tags[names.TAG_PIPELINE_RUN]
    _, models, client = _runs(run.uri)
    mine = [r for r in models if r.data.tags[names.TAG_PIPELINE_RUN] == pipeline_run]
    nested = [r for r in mine if r.data.tags[names.TAG_MODEL_KEY] == step]
    assert [r.info.status for r in nested] == ["KILLED"], [(r.info.status) for r in mine]
    assert all(r.info.status != "RUNNING" for r in mine)
    assert client.search_registered_models() == []  # it did not go on to register a champion

    assert _left(procs) == []
    import psutil

    session = [  # anything else still in the run's session (it was started in its own)
        p.pid for p in psutil.process_iter() if _sid(p.pid) == run.proc.pid
    ]
    assert session == []


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def test_sigterm_to_the_main_process_stops_the_run_cleanly(store: Path) -> None:
    run, step, code, (procs, parents) = _stop(store, signal.SIGTERM, ignore_sigint=False)
    assert code == 143, (code, run.stderr[-20:])
    _check(run, step, "SIGTERM", procs, parents)


def test_sigint_to_the_main_process_alone_stops_the_next_run(store: Path) -> None:
    """``kill -INT`` of a run a shell started in the background (SIGINT ignored there), on the
    store the first test's run left: the next run starts and is stopped alike."""
    run, step, code, (procs, parents) = _stop(store, signal.SIGINT, ignore_sigint=True)
    assert code == 130, (code, run.stderr[-20:])
    _check(run, step, "SIGINT", procs, parents)
    earlier = [r for r in _runs(run.uri)[0] if r.info.run_id != parents[0].info.run_id]
    assert [r.info.status for r in earlier] in ([], ["KILLED"])  # the first test's, untouched
