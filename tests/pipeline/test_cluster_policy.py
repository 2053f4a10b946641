"""The compiled pipeline's cluster policy: retries, resources, timeouts, placement, the checkpoint
volume, the MLflow login and pod label, and the caching of each task, read from the compiled
YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cxrflow.config import load_params
from cxrflow.steps import PIPELINE_RUN_ENV
from cxrflow.steps.registry import data_steps
from pipelines.compile import compile_pipeline
from pipelines.cxrflow_pipeline import (
    ALERT_ENV,
    GPU_NODE_SELECTOR,
    GPU_TOLERATION,
    IO_RETRY_STEPS,
    MLFLOW_AUTH_ENV,
    MLFLOW_CLIENT_LABEL,
    RUN_ID_FIELD,
    SECRET_NAME,
    cache_policy,
    cache_policy_changes,
    step_kind,
)

ROOT = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"
REGISTRY = ("data.registry=https://git.example.org/cxr-data.git", "data.sources={kermany: [raw/k]}")
SOURCES: dict[str, tuple[str, ...]] = {
    "phantom": (),
    "registry_at_commit": (*REGISTRY, f"data.version={SHA}"),
    "registry_at_tag": (*REGISTRY, "data.version=data-v1"),
    "registry_at_head": REGISTRY,
    "registry_at_short_sha": (*REGISTRY, f"data.version={SHA[:12]}"),
    "plain_folder": ("data.sources={kermany: [/data/chest_xray]}",),
}
INGEST_CACHED = {
    "phantom": True,
    "registry_at_commit": True,
    "registry_at_tag": False,
    "registry_at_head": False,
    "registry_at_short_sha": False,
    "plain_folder": False,
}
PLACEHOLDER = "{{$.pipeline_job_uuid}}"


class Compiled:
    """One compiled pipeline: each task (by step name) with its executor and platform config."""

    def __init__(self, path: Path) -> None:
        docs = list(yaml.safe_load_all(path.read_text()))
        self.spec, platform = docs[0], docs[1]
        self.kube = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        self.tasks: dict[str, dict[str, Any]] = {}
        for name, task in self.spec["root"]["dag"]["tasks"].items():
            comp = self.spec["components"][task["componentRef"]["name"]]
            if "dag" in comp:
                self.tasks.update({n.replace("-", "_"): t for n, t in comp["dag"]["tasks"].items()})
            else:
                self.tasks[name.replace("-", "_")] = task

    def _executor(self, step: str) -> str:
        comp = self.spec["components"][self.tasks[step]["componentRef"]["name"]]
        return str(comp["executorLabel"])

    def container(self, step: str) -> dict[str, Any]:
        return dict(self.spec["deploymentSpec"]["executors"][self._executor(step)]["container"])

    def kubernetes(self, step: str) -> dict[str, Any]:
        return dict(self.kube.get(self._executor(step), {}))

    def cached(self, step: str) -> bool:
        # KFP writes `cachingOptions: {}` for a task whose caching is off
        return bool(self.tasks[step].get("cachingOptions", {}).get("enableCache", False))


def _compile(tmp: Path, profile: str, overrides: tuple[str, ...] = ()) -> tuple[Any, Compiled]:
    params = load_params(ROOT / "params.yaml", profile, overrides)
    out = tmp / f"pipeline-{abs(hash((profile, overrides)))}.yaml"
    compile_pipeline(params, out)
    return params, Compiled(out)


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Compiled]:
    return _compile(tmp_path_factory.mktemp("kfp"), "paper")


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_enable_cache_exactly_where_inputs_pin_the_output(source: str, tmp_path: Path) -> None:
    params, compiled = _compile(tmp_path, "smoke", SOURCES[source])
    got = {step: compiled.cached(step) for step in compiled.tasks}
    expected = {step: False for step in compiled.tasks}
    expected |= {"ingest": INGEST_CACHED[source], "validate": True, "split": True}
    assert got == expected
    assert cache_policy(params) == expected
    assert params.data.is_pinned is INGEST_CACHED[source]


def test_the_cacheable_steps_take_no_per_run_input(paper) -> None:
    """KFP's cache key holds every input: the run id reaches the data steps from the pod."""
    _, compiled = paper
    for step in compiled.tasks:
        inputs = compiled.tasks[step]["inputs"].get("parameters", {})
        env = compiled.kubernetes(step).get("fieldPathAsEnv", [])
        if step in data_steps():
            assert set(inputs) == {"params"}, step
            assert env == [{"name": PIPELINE_RUN_ENV, "fieldPath": RUN_ID_FIELD}], step
        else:
            assert inputs["pipeline_run_id"]["runtimeValue"]["constant"] == PLACEHOLDER, step
            assert env == [], step


