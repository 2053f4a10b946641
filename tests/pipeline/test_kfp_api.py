"""Submitting, scheduling and listing runs with the real ``kfp.Client`` against a test double.

``kfp_api_double.KfpApiDouble`` is a test double of the KFP v2beta1 REST API (an HTTP server on
127.0.0.1), not Kubeflow Pipelines: it stores what it is sent and records every request. The
tests assert on the requests the real client sends for ``pipelines.submit`` and for the
``cxrflow pipeline ...`` commands: the package and the whole resolved ``params`` of each run,
the six-field cron, concurrency and catch-up of a schedule, the endpoints of enable, disable
and delete, the bearer token, the namespace and the kubeconfig route.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kfp
import kfp.client.client as kfp_client_module
import pytest
import yaml
from kfp_api_double import KfpApiDouble, Request

from pipelines import submit

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = [
    "data.sources={kermany: [raw/chest_xray]}",
    "data.registry=https://git.example/cxr-data.git",
]
PINNED = [*REGISTRY, "data.version=v2"]  # a tag: ingest is not cached, as in the package


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxrflow.config import load_params
    from pipelines.compile import compile_pipeline

    out = tmp_path_factory.mktemp("kfp") / "cxrflow-pipeline.yaml"
    params = load_params(ROOT / "params.yaml", "smoke", [*REGISTRY, "data.version=v1"])
    return compile_pipeline(params, out)


@pytest.fixture
def kfp_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[KfpApiDouble]:
    """The API double, with ``KFP_HOST`` pointing at it and no other KFP setting around."""
    for name in (
        submit.HOST_ENV,
        submit.NAMESPACE_ENV,
        submit.TOKEN_ENV,
        submit.KUBE_CONTEXT_ENV,
        "KUBERNETES_SERVICE_HOST",
        *(v for k, v in vars(kfp_client_module).items() if k.startswith("KF_PIPELINES_")),
    ):
        monkeypatch.delenv(name, raising=False)
    # kfp.Client reads ~/.config/kfp/context.json (namespace, auth cookie): not the developer's
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    with KfpApiDouble() as double:
        monkeypatch.setenv(submit.HOST_ENV, double.url)
        yield double


def one(double: KfpApiDouble, method: str, path: str) -> Request:
    """The single recorded request with that method and path."""
    found = double.sent(method, path)
    assert len(found) == 1, [(r.method, r.path) for r in double.requests]
    return found[0]


def package_spec(package: Path) -> dict[str, Any]:
    """The pipeline spec as ``kfp.Client`` sends it inline (with a platform spec if any)."""
    docs = [d for d in yaml.safe_load_all(package.read_text()) if d]
    return docs[0] if len(docs) == 1 else {"pipeline_spec": docs[0], "platform_spec": docs[1]}


def sent_params(body: dict[str, Any]) -> Any:
    from cxrflow.config import params_from_kfp

    assert set(body["runtime_config"]["parameters"]) == {"params"}
    return params_from_kfp(body["runtime_config"]["parameters"]["params"])


# ------------------------------------------------------------------------- submit a run


def test_submit_run_sends_the_package_and_the_whole_resolved_params(
    package: Path, kfp_api: KfpApiDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrflow.config import params_hash, params_to_kfp

    monkeypatch.setenv(submit.TOKEN_ENV, "s3cret-token")
    monkeypatch.setenv(submit.NAMESPACE_ENV, "team-a")
    monkeypatch.setenv(submit.SERVICE_ACCOUNT_ENV, "team-a-runner")
    compiled = submit.package_params(package)
    run_id = submit.submit_run(
        None,
        package,
        ["train.epochs=2", "register.metric=accuracy"],
        experiment="cxrflow-test",
        run_name="r1",
    )

    lookup = one(kfp_api, "GET", "/experiments")
    assert json.loads(lookup.query["filter"])["predicates"] == [
        {"operation": 1, "key": "display_name", "stringValue": "cxrflow-test"}
    ]
    assert lookup.query["namespace"] == "team-a"
    created = one(kfp_api, "POST", "/experiments").body
    assert created == {"display_name": "cxrflow-test", "namespace": "team-a"}
    run = one(kfp_api, "POST", "/runs").body
    assert run["display_name"] == "r1"
    assert run["service_account"] == "team-a-runner"  # $KFP_SERVICE_ACCOUNT
    assert run["experiment_id"] == kfp_api.runs[run_id]["experiment_id"]
    assert run["pipeline_spec"] == package_spec(package)  # the compiled package, inline
    sent = sent_params(run)  # the whole resolved configuration, validated, overrides applied
    assert (sent.train.epochs, sent.register.metric) == (2, "accuracy")
    assert sent.profile == compiled.profile == "smoke"
    assert sent.train.image_size == compiled.train.image_size
    assert params_hash(sent) != params_hash(compiled)
    assert {r.headers.get("authorization") for r in kfp_api.requests} == {"Bearer s3cret-token"}
    assert not kfp_api.sent("GET", "/healthz")  # a namespace spares the client's health check

    # without overrides the run still carries the whole configuration: the package's own
    kfp_api.requests.clear()
    submit.submit_run(None, package, [], experiment="cxrflow-test")
    assert not kfp_api.sent("POST", "/experiments")  # found by name, not created twice
    run = one(kfp_api, "POST", "/runs").body
    assert run["runtime_config"]["parameters"] == {"params": params_to_kfp(compiled)}
    assert re.fullmatch(r"cxrflow-\d{8}-\d{6}", run["display_name"])


def test_overrides_are_validated_like_params_yaml_before_anything_is_sent(
    package: Path, kfp_api: KfpApiDouble
) -> None:
    from cxrflow.config import ParamsError

    with pytest.raises(ParamsError, match=r"train\.epochs"):
        submit.submit_run(None, package, ["train.epochs=0"])
    with pytest.raises(ParamsError, match=r"train\.epoch\b"):
        submit.submit_run(None, package, ["train.epoch=3"])
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        submit.schedule_nightly(None, package, params_overrides=["epochs"])
    with pytest.raises(FileNotFoundError):
        submit.submit_run(None, package.with_name("missing.yaml"), [])
    assert kfp_api.requests == []


def test_the_double_takes_the_real_clients_multipart_upload(
    package: Path, kfp_api: KfpApiDouble
) -> None:
    """cxrflow sends its package inline with each run and schedule (what the client does with
    ``pipeline_package_path``), never uploads it; this keeps the double's upload honest."""
    client = submit.make_client()
    pipeline = client.upload_pipeline(str(package), pipeline_name="cxrflow")
    version = client.upload_pipeline_version(str(package), "v2", pipeline_id=pipeline.pipeline_id)
    upload = one(kfp_api, "POST", "/pipelines/upload")
    assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert upload.query == {"name": "cxrflow"}
    assert upload.body["uploadfile"]["content"] == package.read_bytes()
    new = one(kfp_api, "POST", "/pipelines/upload_version")
    assert new.query == {"name": "v2", "pipelineid": pipeline.pipeline_id}
    stored = kfp_api.pipeline_versions[version.pipeline_version_id]["pipeline_spec"]
    assert stored == next(yaml.safe_load_all(package.read_text()))


