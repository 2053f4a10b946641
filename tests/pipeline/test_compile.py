"""The compiled KFP YAML: nine steps, GPU requests, defaults equal params.yaml; DVC mirrors it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from cxrflow.config import MODEL_KEYS, STEPS, load_params, nulls_to_empty, params_to_dict

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipelines.compile import compile_pipeline  # noqa: E402


def _norm(name: str) -> str:
    return name.replace("-", "_")


@pytest.fixture(scope="module", params=["paper", "demo"])
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    profile = request.param
    out = tmp_path_factory.mktemp("kfp") / f"pipeline-{profile}.yaml"
    params = load_params(ROOT / "params.yaml", profile)
    compile_pipeline(params, out)
    docs = list(yaml.safe_load_all(out.read_text()))
    return params, docs[0], (docs[1] if len(docs) > 1 else {})


def test_all_nine_steps_present(compiled) -> None:
    _, spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    assert {_norm(t) for t in tasks} == set(STEPS)
    assert len(tasks) == 9


def test_training_steps_request_gpu_others_do_not(compiled) -> None:
    _, spec, platform = compiled
    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    kube = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task_name, task in tasks.items():
        comp = spec["components"][task["componentRef"]["name"]]
        exe_name = comp["executorLabel"]
        resources = executors[exe_name]["container"].get("resources", {})
        accel = resources.get("accelerator", {})
        if _norm(task_name) in MODEL_KEYS:
            assert accel.get("resourceType", accel.get("type")) == "nvidia.com/gpu", task_name
            assert str(accel.get("resourceCount", accel.get("count"))) == "1", task_name
            assert kube[exe_name]["nodeSelector"]["labels"], task_name
            assert kube[exe_name]["tolerations"][0]["key"] == "nvidia.com/gpu"
        else:
            assert not accel, task_name
        # every step gets the MLflow / S3 endpoints from the cluster, never from params
        assert kube[exe_name]["configMapAsEnv"], task_name


def test_model_1_and_model_3_do_not_wait_for_model_0(compiled) -> None:
    _, spec, _ = compiled
    tasks = {_norm(k): v for k, v in spec["root"]["dag"]["tasks"].items()}
    for key in ("model_1", "model_3"):
        deps = {_norm(d) for d in tasks[key].get("dependentTasks", [])}
        assert "model_0" not in deps, key
    assert "model_0" in {_norm(d) for d in tasks["model_2"]["dependentTasks"]}


def test_compiled_defaults_equal_params_yaml(compiled) -> None:
    params, spec, _ = compiled
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    plain = nulls_to_empty(params_to_dict(params))
    for section in (
        "data",
        "ingest",
        "validate",
        "split",
        "train",
        "models",
        "evaluate",
        "register",
        "tracking",
    ):
        assert inputs[f"{section}_params"]["defaultValue"] == plain[section], section
    assert inputs["profile"]["defaultValue"] == params.profile
    if params.profile == "paper":
        assert inputs["train_params"]["defaultValue"]["image_size"] == 224
        assert inputs["train_params"]["defaultValue"]["batch_size"] == 20


def test_dvc_stages_equal_pipeline_steps_and_cli() -> None:
    from cxrflow.cli import build_parser

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(STEPS)
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = set(sub.choices)  # type: ignore[union-attr]
    for name, stage in stages.items():
        cmd = " ".join(stage["cmd"].split())
        assert cmd.startswith("cxrflow "), name
        verb = cmd.split()[1]
        assert verb in commands, name
        if name in MODEL_KEYS:
            assert cmd.startswith(f"cxrflow train {name} "), name


def test_dvc_stages_list_exactly_their_params() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    expected = {
        "ingest": {"data", "ingest", "tracking"},
        "validate": {"validate", "tracking"},
        "split": {"split", "validate", "tracking"},
        "evaluate": {"evaluate", "tracking"},
        "register": {"register", "tracking"},
        **{k: {"train", f"models.{k}", "tracking"} for k in MODEL_KEYS},
    }
    for name, stage in stages.items():
        assert set(stage["params"]) == expected[name], name
