"""What a newcomer meets after ``make run``: no champion (the phantom keeps its shortcut, so no
candidate passes the audit), ``predict`` / ``export`` say why and give the command with the
challenger; ``predict`` reports each failed file and exits non-zero, and needs no params.yaml
when given a model; the MLflow experiment is a model-training one and runs show their Source."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cxrflow import names
from cxrflow.cli.program import main

ROOT = Path(__file__).resolve().parents[2]
NAME = "cxrflow-covid-cxr"
REASON = (
    "no candidate passed the shortcut audit (model_1, model_2, model_3 failed); model_1 is "
    "registered as challenger and the champion is unchanged"
)
CLASSES = ["normal", "bacterial", "covid"]


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project after `make run` on the phantom: version 1 is the challenger, no champion."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model(NAME)
    (tmp_path / "model").mkdir()
    mv = client.create_model_version(NAME, (tmp_path / "model").as_uri())
    tags = {
        names.TAG_PROMOTION_REASON: REASON,
        names.TAG_MODEL_KEY: "model_1",
        names.TAG_DATA_VERSION: "phantom-seed20200927",
    }
    for key, value in tags.items():
        client.set_model_version_tag(NAME, mv.version, key, value)
    client.set_registered_model_alias(NAME, "challenger", mv.version)
    return tmp_path


def test_predict_without_champion_says_why_and_gives_the_challenger_command(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "predict", "--json", "x-ray 1.png")
    assert code == 2 and out == "", err
    assert err.count("\n") == 1 and err.startswith("cxrflow: error: ")
    assert f"models:/{NAME}@champion: there is no champion: {REASON}" in err
    assert "phantom" in err
    assert err.rstrip().endswith(
        f"version 1, model_1) anyway: cxrflow predict --model-uri models:/{NAME}@challenger "
        "--json 'x-ray 1.png'"
    )


def test_export_without_champion_says_why_and_gives_the_challenger_command(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(
        capsys, "export", "--dataset", "data/dataset", "--splits", "data/splits", "--out", "o"
    )
    assert code == 2
    assert REASON in err
    assert err.rstrip().endswith(
        f"cxrflow export --dataset data/dataset --splits data/splits --out o --model "
        f"models:/{NAME}@challenger"
    )


class _Uniform:
    """Keras' predict(x, verbose=0), one uniform row per image."""

    def predict(self, x: np.ndarray, verbose: int = 0) -> np.ndarray:
        return np.full((len(x), len(CLASSES)), 1 / len(CLASSES), np.float32)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A model given by URI in a folder with no params.yaml; calls to the loader recorded."""
    import cxrflow.predict

    calls: list[str] = []

    def load(model_uri: str | None, onnx: Any, default_uri: str) -> tuple[Any, list[str], int]:
        calls.append(str(model_uri or onnx))
        return _Uniform(), CLASSES, 16

    monkeypatch.setattr(cxrflow.predict, "load_predictor", load)
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    return calls


def test_predict_with_a_model_uri_needs_no_params_yaml(
    served: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert not Path("params.yaml").exists()
    code, out, err = _run(capsys, "predict", "--model-uri", "runs:/abc/model", "good.png")
    assert (code, err) == (0, "")
    assert "good.png" in out and served == ["runs:/abc/model"]
    code, out, err = _run(capsys, "predict", "--onnx", "export-dir", "good.png")
    assert (code, err) == (0, "") and served[-1] == "export-dir"


def test_predict_exits_non_zero_and_lists_each_failure(
    served: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("predict", "--model-uri", "runs:/abc/model", "--json")
    code, out, err = _run(capsys, *args, "good.png", "broken.png", "missing.png")
    assert code == 1
    got = json.loads(out)
    assert [Path(p["path"]).name for p in got] == ["good.png", "broken.png", "missing.png"]
    assert got[0]["error"] is None and got[0]["predicted"] in CLASSES
    assert all(p["error"] and p["predicted"] is None for p in got[1:])
    lines = err.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("cxrflow: error: ") for line in lines)
    assert "error: error:" not in err
    assert "broken.png" in lines[0] and "missing.png" in lines[1]
    # a table too: the good file printed, the bad ones on stderr, still a failure
    code, out, err = _run(capsys, "predict", "--model-uri", "m", "good.png", "missing.png")
    assert code == 1 and "good.png" in out and "missing.png" not in out
    assert err.startswith("cxrflow: error: ") and err.count("\n") == 1


def test_mlflow_experiment_is_model_training_and_runs_have_a_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from cxrflow import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.setenv("CXRFLOW_GIT_COMMIT", "0123456789abcdef0123456789abcdef01234567-dirty")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/cxrflow", "--params", "p.yaml", "ingest"])
    exp_id = tracking.configure("newcomer")
    client = MlflowClient()
    exp = client.get_experiment(exp_id)
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    parent = tracking.get_or_create_parent_run("newcomer", "p-1", {}, {}, settle_seconds=0)
    with tracking.model_run("newcomer", parent, "p-1", "model_1", {}, {}) as child:
        pass
    for run_id in (parent, child):
        tags = client.get_run(run_id).data.tags
        assert tags["mlflow.source.name"] == "cxrflow ingest"
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.git.commit"] == "0123456789abcdef0123456789abcdef01234567"
    # an experiment made before (no kind) gets it when cxrflow next uses it
    client.delete_experiment_tag(exp_id, tracking.EXPERIMENT_KIND_TAG)
    tracking.configure("newcomer")
    assert client.get_experiment(exp_id).tags[tracking.EXPERIMENT_KIND_TAG] == (
        "custom_model_development"
    )


def test_report_and_export_find_the_newest_complete_local_run(tmp_path, monkeypatch) -> None:
    """`cxrflow report` and `cxrflow export` after `make run` need no paths: they take the
    newest complete run under runs/kfp (an unfinished newer one is skipped), and say clearly
    when there is none."""
    import os

    from cxrflow.report import RunOutputs

    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"no complete cxrflow run under runs/kfp: run `make run`"
    ):
        RunOutputs.latest()
    for age, (run, steps) in enumerate(
        [
            ("cxrflow-new-unfinished", ("ingest/dataset", "split/splits")),
            ("cxrflow-done", ("ingest/dataset", "split/splits", "evaluate/evaluation")),
            ("cxrflow-old", ("ingest/dataset", "split/splits", "evaluate/evaluation")),
        ]
    ):
        for step in steps:
            (tmp_path / "runs/kfp" / run / step).mkdir(parents=True)
        os.utime(tmp_path / "runs/kfp" / run, (1e9 - age * 100, 1e9 - age * 100))
    run_dir, outputs = RunOutputs.latest()
    assert run_dir.name == "cxrflow-done"
    assert outputs.splits == Path("runs/kfp/cxrflow-done/split/splits")


def test_phantoms_made_with_other_settings_are_other_data_versions() -> None:
    """The demo and smoke phantoms (620 and 72 images) were both ``phantom-seed20200927``:
    compare put their runs under one data version."""
    from cxrflow.config import load_params
    from cxrflow.steps.ingest import phantom_version

    root = Path(__file__).resolve().parents[2]
    demo, smoke = (load_params(root / "params.yaml", p).data.synth for p in ("demo", "smoke"))
    assert phantom_version(demo).startswith("phantom-seed20200927-")
    assert phantom_version(demo) != phantom_version(smoke)
    assert phantom_version(demo) == phantom_version(demo.model_copy())  # stable
