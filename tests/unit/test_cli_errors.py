"""Every failure a user can cause ends with one `cxrflow: error:` line and a non-zero exit;
`--debug` shows the traceback. Run as a user would: the installed program in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARAMS = str(ROOT / "params.yaml")
SOURCES = "data.sources={kermany: [raw/kermany]}"


def _cxrflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "cxrflow.cli", "--params", PARAMS, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _one_error_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode != 0, res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines, "no message"
    last = lines[-1]
    assert last.startswith("cxrflow: error: "), res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in last, last
    return last


def test_predict_with_nothing_registered_creates_no_database(tmp_path: Path) -> None:
    res = _cxrflow("predict", "x.png", cwd=tmp_path)
    _one_error_line(res, "nothing has been trained here yet", "make run")
    assert not (tmp_path / "mlruns.db").exists()
    assert list(tmp_path.iterdir()) == []


def test_data_commands_on_a_path_that_is_no_registry(tmp_path: Path) -> None:
    for cmd in (["data", "versions"], ["data", "rollback", "v1"]):
        res = _cxrflow("--set", SOURCES, *cmd, "--registry", str(tmp_path), cwd=tmp_path)
        _one_error_line(res, "not a data registry", "--registry")


def test_unknown_data_version(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@localhost",
    }
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True, timeout=120)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=tmp_path, env=env, check=True)
    res = _cxrflow("--set", SOURCES, "data", "rollback", "data-v9", "--registry", ".", cwd=tmp_path)
    _one_error_line(res, "unknown data version 'data-v9'", "cxrflow data versions")


def test_pinned_data_version_without_a_registry_fails_before_any_step(tmp_path: Path) -> None:
    res = _cxrflow("pipeline", "run", "--local", "--data-version", "data-v1", cwd=tmp_path)
    _one_error_line(res, "data.version", "data.registry")
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "mlruns.db").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "train.epochs=0", "params", "show"], "train.epochs"),
        (["--profile", "huge", "params", "show"], "unknown profile 'huge'"),
        (["--set", "train.epochs", "params", "show"], "KEY=VALUE"),
        (["train", "model_9", "--dataset", "d", "--splits", "s", "--out", "o"], "models.model_9"),
        (["validate", "--dataset", "nowhere", "--out", "o"], "nowhere"),
        (["pipeline", "run"], "--local"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    _one_error_line(_cxrflow(*args, cwd=tmp_path), needle)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    res = _cxrflow("--debug", "--set", "train.epochs=0", "params", "show", cwd=tmp_path)
    assert res.returncode != 0
    assert "Traceback" in res.stderr and "ParamsError" in res.stderr


def test_params_show_and_schema(tmp_path: Path) -> None:
    import json

    import yaml

    res = _cxrflow("--profile", "smoke", "--set", "train.epochs=3", "params", "show", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert shown["profile"] == "smoke" and shown["train"]["epochs"] == 3
    res = _cxrflow("params", "show", "--format", "yaml", cwd=tmp_path)
    assert yaml.safe_load(res.stdout)["train"]["image_size"] == 224
    res = _cxrflow("params", "schema", "--output", str(tmp_path / "s.json"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    schema = json.loads((tmp_path / "s.json").read_text())
    assert {"train", "models", "profiles", "profile"} <= set(schema["properties"])


def test_help_is_quick_and_lists_every_step(tmp_path: Path) -> None:
    res = _cxrflow("--help", cwd=tmp_path)
    assert res.returncode == 0
    for command in ("ingest", "validate", "split", "train", "evaluate", "register", "pipeline"):
        assert command in res.stdout
    for heavy in ("tensorflow", "mlflow", "great_expectations", "kfp"):
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, cxrflow.cli; "
                f"sys.exit(1 if any(m == '{heavy}' or m.startswith('{heavy}.') "
                "for m in sys.modules) else 0)",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert probe.returncode == 0, f"importing the CLI imports {heavy}"


def test_the_ui_hint_after_a_run_is_the_tracking_server_itself() -> None:
    from pipelines.cli import _ui_hint

    assert _ui_hint("http://127.0.0.1:15000") == "MLflow UI: http://127.0.0.1:15000"
    local = _ui_hint("sqlite:////tmp/x/mlruns.db")
    assert "mlflow ui --backend-store-uri sqlite:////tmp/x/mlruns.db" in local
    # with the experiment: its runs table, not MLflow 3's GenAI overview
    runs = "#/experiments/7/runs?workflowType=machine_learning"
    assert _ui_hint("http://mlflow:5000/", "7") == f"MLflow UI: http://mlflow:5000/{runs}"
    assert f"open http://127.0.0.1:5000/{runs})" in _ui_hint("sqlite:////tmp/x/mlruns.db", "7")


def test_the_end_of_a_run_says_what_to_type_next(tmp_path: Path) -> None:
    from pipelines.cli import _next_steps

    (tmp_path / "ingest/dataset/images/0a").mkdir(parents=True)
    text = _next_steps(tmp_path, {"model_name": "m", "alias": "challenger"})
    assert (
        f"cxrflow predict --model-uri models:/m@challenger {tmp_path}/ingest/dataset/images/0a"
        in text
    )
    assert "cxrflow compare" in text and "cxrflow report" in text


@pytest.mark.slow
def test_a_failing_step_run_by_hand_prints_its_error_first(tmp_path: Path) -> None:
    """TensorFlow's start-up lines (absl's notice, oneDNN) do not precede the one error line."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "TF_CPP_", "TF_ENABLE_ONEDNN"))
    }
    step = ["train", "model_0", "--dataset", "nowhere", "--splits", "nowhere", "--out", "o"]
    res = subprocess.run(
        [sys.executable, "-m", "cxrflow.cli", "--params", PARAMS, *step],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 2, res.stderr
    first = next(line for line in res.stderr.splitlines() if line.strip())
    assert first.startswith("cxrflow: error: "), res.stderr
    # and the filter itself, whether or not the step imports TensorFlow before it fails
    probe = (
        "import sys\n"
        "from cxrflow.cli.tensorflow_log import quiet_tensorflow_import\n"
        "with quiet_tensorflow_import():\n"
        "    import tensorflow\n"
        "print('cxrflow: error: after the import', file=sys.stderr)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines()[0] == "cxrflow: error: after the import", res.stderr


def test_a_run_says_how_to_continue_it_if_it_is_cut() -> None:
    from pipelines.cli import _resume_hint

    assert _resume_hint("local-1", False, "/ckpt") == (
        "pipeline run id local-1; if it is cut: cxrflow pipeline run --local --resume local-1"
    )
    # without a durable checkpoint root a cut run starts its training again: said, not hidden
    assert "train.checkpoint_root is not set" in _resume_hint("local-1", False, None)
    assert _resume_hint("local-1", True, "/ckpt") == (
        "pipeline run id local-1 (resumed; checkpoints in /ckpt)"
    )
