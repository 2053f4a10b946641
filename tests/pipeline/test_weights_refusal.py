"""A pipeline whose pods could not get a model's pretrained weights (``weights_path`` null
without ``allow_random_init``, or a file on this machine): ``pipeline compile`` warns in one
line, ``pipeline submit`` and ``pipeline schedule create`` refuse in one line before any
network call (the KFP client factory is never called)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kfp
import pytest

import pipelines.compile
from cxrflow.config import load_params
from cxrflow.weights import UnreachableWeightsError
from pipelines import submit
from pipelines.compile import compile_pipeline

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"
REMOTE = [
    "models.model_3.weights_path=s3://cxrflow-weights/resnet50_notop.h5",
    f"models.model_3.weights_sha256={'ab' * 32}",
]
WARNING = "this pipeline cannot train on a cluster (models.model_3.weights_path is null)"


class Connected(Exception):
    """Raised by the fake client factory: the call got past every check to the network."""


@pytest.fixture(scope="module")
def paper_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper profile compiled: model_3 has no weights and no random init allowed."""
    return compile_pipeline(load_params(PARAMS), tmp_path_factory.mktemp("kfp") / "paper.yaml")


@pytest.fixture
def factory_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every call of the KFP client factory (each one raises :class:`Connected`)."""
    calls: list[Any] = []

    def make_client(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        raise Connected

    def no_client(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a kfp.Client was made")

    monkeypatch.setattr(submit, "make_client", make_client)
    monkeypatch.setattr(kfp.Client, "__init__", no_client)
    return calls


def test_compile_warns_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrflow.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "paper.yaml"
    assert main(["--params", str(PARAMS), "pipeline", "compile", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    lines = [ln for ln in (captured.out + captured.err).splitlines() if WARNING in ln]
    assert len(lines) == 1, captured
    assert "submit and schedule create refuse it" in lines[0]
    assert out.is_file()  # a warning: kfp.local can still run it here

    args = ["--params", str(PARAMS), "--profile", "smoke", "pipeline", "compile"]
    assert main([*args, "--output", str(tmp_path / "smoke.yaml")]) == 0
    captured = capsys.readouterr()
    assert "cannot train on a cluster" not in captured.out + captured.err


@pytest.mark.parametrize("action", ["submit", "schedule create"])
def test_submit_and_schedule_refuse_before_any_network_call(
    paper_package: Path, factory_calls: list[Any], action: str
) -> None:
    call = submit.submit_run if action == "submit" else submit.schedule_nightly
    with pytest.raises(UnreachableWeightsError) as err:
        call("http://127.0.0.1:9", paper_package)
    text = str(err.value)
    assert text.startswith(f"refusing to {action}: ") and "\n" not in text
    assert "models.model_3.weights_path is null" in text
    assert factory_calls == []
    # the same package with weights a pod can fetch gets past the check, to the client
    with pytest.raises(Connected):
        call("http://127.0.0.1:9", paper_package, params_overrides=REMOTE)
    assert len(factory_calls) == 1


@pytest.mark.parametrize("command", [["submit"], ["schedule", "create"]])
def test_cli_refuses_in_one_line_with_or_without_a_package(
    paper_package: Path,
    factory_calls: list[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    command: list[str],
) -> None:
    from cxrflow.cli import main

    host = ["--host", "http://127.0.0.1:9"]
    assert main(["pipeline", *command, "--package", str(paper_package), *host]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cxrflow: error: refusing to {' '.join(command)}: "), err
    assert err.count("\n") == 1 and "models.model_3.weights_path is null" in err

    def no_compile(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("compiled a pipeline that is refused anyway")

    monkeypatch.setattr(pipelines.compile, "compile_pipeline", no_compile)
    monkeypatch.chdir(tmp_path)
    assert main(["--params", str(PARAMS), "pipeline", *command, *host]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cxrflow: error: refusing to {' '.join(command)}: "), err
    assert err.count("\n") == 1
    assert factory_calls == []