def test_an_override_of_what_is_compiled_is_refused_before_anything_is_sent(
    package: Path, kfp_api: KfpApiDouble
) -> None:
    """Caching, the task graph and the cluster section live in the compiled YAML: an override
    of them would be ignored by KFP, so it is refused with the command that recompiles."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    refused = {
        f"data.version={commit}": "caching of ingest: compiled False",
        "cluster.retry.train.num_retries=0": "cluster",
        "register.candidates=[model_1]": "register.candidates",
    }
    for override, reason in refused.items():
        with pytest.raises(ValueError, match="compiled for another configuration") as err:
            submit.submit_run(None, package, [override])
        assert reason in str(err.value)
        assert f"--set {override} pipeline compile" in str(err.value)
    assert kfp_api.requests == []


# --------------------------------------------------------------------------- schedules


def test_schedule_create_sends_a_six_field_cron_max_concurrency_and_no_catchup(
    package: Path, kfp_api: KfpApiDouble
) -> None:
    job_id = submit.schedule_nightly(None, package, params_overrides=["train.epochs=4", *PINNED])
    assert one(kfp_api, "POST", "/experiments").body["display_name"] == submit.DEFAULT_EXPERIMENT
    listed = one(kfp_api, "GET", "/recurringruns")  # the duplicate-name check
    experiment_id = listed.query["experiment_id"]
    body = one(kfp_api, "POST", "/recurringruns").body
    assert body["experiment_id"] == experiment_id
    assert body["display_name"] == submit.DEFAULT_JOB_NAME
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["service_account"] == submit.DEFAULT_SERVICE_ACCOUNT
    assert body["pipeline_spec"] == package_spec(package)
    sent = sent_params(body)
    assert (sent.train.epochs, sent.data.version) == (4, "v2")
    assert kfp_api.recurring_runs[job_id]["status"] == "ENABLED"

    kfp_api.requests.clear()
    submit.schedule_nightly(
        None,
        package,
        cron="0 30 1 * * 1-5",
        job_name="weekdays",
        max_concurrency=2,
        catchup=True,
        service_account="",
    )
    body = one(kfp_api, "POST", "/recurringruns").body
    assert not body.get("service_account")  # "" names none: KFP's own pipeline-runner
    assert body["trigger"]["cron_schedule"]["cron"] == "0 30 1 * * 1-5"
    assert (body["max_concurrency"], body["no_catchup"]) == (2, False)
    with pytest.raises(ValueError, match="max_concurrency"):
        submit.schedule_nightly(None, package, job_name="x", max_concurrency=0)


def test_schedule_create_refuses_a_duplicate_name_unless_replace(
    package: Path, kfp_api: KfpApiDouble
) -> None:
    old = submit.schedule_nightly(None, package)
    with pytest.raises(RuntimeError, match=f"already exists.*{old}"):
        submit.schedule_nightly(None, package)
    assert len(kfp_api.sent("POST", "/recurringruns")) == 1
    kfp_api.requests.clear()
    new = submit.schedule_nightly(None, package, replace=True)
    calls = [(r.method, r.path.rsplit("/", 1)[-1]) for r in kfp_api.requests]
    assert calls.index(("POST", "recurringruns")) < calls.index(("DELETE", old))
    assert set(kfp_api.recurring_runs) == {new}


@pytest.mark.parametrize("cron", ["0 2 * * *", "0 0 2 * * * *", "nightly"])
def test_schedule_rejects_a_non_kfp_cron(package: Path, kfp_api: KfpApiDouble, cron: str) -> None:
    hint = "'0 0 2 \\* \\* \\*'" if cron == "0 2 * * *" else "sec min hour"
    with pytest.raises(ValueError, match=f"6 fields.*{hint}"):
        submit.schedule_nightly(None, package, cron=cron)
    assert kfp_api.requests == []


def test_schedules_list_enable_disable_delete_by_name_or_id(
    package: Path, kfp_api: KfpApiDouble
) -> None:
    nightly = submit.schedule_nightly(None, package, params_overrides=PINNED)
    weekly = submit.schedule_nightly(None, package, cron="0 0 3 * * 0", job_name="weekly")
    client = submit.make_client()

    listed = submit.list_schedules(client)
    assert [(s.name, s.recurring_run_id) for s in listed] == [
        (submit.DEFAULT_JOB_NAME, nightly),
        ("weekly", weekly),
    ]
    first = listed[0]
    assert (first.enabled, first.cron, first.max_concurrency, first.catchup) == (
        True,
        "0 0 2 * * *",
        1,
        False,
    )
    assert (first.data.version, first.data.registry) == ("v2", "https://git.example/cxr-data.git")
    assert listed[1].data.version == "v1"  # the package's own configuration

    kfp_api.requests.clear()
    assert not submit.change_schedule(client, "disable", submit.DEFAULT_JOB_NAME).enabled
    assert one(kfp_api, "POST", f"/recurringruns/{nightly}:disable").body is None
    assert kfp_api.recurring_runs[nightly]["status"] == "DISABLED"
    assert submit.change_schedule(client, "enable", nightly).enabled  # by id
    one(kfp_api, "POST", f"/recurringruns/{nightly}:enable")
    assert submit.change_schedule(client, "delete", "weekly").recurring_run_id == weekly
    one(kfp_api, "DELETE", f"/recurringruns/{weekly}")
    assert [s.name for s in submit.list_schedules(client)] == [submit.DEFAULT_JOB_NAME]

    with pytest.raises(LookupError, match=r"no recurring run named 'weekly'.*there: cxrflow-"):
        submit.change_schedule(client, "disable", "weekly")
    with pytest.raises(LookupError, match="no KFP experiment named 'other'"):
        submit.change_schedule(client, "delete", submit.DEFAULT_JOB_NAME, experiment="other")
    assert submit.list_schedules(client, "other") == []
    # two schedules of one name (made past cxrflow): the name is ambiguous, each id is not
    client.create_recurring_run(
        experiment_id=kfp_api.recurring_runs[nightly]["experiment_id"],
        job_name=submit.DEFAULT_JOB_NAME,
        cron_expression="0 0 4 * * *",
        pipeline_package_path=str(package),
    )
    with pytest.raises(ValueError, match=f"2 recurring runs are named .*{nightly}"):
        submit.change_schedule(client, "delete", submit.DEFAULT_JOB_NAME)
    assert not submit.change_schedule(client, "disable", nightly).enabled


# -------------------------------------------------------------------------------- runs


def test_list_runs_shows_state_and_data_version_newest_first(
    package: Path, kfp_api: KfpApiDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned = submit.submit_run(None, package, PINNED, run_name="pinned")
    job = submit.schedule_nightly(None, package)
    scheduled = kfp_api.fire(job)
    client = submit.make_client()
    # a run started past cxrflow, without arguments: the package's default applies
    bare = client.create_run_from_pipeline_package(
        str(package), run_name="bare", experiment_name=submit.DEFAULT_EXPERIMENT
    ).run_id
    kfp_api.set_run_state(pinned, "SUCCEEDED")
    kfp_api.set_run_state(scheduled, "RUNNING")

    monkeypatch.setattr(submit, "_PAGE_SIZE", 2)  # so that 3 runs take two pages
    kfp_api.requests.clear()
    runs = submit.list_runs(client, limit=3)
    assert [(r.name, r.state, r.data.version) for r in runs] == [
        ("bare", "PENDING", "v1"),
        (f"{submit.DEFAULT_JOB_NAME}-1", "RUNNING", "v1"),
        ("pinned", "SUCCEEDED", "v2"),
    ]
    assert [r.run_id for r in runs] == [bare, scheduled, pinned]
    assert runs[1].recurring_run_id == job
    assert runs[0].finished_at is None  # the API's 1970 means "not finished"
    assert runs[2].finished_at is not None and runs[2].created_at is not None
    assert runs[2].finished_at > runs[2].created_at
    pages = kfp_api.sent("GET", "/runs")
    assert [(p.query["page_size"], p.query["page_token"] != "") for p in pages] == [
        ("2", False),
        ("1", True),
    ]
    assert {p.query["sort_by"] for p in pages} == {"created_at desc"}
    assert {p.query["experiment_id"] for p in pages} == {kfp_api.runs[bare]["experiment_id"]}
    assert [r.name for r in submit.list_runs(client, limit=1)] == ["bare"]
    assert submit.list_runs(client, "never-used") == []
    with pytest.raises(ValueError, match="limit"):
        submit.list_runs(client, limit=0)


# ------------------------------------------------------------------ connection and auth


def test_host_comes_from_flag_or_env_never_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (submit.HOST_ENV, submit.KUBE_CONTEXT_ENV):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="KFP_HOST"):
        submit.make_client(None)
    with pytest.raises(ValueError, match="not both"):
        submit.make_client("http://localhost:8080", kube_context="lab")
    source = (ROOT / "pipelines" / "submit.py").read_text()
    assert not re.search(r"https?://(?!localhost:8080\b)[\w.-]+", source.split('"""', 2)[2])


