"""What the steps' containers of ``pipeline run --local --containers`` get (pure parts)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipelines.containers import (
    CONTAINER_LABEL,
    ContainerError,
    container_environment,
    container_run_args,
    grant_group,
    image_env,
    image_user,
    pod_env_keys,
    require_tracking_server,
)


def test_the_pods_secret_and_config_keys_are_the_containers() -> None:
    keys = pod_env_keys()
    for key in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_S3_ENDPOINT_URL",
    ):
        assert key in keys


def test_environment_comes_from_one_place_and_the_run() -> None:
    environ = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:1",
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": "pw",
        "AWS_ACCESS_KEY_ID": "",  # unset: left out, as an optional Secret key is
        "HOME": "/root",
        "PATH": "/usr/bin",
    }
    run = {"CXRFLOW_PIPELINE_RUN_ID": "local-1", "CXRFLOW_RUNNER_CHANNEL": "/r/.cxrflow/c"}
    env = container_environment(run, environ, git_commit="abc")
    assert env == {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:1",
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": "pw",
        "CXRFLOW_PIPELINE_RUN_ID": "local-1",
        "CXRFLOW_RUNNER_CHANNEL": "/r/.cxrflow/c",
        "GIT_PYTHON_REFRESH": "quiet",
        "CXRFLOW_GIT_COMMIT": "abc",
    }
    # the run's own variables win
    env = container_environment({"MLFLOW_TRACKING_URI": "http://x"}, environ, git_commit="a")
    assert env["MLFLOW_TRACKING_URI"] == "http://x"


def test_run_args_are_a_pods() -> None:
    args = container_run_args("10001:10001", {"A": "1"}, "s1")
    assert args["user"] == "10001:10001"
    assert args["read_only"] is True
    assert set(args["tmpfs"]) == {"/tmp"}
    assert args["cap_drop"] == ["ALL"]
    assert args["network_mode"] == "host"
    assert args["environment"] == {"A": "1"}
    assert args["labels"] == {CONTAINER_LABEL: "s1"}
    assert "volumes" not in args  # kfp.local mounts the pipeline root, nothing else


def test_image_config_reading() -> None:
    assert image_user({"User": "10001:10001"}) == (10001, 10001)
    assert image_user({"User": "10001"}) == (10001, 10001)
    assert image_user({"User": "cxrflow"}) is None
    assert image_user({}) is None
    config = {"Env": ["PATH=/bin", "CXRFLOW_GIT_COMMIT=abc=d"]}
    assert image_env(config, "CXRFLOW_GIT_COMMIT") == "abc=d"
    assert image_env(config, "NOPE") == ""


def test_grant_group_opens_to_the_group_only(tmp_path: Path) -> None:
    folder = tmp_path / "kfp"
    folder.mkdir(mode=0o755)
    grant_group(folder, os.getgid())
    mode = stat.S_IMODE(folder.stat().st_mode)
    assert mode & 0o070 == 0o070
    assert not mode & 0o002
    assert folder.stat().st_uid == os.getuid()


def test_a_file_store_is_refused() -> None:
    with pytest.raises(ContainerError, match="needs an MLflow tracking server"):
        require_tracking_server("sqlite:///mlruns.db")
    require_tracking_server("http://127.0.0.1:5000")
