"""Submitting and scheduling against the KFP API (being rewritten against an HTTP test double)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kfp
import pytest

from pipelines import submit

ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------------------------
# pipelines/submit.py with a fake kfp.Client


class FakeClient:
    """Records the ``kfp.Client`` calls that submit.py makes."""

    def __init__(self, existing: dict[str, str] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.existing = existing or {}

    def _record(self, method: str, kwargs: dict[str, Any]) -> None:
        # The kwargs must fit the real client's method (kfp 2.17 names and parameters).
        inspect.signature(getattr(kfp.Client, method)).bind(self, **kwargs)
        self.calls.append((method, kwargs))

    def create_run_from_pipeline_package(self, **kwargs: Any) -> Any:
        self._record("create_run_from_pipeline_package", kwargs)
        return SimpleNamespace(run_id="run-123")

    def create_experiment(self, **kwargs: Any) -> Any:
        self._record("create_experiment", kwargs)
        return SimpleNamespace(experiment_id="exp-1")

    def list_recurring_runs(self, **kwargs: Any) -> Any:
        self._record("list_recurring_runs", kwargs)
        jobs = [
            SimpleNamespace(display_name=name, recurring_run_id=rid)
            for rid, name in self.existing.items()
        ]
        return SimpleNamespace(recurring_runs=jobs, next_page_token="")

    def create_recurring_run(self, **kwargs: Any) -> Any:
        self._record("create_recurring_run", kwargs)
        return SimpleNamespace(recurring_run_id="rr-new")

    def delete_recurring_run(self, recurring_run_id: str) -> dict[str, Any]:
        self._record("delete_recurring_run", {"recurring_run_id": recurring_run_id})
        return {}

    def kwargs_of(self, method: str) -> dict[str, Any]:
        (kwargs,) = [k for m, k in self.calls if m == method]
        return kwargs


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxrflow.config import load_params
    from pipelines.compile import compile_pipeline

    out = tmp_path_factory.mktemp("kfp") / "cxrflow-pipeline.yaml"
    return compile_pipeline(load_params(ROOT / "params.yaml", "smoke"), out)


def test_submit_run_calls_create_run_from_pipeline_package(package: Path) -> None:
    from cxrflow.config import params_from_kfp, params_hash

    fake = FakeClient()
    compiled = submit.package_params(package)
    run_id = submit.submit_run(
        None,
        package,
        ["train.epochs=2", "register.metric=accuracy"],
        experiment="cxrflow-test",
        run_name="r1",
        client=fake,
    )
    assert run_id == "run-123"
    kwargs = fake.kwargs_of("create_run_from_pipeline_package")
    assert kwargs["pipeline_file"] == str(package)
    assert kwargs["experiment_name"] == "cxrflow-test"
    assert kwargs["run_name"] == "r1"
    args = kwargs["arguments"]
    assert set(args) == {"params"}  # the whole resolved configuration, validated
    sent = params_from_kfp(args["params"])
    assert (sent.train.epochs, sent.register.metric) == (2, "accuracy")
    assert sent.profile == compiled.profile == "smoke"
    assert sent.train.image_size == compiled.train.image_size
    assert params_hash(sent) != params_hash(compiled)
    fake = FakeClient()
    submit.submit_run(None, package, [], client=fake)
    assert fake.kwargs_of("create_run_from_pipeline_package")["arguments"] == {}


def test_submit_run_validates_overrides_like_params_yaml(package: Path) -> None:
    from cxrflow.config import ParamsError

    with pytest.raises(ParamsError, match=r"train\.epochs"):
        submit.submit_run(None, package, ["train.epochs=0"], client=FakeClient())
    with pytest.raises(ParamsError, match=r"train\.epoch\b"):
        submit.submit_run(None, package, ["train.epoch=3"], client=FakeClient())
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        submit.submit_run(None, package, ["epochs"], client=FakeClient())
    with pytest.raises(FileNotFoundError):
        submit.submit_run(None, package.with_name("missing.yaml"), [], client=FakeClient())


def test_schedule_nightly_creates_a_six_field_cron_recurring_run(package: Path) -> None:
    from cxrflow.config import params_from_kfp

    fake = FakeClient()
    job_id = submit.schedule_nightly(
        None, package, params_overrides=["train.epochs=4"], client=fake
    )
    assert job_id == "rr-new"
    assert fake.kwargs_of("create_experiment")["name"] == submit.DEFAULT_EXPERIMENT
    kwargs = fake.kwargs_of("create_recurring_run")
    assert kwargs["cron_expression"] == "0 0 2 * * *"
    assert len(kwargs["cron_expression"].split()) == 6
    assert kwargs["experiment_id"] == "exp-1"
    assert kwargs["job_name"] == submit.DEFAULT_JOB_NAME
    assert kwargs["pipeline_package_path"] == str(package)
    assert params_from_kfp(kwargs["params"]["params"]).train.epochs == 4
    assert kwargs["max_concurrency"] == 1
    assert kwargs["no_catchup"] is True
    assert not [m for m, _ in fake.calls if m == "delete_recurring_run"]


def test_schedule_nightly_refuses_a_duplicate_unless_replace(package: Path) -> None:
    fake = FakeClient(existing={"rr-old": submit.DEFAULT_JOB_NAME, "rr-x": "other"})
    with pytest.raises(RuntimeError, match="already exists"):
        submit.schedule_nightly(None, package, client=fake)
    assert not [m for m, _ in fake.calls if m == "create_recurring_run"]
    fake = FakeClient(existing={"rr-old": submit.DEFAULT_JOB_NAME, "rr-x": "other"})
    assert submit.schedule_nightly(None, package, replace=True, client=fake) == "rr-new"
    methods = [m for m, _ in fake.calls]
    assert methods.index("create_recurring_run") < methods.index("delete_recurring_run")
    assert fake.kwargs_of("delete_recurring_run") == {"recurring_run_id": "rr-old"}


@pytest.mark.parametrize("cron", ["0 2 * * *", "0 0 2 * * * *", "nightly"])
def test_schedule_nightly_rejects_non_kfp_cron(package: Path, cron: str) -> None:
    with pytest.raises(ValueError, match="6 fields"):
        submit.schedule_nightly(None, package, cron=cron, client=FakeClient())


def test_host_comes_from_flag_or_env_never_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(submit.HOST_ENV, raising=False)
    with pytest.raises(ValueError, match="KFP_HOST"):
        submit.make_client(None)
    source = (ROOT / "pipelines" / "submit.py").read_text()
    assert not re.search(r"https?://(?!localhost:8080\b)[\w.-]+", source.split('"""', 2)[2])


