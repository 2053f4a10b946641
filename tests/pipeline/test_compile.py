"""The compiled KFP YAML: one task per step and model, GPU requests, one `params` parameter
whose default is the resolved configuration; DVC and the CLI mirror the same step names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxrflow.config import (
    MODEL_KEYS,
    load_params,
    params_from_kfp,
    params_hash,
    params_to_kfp,
)
from pipelines.compile import compile_pipeline
from pipelines.dvc_stages import render

STEPS = ("ingest", "validate", "split", *MODEL_KEYS, "evaluate", "audit", "register", "export")
"""The default pipeline's steps in order (the registry's, with the paper's four models)."""

ROOT = Path(__file__).resolve().parents[2]
FIFTH = "models.model_4={dataset: dataset_1, architecture: small_cnn, init: model_1}"


def _norm(name: str) -> str:
    return name.replace("-", "_")


def _compile(tmp: Path, profile: str, overrides: tuple[str, ...] = ()) -> tuple:
    out = tmp / f"pipeline-{profile}-{len(overrides)}.yaml"
    params = load_params(ROOT / "params.yaml", profile, overrides)
    compile_pipeline(params, out)
    docs = list(yaml.safe_load_all(out.read_text()))
    return params, docs[0], (docs[1] if len(docs) > 1 else {})


@pytest.fixture(scope="module", params=["paper", "demo"])
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    return _compile(tmp_path_factory.mktemp("kfp"), request.param)


def _steps(spec: dict) -> dict[str, dict]:
    """Task name -> task, flattening the exit handler's sub-DAG."""
    root = spec["root"]["dag"]["tasks"]
    tasks = {}
    for name, task in root.items():
        comp = spec["components"][task["componentRef"]["name"]]
        if "dag" in comp:
            tasks.update(comp["dag"]["tasks"])
        else:
            tasks[name] = task
    return tasks


