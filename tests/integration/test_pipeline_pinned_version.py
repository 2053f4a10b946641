"""Real KFP pipeline runs on two data versions of a DVC registry on S3 (moto server).

One module fixture runs the smoke pipeline twice into one MLflow store: pinned to data-v1 after
data-v2 exists, with the registry's local cache out of the way (every byte from S3), then on
data-v2. On those runs:

- the run pinned to data-v1 reproduces data-v1 exactly (manifest hash, commit, DVC hashes);
- ``cxrflow compare`` over the two data versions (the CLI, against the sqlite store and
  against a real ``mlflow server`` over HTTP) finds every model run, reports the change of
  every metric with the verdict of :func:`cxrflow.compare.metric_delta`, only ``data.version``
  as the parameter that differs, and links each row to its run in MLflow's UI;
- ``compare.html`` renders in headless Chromium with no console error and every plot drawn.

Chromium comes from the Debian package; the module installs it when missing (as root), and
skips the browser test, saying why, only where that is impossible.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cxrflow.config import load_params

ROOT = Path(__file__).resolve().parents[2]
CXRFLOW = str(Path(sys.executable).parent / "cxrflow")
VERSIONS = ("data-v1", "data-v2")

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def _params(registry: Path, version: str | None):
    sets = [
        f"data.registry={registry}",
        "data.sources={kermany: [raw/kermany], cohen: [raw/cohen]}",
        # the lightest evaluation that still runs every step, the audit included (compare
        # shows its verdicts); model_3 a small CNN too, at a quarter of ResNet50's time
        "evaluate.bootstrap_samples=100",
        "evaluate.gradcam_per_class=0",
        "models.model_3={architecture: small_cnn, init: scratch, unfreeze_last: null}",
    ]
    if version is not None:
        sets.append(f"data.version={version}")
    return load_params(ROOT / "params.yaml", "smoke", sets)


@dataclass(frozen=True)
class TwoVersions:
    """What the module fixture made."""

    uri: str
    tmp: Path
    refs: dict[str, dict[str, Any]]  # version -> provenance of a reference ingest
    pipeline_runs: dict[str, str]  # version -> pipeline run id
    seconds: dict[str, float]  # version -> wall time of its pipeline run
    registry: Any


@pytest.fixture(scope="module")
def two_versions(data_registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoVersions]:
    from cxrflow.steps import run_ingest
    from pipelines.cxrflow_pipeline import build_pipeline
    from pipelines.local import find_metrics, run_local

    tmp = tmp_path_factory.mktemp("two-versions")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    repo = data_registry.repo
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("CXRFLOW_ARTIFACT_ROOT", (tmp / "art").as_uri())
        # reference manifests of both versions, read straight from the registry
        refs = {
            v: run_ingest(_params(repo, v), tmp / f"ref-{v}", f"ref-{v}")["provenance"]
            for v in VERSIONS
        }
        runs, seconds = {}, {}
        for v in VERSIONS:
            start = time.monotonic()
            if v == "data-v1":
                # HEAD is data-v2; pinned to data-v1 (data.version in its one resolved
                # configuration), with the registry's DVC cache aside: all from S3
                with data_registry.without_local_cache():
                    result = run_local(
                        build_pipeline(_params(repo, v), retries=False), {}, tmp / f"kfp-{v}"
                    )
            else:
                result = run_local(
                    build_pipeline(_params(repo, v), retries=False), {}, tmp / f"kfp-{v}"
                )
            seconds[v] = time.monotonic() - start
            metrics = find_metrics(result.run_dir)
            runs[v] = next(iter(metrics.values()))["pipeline_run_id"]
        yield TwoVersions(uri, tmp, refs, runs, seconds, data_registry)


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str, kind: str) -> list[Any]:
    client = _client(uri)
    exp = client.get_experiment_by_name("cxrflow")
    return [
        r
        for r in client.search_runs([exp.experiment_id], max_results=200)
        if r.data.tags.get("cxrflow.run_kind") == kind
    ]


def test_pipeline_pinned_to_v1_reproduces_v1(two_versions: TwoVersions) -> None:
    from cxrflow.data.versions import resolve

    repo = str(two_versions.registry.repo)
    v1, v2 = resolve(repo, "data-v1"), resolve(repo, "data-v2")
    h1, h2 = two_versions.refs["data-v1"], two_versions.refs["data-v2"]
    assert h1["manifest_hash"] != h2["manifest_hash"]
    assert h1["sources"]["registry_commit"] == v1.commit
    assert h1["origin"] == "phantom"

    pid = two_versions.pipeline_runs["data-v1"]
    parents = [
        r
        for r in _runs(two_versions.uri, "pipeline")
        if r.data.tags.get("cxrflow.pipeline_run_id") == pid
    ]
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["cxrflow.champion"] in ("model_1", "model_2", "model_3", "none")
    tags = parents[0].data.tags
    assert tags["cxrflow.data.manifest_hash"] == h1["manifest_hash"]  # reproduced exactly
    assert tags["cxrflow.data.version"].startswith("data-v1@")
    assert tags["cxrflow.data.commit"] == v1.commit != v2.commit
    assert tags["cxrflow.data.dvc_md5.raw/kermany"] == v1.dvc_hashes["raw/kermany"]
    assert tags["cxrflow.data.dvc_md5.raw/kermany"] != v2.dvc_hashes["raw/kermany"]
    models = [
        r
        for r in _runs(two_versions.uri, "model")
        if r.data.tags.get("cxrflow.pipeline_run_id") == pid
    ]
    assert len(models) == 4
    assert {r.data.tags["cxrflow.data.manifest_hash"] for r in models} == {h1["manifest_hash"]}


# --------------------------------------------------------------------------------- compare


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(two_versions: TwoVersions) -> Iterator[str]:
    """``mlflow server`` over the fixture's store on 127.0.0.1; yields its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = two_versions.tmp / "mlflow-server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            two_versions.uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow server did not answer: {log_path}"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def compared(two_versions: TwoVersions, mlflow_server: str) -> dict[str, Any]:
    """``cxrflow compare --data-versions data-v1 data-v2`` run as a user would, against the
    tracking server (``--tracking-uri`` wins over ``MLFLOW_TRACKING_URI``)."""
    out = two_versions.tmp / "compare"
    start = time.monotonic()
    proc = subprocess.run(
        [
            CXRFLOW,
            "--params",
            str(ROOT / "params.yaml"),
            "compare",
            "--data-versions",
            *VERSIONS,
            "--tracking-uri",
            mlflow_server,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": "sqlite:////nonexistent/never-used.db"},
        cwd=two_versions.tmp,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "stdout": proc.stdout, "seconds": time.monotonic() - start}


def _model_runs(two_versions: TwoVersions) -> dict[tuple[str, str], Any]:
    """``(model key, data-v1|data-v2) -> run`` of the two pipeline runs."""
    runs = [
        r
        for r in _runs(two_versions.uri, "model")
        if r.data.tags.get("cxrflow.pipeline_run_id") in two_versions.pipeline_runs.values()
    ]
    by = {
        (r.data.tags["cxrflow.model_key"], r.data.tags["cxrflow.data.version"].split("@")[0]): r
        for r in runs
    }
    assert len(runs) == len(by) == 8  # 4 models x 2 data versions
    return by


def test_compare_data_versions_finds_every_run_and_the_change(
    two_versions: TwoVersions, mlflow_server: str, compared: dict[str, Any]
) -> None:
    from cxrflow.compare import metric_delta, row_from_record
    from cxrflow.data.versions import resolve
    from cxrflow.tracking import RunStore

    runs = _model_runs(two_versions)
    md = (compared["out"] / "compare.md").read_text()
    stdout = compared["stdout"]
    assert "data version data-v1 -> data-v2" in stdout and "compare.html" in stdout
    for r in runs.values():  # each row links to its run in the server's UI
        ui = f"{mlflow_server}/#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}"
        assert f"[{r.info.run_id[:8]}]({ui})" in md
    for v in VERSIONS:
        commit = resolve(str(two_versions.registry.repo), v).commit
        assert f"`{v}@{commit[:12]}`" in md
    # the only parameter that differs between the two pipeline runs is the data version
    params = md.split("## Parameters that differ", 1)[1].split("##", 1)[0]
    keys = [x.split("|")[1].strip() for x in params.splitlines() if x.startswith("| ")]
    assert keys == ["param", "data.version"]

    # model_1's change of accuracy, recomputed from MLflow's own numbers, is the one shown
    store = RunStore(mlflow_server)
    a, b = (row_from_record(store.get(runs["model_1", v].info.run_id), store.uri) for v in VERSIONS)
    d = metric_delta("model_1", "accuracy", a.metrics["accuracy"], b.metrics["accuracy"])
    m1, m2 = (runs["model_1", v].data.metrics for v in VERSIONS)
    assert d.delta == pytest.approx(m2["test_accuracy"] - m1["test_accuracy"])
    line = next(x for x in md.splitlines() if x.startswith("| model_1 | accuracy |"))
    assert d.verdict in line
    if d.low is not None:
        assert f"{d.delta:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" in line
    # per-class recall of every class of Dataset_1, and the audit verdicts of both runs
    for c in ("normal", "bacterial", "covid"):
        assert f"| model_1 | recall {c} |" in md
    audit = md.split("## Audit verdicts", 1)[1].split("##", 1)[0]
    assert audit.count("| model_1 |") == 2 and ("passed" in audit or "FAILED" in audit)


def test_compare_pipeline_runs_and_links_resolve_on_the_server(
    two_versions: TwoVersions, mlflow_server: str, compared: dict[str, Any]
) -> None:
    from cxrflow.compare import select_runs
    from cxrflow.tracking import RunStore

    # one pipeline named by its pipeline run id, the other by its MLflow parent run id
    parent_v2 = next(
        r.info.run_id
        for r in _runs(two_versions.uri, "pipeline")
        if r.data.tags.get("cxrflow.pipeline_run_id") == two_versions.pipeline_runs["data-v2"]
    )
    refs = [two_versions.pipeline_runs["data-v1"], parent_v2]
    sel = select_runs(RunStore(mlflow_server), experiment="cxrflow", run_refs=refs)
    assert {r["run_id"] for r in sel.records} == {
        r.info.run_id for r in _model_runs(two_versions).values()
    }
    assert sel.versions is not None and [v.split("@")[0] for v in sel.versions] == list(VERSIONS)

    # each link of the page names an experiment and a model run the server knows
    html = (compared["out"] / "compare.html").read_text()
    links = [x.split('"', 1)[0] for x in html.split('<a href="')[1:]]
    assert len(links) == 8 and all(x.startswith(f"{mlflow_server}/#/experiments/") for x in links)
    for link in links:
        exp_id, run_id = link.split("#/experiments/", 1)[1].split("/runs/")
        with urllib.request.urlopen(
            f"{mlflow_server}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=30
        ) as resp:
            run = json.load(resp)["run"]
        assert run["info"]["experiment_id"] == exp_id
        assert {t["key"]: t["value"] for t in run["data"]["tags"]}["cxrflow.run_kind"] == "model"
    with urllib.request.urlopen(f"{mlflow_server}/", timeout=30) as resp:  # the UI itself
        assert resp.status == 200 and b"<html" in resp.read(4096).lower()


def _ensure_chromium() -> str:
    """The path of Chromium; installs the Debian package when missing (root only)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("Chromium is not installed and cannot be (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    errors = []
    for before in ([], [["apt-get", "update", "-q"]]):  # the package lists may be missing
        for cmd in [*before, install]:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=900, check=False
            )
            if proc.returncode != 0:
                errors.append(f"{' '.join(cmd)}: {proc.stderr.strip()[-300:]}")
                break
        found = shutil.which("chromium")
        if found:
            return found
    pytest.skip(f"Chromium could not be installed: {'; '.join(errors)}")


CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""With the network closed, Chromium hangs on connections it tries at start without these."""


def test_compare_page_renders_in_headless_chromium(
    compared: dict[str, Any], tmp_path: Path
) -> None:
    chromium = _ensure_chromium()
    from playwright.sync_api import sync_playwright

    page_path = compared["out"] / "compare.html"
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto(page_path.as_uri(), wait_until="load", timeout=60_000)
            images = page.evaluate(
                "[...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, "
                "h: i.naturalHeight, done: i.complete}))"
            )
            headings = page.locator("h2").all_inner_texts()
            rows = page.locator("#models + table tbody tr").count()
            page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
        finally:
            browser.close()
    print(f"screenshot: {tmp_path / 'compare.png'}")
    assert errors == []
    assert {i["alt"] for i in images} == {
        "metric by data version",
        "per-class recall",
        "latency vs accuracy",
        "audit verdicts",
    }
    assert all(i["done"] and i["w"] > 0 and i["h"] > 0 for i in images), images
    assert "Data version data-v1 → data-v2" in headings
    assert rows == 8
