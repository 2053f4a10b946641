"""The whole KFP pipeline through kfp.local on the smoke profile, then what landed in MLflow.

The run adds a fifth model in params only (``--set models.model_4=...``): the pipeline, the
evaluation and the registry pick it up with no code change. It trains on dataset_1_mixed (the
phantom's adult controls mixed into normal / bacterial) with its own epoch budget. The phantom
writes an external site (another hospital's CSV export, PNG and DICOM), every model is scored
on it, and promotion ranks the candidates on it (``register.score_on``). Every MLflow run of the pipeline
run logs the same params and params hash; the parent run ends FINISHED. A second run whose
validation fails leaves its parent run FAILED naming the step.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxrflow.config import MODEL_KEYS, flatten_params, load_params, params_hash

ROOT = Path(__file__).resolve().parents[2]
FIFTH = (
    "models.model_4={dataset: dataset_1_mixed, architecture: small_cnn, init: model_1, epochs: 1}"
)
EXTERNAL_SITE = ("data.synth.external_site_patients=3", "register.score_on=phantom_site")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from pipelines.cxrflow_pipeline import build_pipeline
    from pipelines.local import find_metrics, find_registered, run_local

    tmp = tmp_path_factory.mktemp("pipeline")
    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("CXRFLOW_ARTIFACT_ROOT", (tmp / "mlartifacts").as_uri())
    params = load_params(ROOT / "params.yaml", "smoke", [FIFTH, *EXTERNAL_SITE])
    out = run_local(build_pipeline(params, retries=False), {}, tmp / "kfp")
    yield {
        "out": out,
        "metrics": find_metrics(out.run_dir),
        "registered": find_registered(out.run_dir),
        "uri": uri,
        "tmp": tmp,
        "params": params,
    }
    mp.undo()


def _runs(uri: str) -> tuple:
    from mlflow.tracking import MlflowClient

    import mlflow

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name("cxrflow")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("cxrflow.run_kind") == "pipeline"]
    models = [r for r in runs if r.data.tags.get("cxrflow.run_kind") == "model"]
    return client, parents, models


def test_all_steps_ran_and_metrics_exist(local_run: dict) -> None:
    metrics = local_run["metrics"]
    keys = local_run["params"].model_keys
    assert keys == (*MODEL_KEYS, "model_4")
    assert set(metrics) == set(keys)
    for key, m in metrics.items():
        assert 0.0 <= m["accuracy"] <= 1.0, key
        assert m["n_test"] > 0
        assert m["latency_ms_per_image"] > 0
        assert len(m["confusion_matrix"]) == 3
    assert metrics["model_0"]["classes"] == ["normal", "bacterial", "viral"]
    assert metrics["model_1"]["classes"] == ["normal", "bacterial", "covid"]
    assert metrics["model_4"]["classes"] == ["normal", "bacterial", "covid"]
    registered = local_run["registered"]
    assert registered["model_key"] in ("model_1", "model_2", "model_3")
    assert registered["role"] in ("champion", "challenger")
    assert registered["alias"] == registered["role"]
    # the audit ran on every candidate and the decision follows it
    assert set(registered["audit"]) == {"model_1", "model_2", "model_3", "model_4"} & set(
        local_run["params"].register.candidates
    )
    if registered["role"] == "champion":
        assert registered["audit"][registered["model_key"]]["passed"]
    # ranked on the external site, with that score
    assert registered["metric"] == "f1_macro on phantom_site"
    site = metrics[registered["model_key"]]["external"]["phantom_site"]
    assert registered["value"] == pytest.approx(site["f1_macro"])
    steps = [s.name for s in local_run["out"].steps]
    assert set(steps) == {*local_run["params"].steps, "finalize"}
    assert all(s.status == "ok" for s in local_run["out"].steps)
    for step in steps:
        assert (local_run["out"].log_dir / f"{step}.log").is_file(), step


def test_every_model_is_scored_on_the_external_site_it_never_trained_on(
    local_run: dict,
) -> None:
    import pandas as pd

    from cxrflow.report import RunOutputs

    outputs = RunOutputs.from_kfp_run(local_run["out"].run_dir)
    manifest = pd.read_csv(outputs.dataset / "manifest.csv", dtype=str, keep_default_na=False)
    site = manifest[manifest["source"] == "phantom_site"]
    assert len(site) == 18 and set(site["cohort"]) == {"external"}  # 3 patients x 3 x 2
    assert not site["patient_id"].str.contains("MRN").any()  # hashed
    for name in ("dataset_0", "dataset_1", "dataset_1_mixed"):
        table = pd.read_csv(outputs.splits / f"{name}.csv", dtype=str)
        assert not set(table["image_id"]) & set(site["image_id"]), name
    for key, m in local_run["metrics"].items():
        fig = m["external"]["phantom_site"]
        if m["classes"] == ["normal", "bacterial", "viral"]:
            assert (fig["n"], fig["skipped"]) == (12, {"covid": 6}), key
        else:
            assert fig["n"] == 18 and fig["skipped"] == {}, key
            assert fig["non_covid_called_covid"]["n"] == 12
        assert fig["accuracy_ci"]["ci_low"] <= fig["accuracy"] <= fig["accuracy_ci"]["ci_high"]
    _, _, models = _runs(local_run["uri"])
    for r in models:
        assert "external_phantom_site_accuracy" in r.data.metrics, r.data.tags["cxrflow.model_key"]


def test_steps_started_warm_without_importing_again(local_run: dict) -> None:
    from pipelines.warm import status_of

    log_dir = local_run["out"].log_dir
    status = status_of(log_dir / "warm-server.log")
    assert status is not None and status["serving"] is True, status
    assert {"tensorflow", "mlflow", "cxrflow.steps"} <= set(status["preloaded"])
    doc = json.loads((log_dir / "steps.json").read_text())
    timing = {s["name"]: s.get("timing") or {} for s in doc["steps"]}
    warm = {name for name, t in timing.items() if t.get("warm")}
    # the data steps may start before the server has its imports (they then start cold)
    assert {"evaluate", "audit", "register", "finalize"} <= warm, timing
    for name in warm:
        assert timing[name]["phases"].get("imports", 0.0) < 0.5, (name, timing[name])
    # and the results are those of the same steps: every step ran and succeeded (above)


def test_one_configuration_one_hash_on_every_run(local_run: dict) -> None:
    """Parent and nested runs log the same params, equal to the resolved configuration."""
    _, parents, models = _runs(local_run["uri"])
    params = local_run["params"]
    expected = {k: v[:6000] for k, v in flatten_params(params).items()}
    assert len(parents) == 1
    for run in [*parents, *models]:
        assert run.data.params == expected, run.data.tags.get("cxrflow.model_key", "parent")
        assert run.data.tags["cxrflow.params_hash"] == params_hash(params)
        assert run.data.tags["cxrflow.profile"] == "smoke"
    assert parents[0].data.params["train.image_size"] == "32"  # not the paper's 224


def test_mlflow_has_parent_model_runs_datasets_and_champion(local_run: dict) -> None:
    client, parents, models = _runs(local_run["uri"])
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.end_time is not None
    keys = local_run["params"].model_keys
    assert sorted(r.data.tags["cxrflow.model_key"] for r in models) == sorted(keys)
    manifest_hash = parent.data.tags["cxrflow.data.manifest_hash"]
    for r in models:
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.info.status == "FINISHED"
        assert "test_accuracy" in r.data.metrics
        assert "test_f1_macro" in r.data.metrics
        assert r.data.params["train.batch_size"] == "8"
        assert r.data.tags["cxrflow.data.manifest_hash"] == manifest_hash
        assert r.data.tags["cxrflow.data.origin"] == "phantom"
        hist = client.get_metric_history(r.info.run_id, "val_loss")
        assert len(hist) >= 1
        arts = {a.path for a in client.list_artifacts(r.info.run_id, "evaluation")}
        assert any(p.endswith(".png") for p in arts)
        # the data each run used is an MLflow dataset input: lineage in the UI
        inputs = r.inputs.dataset_inputs
        contexts = {t.value for d in inputs for t in d.tags if t.key == "mlflow.data.context"}
        assert contexts == {"training", "evaluation"}, r.data.tags["cxrflow.model_key"]
        names = {d.dataset.name for d in inputs}
        ds = r.data.tags["cxrflow.dataset"]
        assert names == {f"{ds}/train+val", f"{ds}/test"}
        for d in inputs:
            source = json.loads(d.dataset.source)
            assert source["manifest_hash"] == manifest_hash
            assert source["data_version"] == parent.data.tags["cxrflow.data.version"]
    (manifest_input,) = parent.inputs.dataset_inputs
    assert manifest_input.dataset.name == "manifest"
    assert manifest_hash.startswith(manifest_input.dataset.digest)
    m4 = next(r for r in models if r.data.tags["cxrflow.model_key"] == "model_4")
    assert m4.data.tags["cxrflow.dataset"] == "dataset_1_mixed"
    # its own budget: 1 epoch per phase (head, finetune) where train.epochs gives the others 2
    assert len(client.get_metric_history(m4.info.run_id, "val_loss")) == 2
    m3 = next(r for r in models if r.data.tags["cxrflow.model_key"] == "model_3")
    assert "NONE" in m3.data.tags["cxrflow.pretrained_weights"]
    assert "WITHOUT ImageNet" in m3.data.tags["cxrflow.warning"]
    assert len(manifest_hash) == 64
    name = local_run["params"].register.model_name
    registered = local_run["registered"]
    mv = client.get_model_version_by_alias(name, registered["alias"])
    assert mv.tags["cxrflow.model_key"] == registered["model_key"]
    assert mv.tags["cxrflow.promotion"] == registered["role"]
    assert mv.tags["cxrflow.promotion_reason"] == registered["reason"]
    assert mv.tags["cxrflow.audit.passed"] in ("true", "false")
    assert mv.tags["cxrflow.data.version"] == parent.data.tags["cxrflow.data.version"]
    assert mv.tags["cxrflow.data.manifest_hash"] == manifest_hash
    assert float(mv.tags["cxrflow.metric.f1_macro"]) == pytest.approx(
        local_run["metrics"][mv.tags["cxrflow.model_key"]]["f1_macro"], abs=1e-6
    )
    parent_arts = {a.path for a in client.list_artifacts(parent.info.run_id, "validate")}
    assert "validate/validation.json" in parent_arts


def test_failed_step_fails_the_parent_run_naming_it(tmp_path: Path, monkeypatch) -> None:
    from pipelines.cxrflow_pipeline import build_pipeline
    from pipelines.local import run_local
    from pipelines.progress import LocalStepError

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CXRFLOW_ARTIFACT_ROOT", (tmp_path / "art").as_uri())
    params = load_params(ROOT / "params.yaml", "smoke", ["validate.min_per_class=100000"])
    with pytest.raises(LocalStepError) as err:
        run_local(build_pipeline(params, retries=False), {}, tmp_path / "kfp")
    assert err.value.step == "validate"
    assert "DataValidationError" in str(err.value) or "expectation" in str(err.value)
    assert str(err.value.log_path).endswith("validate.log")
    assert "\n" not in str(err.value)
    _, parents, _ = _runs(uri)
    assert len(parents) == 1
    assert parents[0].info.status == "FAILED"
    assert parents[0].data.tags["cxrflow.failed_step"] == "validate"


def test_predict_with_champion(local_run: dict, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from cxrflow.data.synthetic import render_radiograph

    folder = tmp_path / "films"
    folder.mkdir()
    good = folder / "a chest.png"
    Image.fromarray(render_radiograph("covid", np.random.default_rng(1), (200, 180))).save(good)
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"not a jpeg")
    env = {"MLFLOW_TRACKING_URI": local_run["uri"], "PATH": "/usr/bin:/bin"}
    registered = local_run["registered"]
    uri = f"models:/{registered['model_name']}@{registered['alias']}"
    cmd = [
        sys.executable,
        "-m",
        "cxrflow.cli",
        "--params",
        str(ROOT / "params.yaml"),
        "--profile",
        "smoke",
        "predict",
        "--model-uri",
        uri,
        str(folder),
        str(bad),
        "--json",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert res.returncode == 1, res.stderr[-3000:]  # one input failed: the exit says so
    preds = {Path(p["path"]).name: p for p in json.loads(res.stdout)}
    assert set(preds) == {"a chest.png", "broken.jpeg"}  # the failure is listed, not dropped
    good_pred, bad_pred = preds["a chest.png"], preds["broken.jpeg"]
    assert good_pred["error"] is None
    assert good_pred["predicted"] in ("normal", "bacterial", "covid")
    assert abs(sum(good_pred["probabilities"].values()) - 1.0) < 1e-4
    assert bad_pred["predicted"] is None and bad_pred["error"]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("cxrflow: error:")]
    assert len(errors) == 1 and "broken.jpeg" in errors[0], res.stderr[-2000:]
    assert "error: error:" not in res.stderr