def test_a_wrong_token_or_no_server_is_a_one_line_error(
    package: Path, kfp_api: KfpApiDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    kfp_api.token = "right"
    monkeypatch.setenv(submit.TOKEN_ENV, "wrong")
    monkeypatch.setenv(submit.NAMESPACE_ENV, "team-a")  # else kfp retries healthz for 25 s
    with pytest.raises(submit.KfpApiError, match=r"^KFP API answered 401 Unauthorized: Unauth"):
        submit.submit_run(None, package)
    assert one(kfp_api, "GET", "/experiments").headers["authorization"] == "Bearer wrong"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(submit.KfpApiError, match="cannot reach the KFP API"):
        submit.list_runs(submit.make_client(closed))


def _kubeconfig(path: Path, server: str) -> Path:
    user = {"token": "kube-token"}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "other",
        "clusters": [{"name": "lab", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": user}],
        "contexts": [
            {"name": name, "context": {"cluster": "lab", "user": "me"}} for name in ("lab", "other")
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_kube_context_reaches_kfp_through_the_api_server_proxy(
    kfp_api: KfpApiDouble, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import kubernetes.config.kube_config as kube_config

    # KUBECONFIG is read when kubernetes is imported (by kfp), so point the loaded default
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", kfp_api.url)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv(submit.HOST_ENV)
    monkeypatch.setenv(submit.TOKEN_ENV, "not-for-kubeconfig")
    monkeypatch.setenv(submit.KUBE_CONTEXT_ENV, "lab")
    client = submit.make_client(namespace="team-a")
    assert submit.list_runs(client, namespace="team-a") == []
    (lookup,) = kfp_api.requests
    assert lookup.path == "/apis/v2beta1/experiments"
    assert lookup.proxy_namespace == "kubeflow"  # /api/v1/namespaces/kubeflow/services/...
    assert lookup.headers["authorization"] == "Bearer kube-token"
    assert lookup.query["namespace"] == "team-a"
    with pytest.raises(ValueError, match=r"'nope' is not in the kubeconfig \(contexts: lab, other"):
        submit.make_client(kube_context="nope")


@pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")
def test_kfp_clients_own_kubeconfig_route_still_drops_the_proxy_path(
    kfp_api: KfpApiDouble, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Why make_client resolves the kubeconfig itself (kubeflow/pipelines#8313): when this
    fails, kfp.Client(kube_context=...) works for token users and the workaround can go."""
    import kubernetes.config.kube_config as kube_config

    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", kfp_api.url)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    kfp.Client(kube_context="lab", namespace="kubeflow").list_experiments(namespace="team-a")
    assert {r.proxy_namespace for r in kfp_api.requests} == {None}


# ---------------------------------------------------------------------------------- CLI


def test_cli_schedule_lifecycle_and_runs(
    package: Path,
    kfp_api: KfpApiDouble,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cxrflow.cli import main

    monkeypatch.setenv(submit.TOKEN_ENV, "cli-token")
    pkg = str(package)
    host = ["--host", kfp_api.url, "--namespace", "team-a"]
    monkeypatch.delenv(submit.HOST_ENV)  # the flag, not the environment

    assert main(["--set", "train.epochs=3", "pipeline", "submit", "--package", pkg, *host]) == 0
    assert f"run id: {next(iter(kfp_api.runs))}" in capsys.readouterr().out
    assert sent_params(one(kfp_api, "POST", "/runs").body).train.epochs == 3

    rc = main(
        [
            *("--set", "train.epochs=5", "pipeline", "schedule", "create", "--package", pkg),
            *("--cron", "0 30 1 * * *", "--max-concurrency", "2", *host),
        ]
    )
    assert rc == 0
    (job_id,) = kfp_api.recurring_runs
    assert f"recurring run id: {job_id}" in capsys.readouterr().out
    body = one(kfp_api, "POST", "/recurringruns").body
    assert body["trigger"]["cron_schedule"]["cron"] == "0 30 1 * * *"
    assert (body["max_concurrency"], body["no_catchup"]) == (2, True)
    assert sent_params(body).train.epochs == 5

    assert main(["pipeline", "schedule", "disable", "cxrflow-nightly", *host]) == 0
    assert capsys.readouterr().out.strip() == f"recurring run cxrflow-nightly ({job_id}): disabled"
    one(kfp_api, "POST", f"/recurringruns/{job_id}:disable")
    assert main(["pipeline", "schedule", "list", *host]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "status", "cron", "max", "catchup", "data", "id"]
    row = ["cxrflow-nightly", "disabled", "0", "30", "1", "*", "*", "*", "2", "no", "v1"]
    assert table[1].split() == [*row, job_id]
    assert main(["pipeline", "schedule", "enable", job_id, *host]) == 0
    one(kfp_api, "POST", f"/recurringruns/{job_id}:enable")
    capsys.readouterr()

    kfp_api.set_run_state(kfp_api.fire(job_id), "FAILED")
    assert main(["pipeline", "runs", "--limit", "5", *host]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["run", "state", "created"]
    assert table[1].split()[:2] == ["cxrflow-nightly-1", "FAILED"]
    assert table[1].split()[-1] == "v1"
    assert len(table) == 3
    assert main(["pipeline", "runs", "--json", *host]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert runs[0]["state"] == "FAILED" and runs[0]["recurring_run_id"] == job_id

    assert main(["pipeline", "schedule", "delete", "cxrflow-nightly", *host]) == 0
    one(kfp_api, "DELETE", f"/recurringruns/{job_id}")
    assert kfp_api.recurring_runs == {}
    capsys.readouterr()
    assert {r.headers["authorization"] for r in kfp_api.requests} == {"Bearer cli-token"}
    lookups = kfp_api.sent("GET", "/experiments")
    assert lookups and {r.query["namespace"] for r in lookups} == {"team-a"}


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["schedule", "create", "--cron", "0 2 * * *"], ["6 fields", "'0 0 2 * * *'"]),
        (["schedule", "disable", "nope"], ["no KFP experiment named 'cxrflow'"]),
        (["runs", "--limit", "0"], ["limit must be >= 1"]),
        (["runs", "--host", "http://127.0.0.1:9"], ["cannot reach the KFP API"]),
        (["runs", "--kube-context", "lab"], ["--host or --kube-context, not both"]),
    ],
)
def test_cli_errors_are_one_line(
    package: Path,
    kfp_api: KfpApiDouble,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    needles: list[str],
) -> None:
    from cxrflow.cli import main

    if args[0] == "schedule" and args[1] == "create":
        args = [*args, "--package", str(package)]
    if args[-1] == "lab":
        args = [*args, "--host", kfp_api.url]
    assert main(["pipeline", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrflow: error:") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err


def test_cli_profile_with_package_is_refused(
    package: Path, kfp_api: KfpApiDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    from cxrflow.cli import main

    rc = main(["--profile", "demo", "pipeline", "submit", "--package", str(package)])
    assert rc == 2 and "--profile applies when compiling" in capsys.readouterr().err
    assert kfp_api.requests == []


def test_installed_cli_lists_schedules_with_host_and_token_from_env(
    package: Path, kfp_api: KfpApiDouble, tmp_path: Path
) -> None:
    job_id = submit.schedule_nightly(None, package, namespace="team-b")
    kfp_api.requests.clear()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KFP_", "KF_PIPELINES_"))},
        "KFP_HOST": kfp_api.url,
        "KFP_TOKEN": "env-token",
        "KFP_NAMESPACE": "team-b",
        "HOME": str(tmp_path),  # no ~/.config/kfp/context.json of the developer's
    }
    res = subprocess.run(
        [sys.executable, "-m", "cxrflow.cli", "pipeline", "schedule", "list", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert [s["recurring_run_id"] for s in json.loads(res.stdout)] == [job_id]
    assert one(kfp_api, "GET", "/experiments").query["namespace"] == "team-b"
    one(kfp_api, "GET", "/recurringruns")
    assert {r.headers["authorization"] for r in kfp_api.requests} == {"Bearer env-token"}
