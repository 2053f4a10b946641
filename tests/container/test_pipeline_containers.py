"""The smoke pipeline with every step in the built image: ``pipeline run --local --containers``.

The command runs as a user runs it, against a stack of ``make stack`` started for this module on
free ports (MLflow with basic auth, PostgreSQL, S3), with only the stack's client environment.
Then: every step succeeded; the run left one MLflow parent run, FINISHED, and every run carries
the same params hash and pipeline run id; the registered version is READY; the containers wrote
nothing outside the pipeline root (nothing owned by the image's user appeared in the working
directory or /tmp), everything they wrote there is the image user's, and no folder is
world-writable; no step logged git warnings; no container and no podman service is left.
Skipped only where podman cannot run a container or the image is not built (``make test``
builds it first).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components.images import record_path
from cxrflow import names
from cxrflow.config import load_params, params_hash
from pipelines.containers import CONTAINER_LABEL, image_user, podman_problem

ROOT = Path(__file__).resolve().parents[2]


def _stack_support() -> Any:
    """tests/stack/stack_support.py, loaded by path (tests/stack's conftest registers the same
    name when both folders run in one process)."""
    if "stack_support" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "stack_support", ROOT / "tests" / "stack" / "stack_support.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["stack_support"] = module
        spec.loader.exec_module(module)
    return sys.modules["stack_support"]


free_port, load_stack = _stack_support().free_port, _stack_support().load_stack

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.s3]

GIT_WARNINGS = re.compile(r"Failed to import Git|git executable", re.IGNORECASE)
STEP_LINE = re.compile(
    r"^(?P<status>ok|FAILED|stopped)\s+(?P<step>\w+)\s+(?P<duration>(\d+m)?[\d.]+s)"
)  # 9.4s or, past a minute, 1m05s (the runner's format)
SKIP_DIRS = {".venv", ".git", "node_modules", ".mypy_cache", ".ruff_cache"}
RUN_TIMEOUT_S = 1500


@dataclass
class ContainerRun:
    """The finished command and where it left things."""

    done: subprocess.CompletedProcess[str]
    pipeline_root: Path
    log_root: Path
    uid: int
    gid: int
    env: dict[str, str]
    before: set[str]
    tmp: Path


def _image() -> tuple[str, int, int]:
    """The CPU image the record names, and its user; skips when it cannot run here."""
    why = podman_problem()
    if why:
        pytest.skip(why)
    path = record_path()
    if not path.is_file():
        pytest.skip(f"the image is not built (no {path}): run `make image`")
    entry = json.loads(path.read_text())["images"]["cpu"]
    ref = f"{entry['repository']}@{entry['digest']}"
    if subprocess.run(["podman", "image", "exists", ref], check=False).returncode != 0:
        pytest.skip(f"the image {ref} of {path} is not in podman's store: run `make image`")
    config = json.loads(
        subprocess.run(
            ["podman", "image", "inspect", ref], capture_output=True, text=True, check=True
        ).stdout
    )[0]["Config"]
    owner = image_user(config)
    assert owner is not None and owner[0] != 0, f"{ref} runs as {config.get('User')!r}"
    return ref, *owner


def _owned_by(uid: int, gid: int, tops: list[Path], skip: list[Path]) -> set[str]:
    """Paths under ``tops`` owned by ``uid`` or ``gid`` (``skip`` and tool folders aside)."""
    found: set[str] = set()
    for top in tops:
        for folder, dirs, files in os.walk(top, onerror=lambda _e: None):
            here = Path(folder)
            dirs[:] = [
                d for d in dirs if d not in SKIP_DIRS and not any(here / d == s for s in skip)
            ]
            for name in [*dirs, *files]:
                path = here / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if st.st_uid == uid or st.st_gid == gid:
                    found.add(str(path))
    return found


@pytest.fixture(scope="module")
def stack_env() -> Iterator[dict[str, str]]:
    """The stack up on free ports for the module; its client environment."""
    module = load_stack()
    try:
        module.ensure_postgres()
    except module.StackError as exc:
        pytest.skip(f"PostgreSQL cannot be installed here: {exc}")
    state = Path(tempfile.mkdtemp(prefix="cxrflow-stack-"))
    state.chmod(0o755)  # PostgreSQL's system user enters it
    config = module.StackConfig(
        state_dir=state,
        pg_port=free_port(),
        s3_port=free_port(),
        mlflow_port=free_port(),
        workers=1,
        pg_settings=("fsync=off", "synchronous_commit=off", "full_page_writes=off"),
    )
    stack = module.Stack(config, out=sys.stderr)
    try:
        stack.up()
        yield dict(stack.client_env())
    finally:
        stack.down()
        left = stack.leftovers()
        shutil.rmtree(state, ignore_errors=True)
        assert not left, f"stack processes left running: {left}"


@pytest.fixture(scope="module")
def container_run(stack_env: dict[str, str]) -> Iterator[ContainerRun]:
    _ref, uid, gid = _image()
    tmp = Path(tempfile.mkdtemp(prefix="cxrflow-containers-"))
    pipeline_root = tmp / "kfp"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(stack_env)
    env["CXRFLOW_IMAGE_RECORD"] = str(record_path().resolve())
    env.pop("CXRFLOW_IMAGE", None)
    env.pop("DOCKER_HOST", None)
    tops = [ROOT, Path(tempfile.gettempdir())]
    before = _owned_by(uid, gid, tops, [tmp])
    cxrflow = Path(sys.executable).with_name("cxrflow")
    done = subprocess.run(
        [
            str(cxrflow),
            *("--profile", "smoke", "pipeline", "run", "--local", "--containers"),
            *("--pipeline-root", str(pipeline_root)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    sys.stdout.write(done.stdout)  # the step table, for the report (pytest -s)
    try:
        yield ContainerRun(done, pipeline_root, tmp, uid, gid, env, before, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _steps(run: ContainerRun) -> dict[str, str]:
    return {
        m["step"]: m["status"]
        for m in (STEP_LINE.match(line) for line in run.done.stdout.splitlines())
        if m
    }


def test_every_step_succeeds_in_the_image(container_run: ContainerRun) -> None:
    run = container_run
    assert run.done.returncode == 0, run.done.stdout[-3000:] + run.done.stderr[-3000:]
    params = load_params(ROOT / "params.yaml", "smoke")
    assert _steps(run) == dict.fromkeys([*params.steps, "finalize"], "ok")
    logs = [p for p in run.log_root.glob("cxrflow-*") if p.is_dir() and p.name != "kfp"]
    assert len(logs) == 1, logs
    for step in [*params.steps, "finalize"]:
        text = (logs[0] / f"{step}.log").read_text()
        assert "Found image" in text, step  # it ran in a container of the image
        assert not GIT_WARNINGS.search(text), (step, GIT_WARNINGS.search(text))


def test_one_parent_run_finished_and_one_params_hash(container_run: ContainerRun) -> None:
    from mlflow.tracking import MlflowClient

    run = container_run
    assert run.done.returncode == 0, run.done.stderr[-3000:]
    params = load_params(ROOT / "params.yaml", "smoke")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in run.env.items():
            if key.startswith(("MLFLOW_", "AWS_")):
                mp.setenv(key, value)
        client = MlflowClient(tracking_uri=run.env["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name(params.tracking.experiment_name)
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id], max_results=500)
        versions = client.search_model_versions(f"name='{params.register.model_name}'")
    parents = [r for r in runs if r.data.tags.get(names.TAG_KIND) == "pipeline"]
    assert len(parents) == 1, [(r.info.run_id, r.info.status) for r in parents]
    assert parents[0].info.status == "FINISHED"
    assert len(runs) > 1
    assert {r.data.tags.get(names.TAG_PARAMS_HASH) for r in runs} == {params_hash(params)}
    assert len({r.data.tags.get(names.TAG_PIPELINE_RUN) for r in runs}) == 1
    commits = {r.data.tags.get(names.TAG_GIT_COMMIT) for r in runs}
    assert len(commits) == 1 and None not in commits and "unknown" not in commits, commits
    assert versions, "no model version registered"
    assert {v.status for v in versions} == {"READY"}


def test_containers_write_only_the_pipeline_root_as_the_image_user(
    container_run: ContainerRun,
) -> None:
    run = container_run
    assert run.done.returncode == 0, run.done.stderr[-3000:]
    tops = [ROOT, Path(tempfile.gettempdir())]
    outside = _owned_by(run.uid, run.gid, tops, [run.tmp]) - run.before
    assert not outside, f"written outside the pipeline root: {sorted(outside)[:20]}"
    root = run.pipeline_root
    # the root keeps its owner; the image's group may write, nobody else
    st = root.stat()
    assert st.st_uid == os.getuid() and not st.st_mode & 0o002
    if os.geteuid() == 0:
        assert st.st_gid == run.gid and st.st_mode & 0o070 == 0o070
    made = [p for p in root.rglob("*") if p.relative_to(root).parts[0] != ".cxrflow"]
    assert made, "the containers wrote nothing"
    expected_uid = run.uid if os.geteuid() == 0 else os.getuid()
    not_theirs = [str(p) for p in made if p.lstat().st_uid != expected_uid]
    assert not not_theirs, not_theirs[:20]
    loose = [
        str(p) for p in [root, *root.rglob("*")] if not p.is_symlink() and p.stat().st_mode & 0o002
    ]
    assert not loose, f"world-writable: {loose[:20]}"
    # the run's channel folder is gone with the run
    assert not any((root / ".cxrflow").iterdir())


def test_no_container_or_service_outlives_the_run(container_run: ContainerRun) -> None:
    import psutil

    ps = subprocess.run(
        ["podman", "ps", "-a", "--filter", f"label={CONTAINER_LABEL}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ps.stdout.strip() == ""
    services = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if str(container_run.tmp) in " ".join(p.info["cmdline"] or [])
        or "cxrflow-podman-" in " ".join(p.info["cmdline"] or [])
    ]
    assert not services, services
