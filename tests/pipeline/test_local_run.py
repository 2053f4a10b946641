"""The whole KFP pipeline through kfp.local on the smoke profile, then what landed in MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxrflow.config import MODEL_KEYS, load_params

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from pipelines.local import find_metrics, run_local

    tmp = tmp_path_factory.mktemp("pipeline")
    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("CXRFLOW_ARTIFACT_ROOT", (tmp / "mlartifacts").as_uri())
    params = load_params(ROOT / "params.yaml", "smoke")
    out = run_local(params, tmp / "kfp")
    yield {
        "out": out,
        "metrics": find_metrics(out["run_dir"]),
        "uri": uri,
        "tmp": tmp,
        "params": params,
    }
    mp.undo()


def test_all_steps_ran_and_metrics_exist(local_run: dict) -> None:
    metrics = local_run["metrics"]
    assert set(metrics) == set(MODEL_KEYS)
    for key, m in metrics.items():
        assert 0.0 <= m["accuracy"] <= 1.0, key
        assert m["n_test"] > 0
        assert m["latency_ms_per_image"] > 0
        assert len(m["confusion_matrix"]) == 3
    assert metrics["model_0"]["classes"] == ["normal", "bacterial", "viral"]
    assert metrics["model_1"]["classes"] == ["normal", "bacterial", "covid"]
    assert local_run["out"]["champion"] in ("model_1", "model_2", "model_3")


def test_mlflow_has_parent_four_model_runs_and_champion(local_run: dict) -> None:
    from mlflow.tracking import MlflowClient

    import mlflow

    mlflow.set_tracking_uri(local_run["uri"])
    client = MlflowClient()
    exp = client.get_experiment_by_name("cxrflow")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("cxrflow.run_kind") == "pipeline"]
    models = [r for r in runs if r.data.tags.get("cxrflow.run_kind") == "model"]
    assert len(parents) == 1
    parent = parents[0]
    assert sorted(r.data.tags["cxrflow.model_key"] for r in models) == list(MODEL_KEYS)
    for r in models:
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.info.status == "FINISHED"
        assert "test_accuracy" in r.data.metrics
        assert "test_f1_macro" in r.data.metrics
        assert r.data.params["train.batch_size"] == "8"
        assert r.data.tags["cxrflow.profile"] == "smoke"
        assert (
            r.data.tags["cxrflow.data.manifest_hash"]
            == parent.data.tags["cxrflow.data.manifest_hash"]
        )
        assert r.data.tags["cxrflow.data.origin"] == "phantom"
        hist = client.get_metric_history(r.info.run_id, "val_loss")
        assert len(hist) >= 1
        arts = {a.path for a in client.list_artifacts(r.info.run_id, "evaluation")}
        assert any(p.endswith(".png") for p in arts)
    m3 = next(r for r in models if r.data.tags["cxrflow.model_key"] == "model_3")
    assert "NONE" in m3.data.tags["cxrflow.pretrained_weights"]
    assert "WITHOUT ImageNet" in m3.data.tags["cxrflow.warning"]
    assert len(parent.data.tags["cxrflow.data.manifest_hash"]) == 64
    name = local_run["params"].register.model_name
    mv = client.get_model_version_by_alias(name, "champion")
    assert mv.tags["cxrflow.model_key"] == local_run["out"]["champion"]
    # the validation report and Data Docs were logged to the parent run
    parent_arts = {a.path for a in client.list_artifacts(parent.info.run_id, "validate")}
    assert "validate/validation.json" in parent_arts


def test_predict_with_champion(local_run: dict, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from cxrflow.data.synthetic import render_radiograph

    good = tmp_path / "a chest.png"
    Image.fromarray(render_radiograph("covid", np.random.default_rng(1), (200, 180))).save(good)
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"not a jpeg")
    env = {"MLFLOW_TRACKING_URI": local_run["uri"], "PATH": "/usr/bin:/bin"}
    cmd = [
        sys.executable,
        "-m",
        "cxrflow.cli",
        "--params",
        str(ROOT / "params.yaml"),
        "--profile",
        "smoke",
        "predict",
        str(good),
        str(bad),
        "--json",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    preds = json.loads(res.stdout)
    assert preds[0]["predicted"] in ("normal", "bacterial", "covid")
    assert abs(sum(preds[0]["probabilities"].values()) - 1.0) < 1e-4
    assert preds[1]["predicted"] is None
    assert "broken.jpeg" in preds[1]["error"]
    table = subprocess.run(
        cmd[:-1], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert "ERROR" in table.stdout and "predicted" in table.stdout
