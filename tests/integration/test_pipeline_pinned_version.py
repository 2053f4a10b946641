"""A KFP pipeline run pinned to data-v1 after data-v2 exists, reading from S3 (moto server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrflow.config import load_params

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def _params(registry: Path, version: str | None):
    sets = [
        f"data.registry={registry}",
        "data.sources={kermany: [raw/kermany], cohen: [raw/cohen]}",
        # this test is about the data: the lightest evaluation that still runs every step
        "evaluate.bootstrap_samples=100",
        "evaluate.gradcam_per_class=0",
        "audit.enabled=false",
    ]
    if version is not None:
        sets.append(f"data.version={version}")
    return load_params(ROOT / "params.yaml", "smoke", sets)


def test_pipeline_pinned_to_v1_reproduces_v1(data_registry, tmp_path: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    import mlflow
    from cxrflow.data.versions import resolve
    from cxrflow.steps import run_ingest
    from pipelines.cxrflow_pipeline import build_pipeline
    from pipelines.local import run_local

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CXRFLOW_ARTIFACT_ROOT", (tmp_path / "art").as_uri())
    repo = data_registry.repo
    v1 = resolve(str(repo), "data-v1")
    v2 = resolve(str(repo), "data-v2")

    # reference manifests of both versions, read straight from the registry
    h1 = run_ingest(_params(repo, "data-v1"), tmp_path / "ref-v1", "ref-v1")["provenance"]
    h2 = run_ingest(_params(repo, "data-v2"), tmp_path / "ref-v2", "ref-v2")["provenance"]
    assert h1["manifest_hash"] != h2["manifest_hash"]
    assert h1["sources"]["registry_commit"] == v1.commit
    assert h1["origin"] == "phantom"

    # the pipeline, HEAD being data-v2, pinned to data-v1 (data.version in its one resolved
    # configuration), with the registry's local DVC cache out of the way: every byte must
    # come from S3
    with data_registry.without_local_cache():
        run_local(build_pipeline(_params(repo, "data-v1")), {}, tmp_path / "kfp")

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name("cxrflow")
    parents = [
        r
        for r in client.search_runs([exp.experiment_id], max_results=50)
        if r.data.tags.get("cxrflow.run_kind") == "pipeline"
        and r.data.tags.get("cxrflow.pipeline_run_id") not in ("ref-v1", "ref-v2")
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
        for r in client.search_runs([exp.experiment_id], max_results=50)
        if r.data.tags.get("cxrflow.run_kind") == "model"
    ]
    assert len(models) == 4
    assert {r.data.tags["cxrflow.data.manifest_hash"] for r in models} == {h1["manifest_hash"]}