def test_training_retries_with_backoff_the_io_steps_less_the_gates_never(paper) -> None:
    params, compiled = paper
    train, io = params.cluster.retry.train, params.cluster.retry.io

    def policy(r: Any) -> dict[str, Any]:
        return {
            "maxRetryCount": r.num_retries,
            "backoffDuration": f"{r.backoff_seconds}s",
            "backoffFactor": r.backoff_factor,
            "backoffMaxDuration": f"{r.backoff_max_seconds}s",
        }

    assert train.num_retries > io.num_retries > 0
    assert train.backoff_seconds > 0 and train.backoff_factor > 1
    for step, task in compiled.tasks.items():
        got = task.get("retryPolicy")
        if step in params.models:
            assert got == policy(train), step
        elif step in IO_RETRY_STEPS:
            assert got == policy(io), step
        else:
            assert step in ("validate", "split")
            assert got is None, step
    assert set(compiled.tasks) - set(params.models) - {"validate", "split"} == set(IO_RETRY_STEPS)


def test_local_runs_compile_without_retries(tmp_path: Path) -> None:
    """kfp.local applies retry policies with their backoff: the local pipeline has none, so a
    failing local step fails at once instead of waiting minutes between attempts."""
    from kfp import compiler

    from pipelines.cxrflow_pipeline import build_pipeline

    params = load_params(ROOT / "params.yaml", "smoke")
    out = tmp_path / "local.yaml"
    compiler.Compiler().compile(build_pipeline(params, retries=False), package_path=str(out))
    compiled = Compiled(out)
    assert all(task.get("retryPolicy") is None for task in compiled.tasks.values())


def test_every_task_requests_and_limits_cpu_and_memory(paper) -> None:
    params, compiled = paper
    kinds = set()
    for step in compiled.tasks:
        res = compiled.container(step)["resources"]
        want = getattr(params.cluster.resources, step_kind(params, step))
        kinds.add(step_kind(params, step))
        assert res["resourceCpuRequest"] == want.cpu_request, step
        assert res["resourceCpuLimit"] == want.cpu_limit, step
        assert res["resourceMemoryRequest"] == want.memory_request, step
        assert res["resourceMemoryLimit"] == want.memory_limit, step
        assert float(res["cpuRequest"]) <= float(res["cpuLimit"]), step
        assert float(res["memoryRequest"]) <= float(res["memoryLimit"]), step
        accel = res.get("accelerator", {})
        if step in params.models:
            assert accel["resourceType"] == "nvidia.com/gpu", step
            assert accel["resourceCount"] == "1", step
        else:
            assert not accel, step
    assert kinds == {"data", "train", "evaluate", "record"}


def test_cpu_tasks_never_tolerate_the_gpu_taint(paper) -> None:
    params, compiled = paper
    key, value = GPU_NODE_SELECTOR
    for step in compiled.tasks:
        kube = compiled.kubernetes(step)
        if step in params.models:
            assert kube["tolerations"] == [GPU_TOLERATION], step
            assert kube["nodeSelector"]["labels"] == {key: value}, step
            assert "nodeAffinity" not in kube, step
        else:
            assert "tolerations" not in kube, step
            assert "nodeSelector" not in kube, step
            (term,) = kube["nodeAffinity"]
            assert term["matchExpressions"] == [
                {"key": key, "operator": "NotIn", "values": [value]}
            ], step


def test_training_tasks_mount_the_checkpoint_volume(paper, tmp_path: Path) -> None:
    params, compiled = paper
    volume = params.cluster.checkpoints
    assert volume.pvc and volume.mount_path.startswith("/")
    for step in compiled.tasks:
        mounts = compiled.kubernetes(step).get("pvcMount", [])
        if step in params.models:
            assert [(m["constant"], m["mountPath"]) for m in mounts] == [
                (volume.pvc, volume.mount_path)
            ], step
            given = compiled.tasks[step]["inputs"]["parameters"]["checkpoint_volume"]
            assert given["runtimeValue"]["constant"] == volume.mount_path, step
        else:
            assert mounts == [], step
    # no volume: nothing mounted, and the steps keep their checkpoints in their output
    params, compiled = _compile(tmp_path, "smoke", ("cluster.checkpoints.pvc=null",))
    for step in params.model_keys:
        assert "pvcMount" not in compiled.kubernetes(step)
        given = compiled.tasks[step]["inputs"]["parameters"]["checkpoint_volume"]
        assert given["runtimeValue"]["constant"] == ""


