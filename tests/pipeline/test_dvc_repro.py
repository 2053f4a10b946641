"""dvc.yaml runs for real: `dvc repro` on the smoke profile, then nothing reruns; a changed
profile (or a value inside it) makes exactly the affected stages out of date; `dvc exp run -S`
works; a data rollback makes `dvc repro` rerun ingest and give the old manifest back."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert res.returncode == 0, f"{cmd}: {res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


def _edit_params(work: Path, **changes: object) -> None:
    """Edit params.yaml like a person would (dotted keys, YAML written back)."""
    path = work / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = raw
        *head, last = dotted.split("__")
        for key in head:
            node = node[key]
        node[last] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _stale(work: Path, env: dict[str, str], dvc: list[str]) -> set[str]:
    """The stages `dvc status` reports once the resolve stage has rerun."""
    _run([*dvc, "repro", "--single-item", "params"], work, env)
    out = _run([*dvc, "status", "--json"], work, env).stdout
    return set(json.loads(out or "{}"))


def _env(tmp: Path) -> dict[str, str]:
    """The environment of a DVC project test: this venv's commands first, MLflow in ``tmp``,
    no DVC analytics, a git identity."""
    bindir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlruns.db'}",
        "CXRFLOW_ARTIFACT_ROOT": (tmp / "mlartifacts").as_uri(),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@localhost",
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], list[str]]:
    tmp = tmp_path_factory.mktemp("dvc")
    work = tmp / "proj"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, work / name)
    _edit_params(work, profile="smoke")
    # this test is about DVC: the lightest evaluation that still runs every stage
    _edit_params(
        work,
        profiles__smoke__evaluate__bootstrap_samples=100,
        profiles__smoke__evaluate__gradcam_per_class=0,
    )
    env = _env(tmp)
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], work, env)
    _run([*dvc, "init", "-q"], work, env)
    _run([*dvc, "repro"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "smoke repro"], work, env)
    return work, env, dvc


def test_dvc_repro_smoke(project) -> None:
    work, env, dvc = project
    metrics = json.loads((work / "reports/evaluate/metrics.json").read_text())
    assert sorted(metrics) == ["model_0", "model_1", "model_2", "model_3"]
    registered = json.loads((work / "reports/register/registered.json").read_text())
    assert registered["alias"] in ("champion", "challenger")
    assert (work / "reports/audit/audit.json").is_file()
    assert (work / "dvc.lock").is_file()
    resolved = yaml.safe_load((work / "build/params.resolved.yaml").read_text())
    assert resolved["profile"] == "smoke" and resolved["train"]["image_size"] == 32
    again = _run([*dvc, "repro"], work, env)
    assert "Running stage" not in again.stdout
    status = _run([*dvc, "status"], work, env)
    assert "up to date" in status.stdout


def test_profiles_make_exactly_the_affected_stages_stale(project) -> None:
    work, env, dvc = project
    original = (work / "params.yaml").read_text()
    try:
        # a value inside the selected profile: training stages only
        _edit_params(work, profiles__smoke__train__epochs=3)
        assert _stale(work, env, dvc) == {f"train@model_{i}" for i in range(4)}
        # a value inside a profile that is not selected: nothing
        (work / "params.yaml").write_text(original)
        _edit_params(work, profiles__demo__train__epochs=3)
        assert _stale(work, env, dvc) == set()
        # another profile: every stage whose keys it changes
        (work / "params.yaml").write_text(original)
        _edit_params(work, profile="demo")
        stale = _stale(work, env, dvc)
        assert {"ingest", "split", "evaluate"} <= stale
        assert {f"train@model_{i}" for i in range(4)} <= stale
        # register reads evaluate.bootstrap_samples (the paired champion comparison) and
        # export its max_drop_points, both of which the demo profile sets
        assert {"register", "export"} <= stale
    finally:
        (work / "params.yaml").write_text(original)
        _run([*dvc, "repro", "--single-item", "params"], work, env)


def test_dvc_exp_run_set_param(project) -> None:
    work, env, dvc = project
    # a top-level key the smoke profile does not override: only the register stage reruns,
    # and export, which exports what register registered
    res = _run([*dvc, "exp", "run", "-S", "register.metric=accuracy", "-n", "acc"], work, env)
    ran = set(re.findall(r"Running stage '([^']+)'", res.stdout))
    assert ran == {"params", "register", "export"}, res.stdout[-2000:]
    registered = json.loads((work / "reports/register/registered.json").read_text())
    assert registered["metric"] == "accuracy"
    # a top-level key the selected profile overrides changes nothing: the profile wins
    res = _run([*dvc, "exp", "run", "-S", "train.epochs=7", "-n", "shadowed"], work, env)
    assert set(re.findall(r"Running stage '([^']+)'", res.stdout)) == {"params"}
    shown = _run([*dvc, "exp", "show", "--json"], work, env).stdout
    assert "acc" in shown


def _manifest_hash(work: Path) -> str:
    return json.loads((work / "data/dataset/provenance.json").read_text())["manifest_hash"]


def _ran(res: subprocess.CompletedProcess[str]) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", res.stdout))


def test_data_rollback_reruns_ingest_and_gives_v1_back(tmp_path: Path) -> None:
    """Data tracked by DVC in the project (data.sources roots, registry "."): two versions;
    after `cxrflow data rollback v1` (and after `git checkout v2 -- *.dvc && dvc checkout`)
    `dvc repro` reruns ingest and the manifest hash is that version's."""
    from pipelines.dvc_stages import render

    work = tmp_path / "proj"
    work.mkdir()
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    _edit_params(
        work,
        profile="smoke",
        data__sources={"kermany": ["raw/kermany"], "cohen": ["raw/cohen"]},
    )
    (work / "dvc.yaml").write_text(render(work / "params.yaml"))
    ingest = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]["ingest"]
    assert ingest["deps"] == ["${data.sources.kermany[0]}", "${data.sources.cohen[0]}"]
    env = _env(tmp_path)
    dvc = [sys.executable, "-m", "dvc"]
    repro = [*dvc, "repro", "params", "ingest"]
    _run(["git", "init", "-q"], work, env)
    _run([*dvc, "init", "-q"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "project"], work, env)
    _run(["cxrflow", "data", "synth", "--out", "raw"], work, env)

    # v1: the phantom as generated; v2: a few kermany images fewer
    _run(["cxrflow", "data", "snapshot", "-m", "v1", "--tag", "v1", "--no-push"], work, env)
    assert "ingest" in _ran(_run(repro, work, env))
    v1 = _manifest_hash(work)
    for image in sorted((work / "raw/kermany").rglob("*.jpeg"))[:3]:
        image.unlink()
    _run(["cxrflow", "data", "snapshot", "-m", "v2", "--tag", "v2", "--no-push"], work, env)
    assert "ingest" in _ran(_run(repro, work, env))
    v2 = _manifest_hash(work)
    assert v2 != v1
    assert _ran(_run(repro, work, env)) == set()  # nothing changed: nothing reruns

    _run(["cxrflow", "data", "rollback", "v1"], work, env)
    status = json.loads(_run([*dvc, "status", "ingest", "--json"], work, env).stdout or "{}")
    assert "ingest" in status, status
    # no run cache: ingest really runs again on the v1 data (not restored from its v1 run)
    res = _run([*dvc, "repro", "--no-run-cache", "params", "ingest"], work, env)
    assert "ingest" in _ran(res), res.stdout[-2000:]
    after = _manifest_hash(work)
    print(f"manifest hash: v1 {v1}, v2 {v2}, after `cxrflow data rollback v1` {after}")
    assert after == v1

    # the same by hand: the .dvc files of a version, then dvc checkout; DVC's run cache may
    # give the v2 run's outputs back instead of running it again
    _run(["git", "checkout", "v2", "--", "raw/kermany.dvc", "raw/cohen.dvc"], work, env)
    _run([*dvc, "checkout", "raw/kermany.dvc", "raw/cohen.dvc"], work, env)
    res = _run(repro, work, env)
    assert "ingest" in _ran(res) or "Stage 'ingest' is cached" in res.stdout, res.stdout[-2000:]
    assert _manifest_hash(work) == v2
    assert _ran(_run(repro, work, env)) == set()