def test_every_step_is_one_task_plus_the_exit_handler(compiled) -> None:
    params, spec, _ = compiled
    tasks = _steps(spec)
    assert {_norm(t) for t in tasks} == {*STEPS, "finalize"}
    assert params.steps == STEPS
    exit_task = spec["root"]["dag"]["tasks"]["finalize"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_training_steps_request_gpu_others_do_not(compiled) -> None:
    _, spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    kube = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task_name, task in _steps(spec).items():
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
    tasks = {_norm(k): v for k, v in _steps(spec).items()}
    for key in ("model_1", "model_3"):
        deps = {_norm(d) for d in tasks[key].get("dependentTasks", [])}
        assert "model_0" not in deps, key
    assert "model_0" in {_norm(d) for d in tasks["model_2"]["dependentTasks"]}


def test_one_params_parameter_equal_to_the_resolved_configuration(compiled) -> None:
    params, spec, _ = compiled
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == {"params"}, "the profile is no separate run-time parameter"
    default = inputs["params"]["defaultValue"]
    assert default == params_to_kfp(params)
    assert params_hash(params_from_kfp(default)) == params_hash(params)
    assert default["profile"] == params.profile
    if params.profile == "paper":
        assert default["train"]["image_size"] == 224
        assert default["train"]["batch_size"] == 20
    # every step receives the whole configuration, never a section of it
    for name, task in _steps(spec).items():
        got = task["inputs"]["parameters"]["params"]["componentInputParameter"]
        assert got in ("params", "pipelinechannel--params"), name


def test_a_fifth_model_in_params_is_a_fifth_training_task(tmp_path: Path) -> None:
    params, spec, _ = _compile(tmp_path, "smoke", (FIFTH,))
    tasks = {_norm(k): v for k, v in _steps(spec).items()}
    assert "model_4" in tasks
    assert "model_1" in {_norm(d) for d in tasks["model_4"]["dependentTasks"]}
    evaluate_inputs = tasks["evaluate"]["inputs"]["artifacts"]
    assert {k for k in evaluate_inputs if k.startswith("model_")} == set(params.model_keys)


def test_dvc_stages_equal_pipeline_steps_and_cli() -> None:
    from typer.main import get_command

    from cxrflow.cli import app

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params_yaml = yaml.safe_load((ROOT / "params.yaml").read_text())
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    names = []
    for name, stage in stages.items():
        if "foreach" in stage:
            keys = stage["foreach"]
            if isinstance(keys, str):  # ${models}
                keys = list(params_yaml[keys.strip("${}")])
            names += [f"{name}@{k}" for k in keys]
            cmd = stage["do"]["cmd"]
        else:
            names.append(name)
            cmd = stage["cmd"]
        words = " ".join(cmd.split()).split()
        assert words[0] == "cxrflow", name
        verb = next(w for w in words[1:] if not w.startswith("-") and "/" not in w)
        assert verb in commands, name
    data_steps = [n for n in names if n in STEPS]
    trained = [n.split("@", 1)[1] for n in names if n.startswith("train@")]
    assert data_steps == ["ingest", "validate", "split", "evaluate", "audit", "register", "export"]
    assert trained == list(MODEL_KEYS)
    train_cmd = " ".join(stages["train"]["do"]["cmd"].split())
    assert "train ${key} " in train_cmd


def test_dvc_yaml_is_generated_from_the_step_registry() -> None:
    """dvc.yaml is what `python -m pipelines.dvc_stages` writes: no second list of steps."""
    assert (ROOT / "dvc.yaml").read_text() == render(ROOT / "params.yaml"), (
        "dvc.yaml is stale: run `python -m pipelines.dvc_stages`"
    )


def test_dvc_stages_list_exactly_their_params() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    resolved = "build/params.resolved.yaml"
    expected = {
        "ingest": {"data", "ingest"},
        "validate": {"validate"},
        "split": {"split", "validate"},
        "start": {"models", "train.seed"},
        "train": {"train", "models.${key}", "tracking"},
        "evaluate": {"evaluate", "models", "tracking"},
        "audit": {"audit", "evaluate", "register.candidates", "tracking"},
        "register": {
            "register",
            "audit.block_promotion",
            "evaluate.bootstrap_samples",
            "evaluate.confidence",
            "evaluate.seed",
            "tracking",
        },
        "export": {"export", "train.seed", "tracking"},
    }
    for name, stage in stages.items():
        body = stage.get("do", stage)
        if name == "params":
            # the resolve stage reads every top-level key of params.yaml
            top = set(yaml.safe_load((ROOT / "params.yaml").read_text()))
            assert set(body["params"]) == top
            continue
        (entry,) = body["params"]
        assert set(entry[resolved]) == expected[name], name
        assert f"--params {resolved}" in " ".join(body["cmd"].split()), name


def test_core_never_imports_the_adapters() -> None:
    """src/cxrflow never imports pipelines/ or components/ (the CLI mounts their commands through
    an entry point); no sys.path edits."""
    pattern = re.compile(r"^\s*(from|import)\s+(pipelines|components)\b", re.M)
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "src" / "cxrflow").rglob("*.py")
        if pattern.search(p.read_text())
    ]
    assert offenders == []
    edit = re.compile(r"^\s*sys\.path\.(insert|append)\(", re.M)
    for folder in ("src", "pipelines", "components", "tests", "bench"):
        for p in (ROOT / folder).rglob("*.py"):
            assert not edit.search(p.read_text()), p
    # the installed project makes the adapters importable from anywhere
    res = subprocess.run(
        [sys.executable, "-c", "import pipelines.cxrflow_pipeline, components"],
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr


def test_the_sample_profile_pretrains_resnet50_before_fine_tuning_it(tmp_path: Path) -> None:
    """model_5 waits for model_4 (its base) and nothing else of the models; the register step
    gets it as a candidate, model_4 (a Dataset_0 model) as none."""
    params, spec, _ = _compile(tmp_path, "sample")
    tasks = {_norm(k): v for k, v in _steps(spec).items()}
    deps = {_norm(d) for d in tasks["model_5"]["dependentTasks"]}
    assert "model_4" in deps and not deps & {"model_0", "model_1", "model_2", "model_3"}
    assert params.register.candidates == ("model_1", "model_2", "model_3", "model_5", "model_6")
    # model_6 (the mixed variant, from scratch) waits for the split only
    m6 = {_norm(d) for d in tasks["model_6"]["dependentTasks"]}
    assert not m6 & {f"model_{i}" for i in range(6)}