def test_cli_submit_and_schedule(
    package: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cxrflow.cli import main
    from cxrflow.config import params_from_kfp

    fake = FakeClient()
    made: list[tuple[str | None, str | None]] = []

    def fake_make_client(host: str | None, namespace: str | None = None) -> FakeClient:
        made.append((host, namespace))
        return fake

    monkeypatch.setattr(submit, "make_client", fake_make_client)
    rc = main(
        [
            "--set",
            "train.epochs=3",
            "pipeline",
            "submit",
            "--host",
            "http://kfp.test:8080",
            "--package",
            str(package),
        ]
    )
    assert rc == 0 and "run-123" in capsys.readouterr().out
    assert made == [("http://kfp.test:8080", None)]
    args = fake.kwargs_of("create_run_from_pipeline_package")["arguments"]
    assert params_from_kfp(args["params"]).train.epochs == 3
    rc = main(["pipeline", "schedule", "--package", str(package), "--cron", "0 30 1 * * *"])
    assert rc == 0 and "rr-new" in capsys.readouterr().out
    assert fake.kwargs_of("create_recurring_run")["cron_expression"] == "0 30 1 * * *"
    rc = main(["pipeline", "schedule", "--package", str(package), "--cron", "0 2 * * *"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrflow: error:") and "6 fields" in err and err.count("\n") == 1
    rc = main(["--profile", "demo", "pipeline", "submit", "--package", str(package)])
    assert rc == 2 and "--profile applies when compiling" in capsys.readouterr().err