def test_every_task_has_the_timeout_of_its_kind_from_params(paper) -> None:
    params, compiled = paper
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["cluster"]["timeouts"]
    assert params.cluster.timeouts.model_dump() == raw  # params.yaml, not a code default
    for step in compiled.tasks:
        deadline = compiled.kubernetes(step)["activeDeadlineSeconds"]
        assert int(deadline) == raw[step_kind(params, step)], step
    assert "finalize" in compiled.tasks  # the exit handler too
    longest = max(raw.values())
    assert raw["train"] == longest
    assert {
        s for s in compiled.tasks if int(compiled.kubernetes(s)["activeDeadlineSeconds"]) == longest
    } == set(params.model_keys)


def test_timeouts_keep_training_longest() -> None:
    with pytest.raises(ValueError, match="exceeds train"):
        load_params(ROOT / "params.yaml", "smoke", ("cluster.timeouts.evaluate=200000",))
    with pytest.raises(ValueError):
        load_params(ROOT / "params.yaml", "smoke", ("cluster.timeouts.data=0",))


def _secret_env(kube: dict[str, Any]) -> dict[str, tuple[str, str, bool]]:
    """env var -> (Secret, key, optional) of a task's secretAsEnv."""
    return {
        m["envVar"]: (ref["secretName"], m["secretKey"], ref.get("optional", False))
        for ref in kube.get("secretAsEnv", [])
        for m in ref["keyToEnv"]
    }


def test_every_task_logs_in_to_mlflow_and_carries_the_client_label(paper) -> None:
    """The MLflow server runs with basic auth and admits only pods with the label
    (infra/k8s/base: mlflow-deployment.yaml, networkpolicy.yaml)."""
    _, compiled = paper
    key, value = MLFLOW_CLIENT_LABEL
    for step in compiled.tasks:
        kube = compiled.kubernetes(step)
        assert kube["podMetadata"]["labels"] == {key: value}, step
        env = _secret_env(kube)
        for var, secret_key in MLFLOW_AUTH_ENV.items():
            assert env[var] == (SECRET_NAME, secret_key, False), step  # required: no anonymous
        alert = {v: env[v] for v in ALERT_ENV if v in env}
        if step == "finalize":  # only the exit handler posts alerts; the key is optional
            assert alert == {v: (SECRET_NAME, k, True) for v, k in ALERT_ENV.items()}
        else:
            assert alert == {}, step


def test_cluster_params_are_what_gets_compiled(tmp_path: Path) -> None:
    overrides = (
        "cluster.retry.train.num_retries=5",
        "cluster.resources.record.memory_limit=3Gi",
        "cluster.checkpoints.mount_path=/ckpt",
        "cluster.timeouts.train=90000",
        "cluster.timeouts.record=600",
    )
    _, compiled = _compile(tmp_path, "smoke", overrides)
    assert compiled.tasks["model_0"]["retryPolicy"]["maxRetryCount"] == 5
    assert compiled.container("register")["resources"]["resourceMemoryLimit"] == "3Gi"
    assert compiled.kubernetes("model_1")["pvcMount"][0]["mountPath"] == "/ckpt"
    assert compiled.kubernetes("model_1")["activeDeadlineSeconds"] == "90000"
    assert compiled.kubernetes("finalize")["activeDeadlineSeconds"] == "600"
    assert compiled.kubernetes("register")["activeDeadlineSeconds"] == "600"


def test_cache_policy_changes_name_what_a_submit_override_would_change() -> None:
    pinned = load_params(ROOT / "params.yaml", "smoke", SOURCES["registry_at_commit"])
    other_sha = load_params(ROOT / "params.yaml", "smoke", (*REGISTRY, f"data.version={'f' * 40}"))
    tag = load_params(ROOT / "params.yaml", "smoke", SOURCES["registry_at_tag"])
    assert cache_policy_changes(pinned, other_sha) == {}
    assert cache_policy_changes(pinned, tag) == {"ingest": (True, False)}
    assert cache_policy_changes(tag, pinned) == {"ingest": (False, True)}
    fifth = load_params(
        ROOT / "params.yaml",
        "smoke",
        ("models.model_4={dataset: dataset_1, architecture: small_cnn, init: model_1}",),
    )
    smoke = load_params(ROOT / "params.yaml", "smoke")
    assert cache_policy_changes(smoke, fifth) == {}  # a new model is never cached
