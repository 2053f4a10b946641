"""What users of a Typer tool expect of ``cxrflow``: --version, -h everywhere, completion,
environment variables shown in --help, a fixed choice for --format, a hint for a global option
given after the command; and the ``pipeline`` group arriving through its entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import typer

from cxrflow.cli import main

ROOT = Path(__file__).resolve().parents[2]
PARAMS = str(ROOT / "params.yaml")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"cxrflow {metadata.version('cxrflow')}\n"


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["params"],
        ["params", "show"],
        ["data", "versions"],
        ["train"],
        ["pipeline"],
        ["pipeline", "schedule"],
        ["pipeline", "schedule", "create"],
    ],
)
def test_short_and_long_help_everywhere(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = []
    for flag in ("-h", "--help"):
        assert main([*command, flag]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"Usage: {' '.join(['cxrflow', *command])} "), out
        outputs.append(out)
    assert outputs[0] == outputs[1]


def test_help_names_the_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    root = capsys.readouterr().out
    for name in ("CXRFLOW_PARAMS", "CXRFLOW_PROFILE", "CXRFLOW_DEBUG", "--install-completion"):
        assert name in root
    for command in (["submit"], ["runs"], ["schedule", "create"], ["schedule", "list"]):
        assert main(["pipeline", *command, "--help"]) == 0
        out = capsys.readouterr().out
        for name in ("KFP_HOST", "KFP_NAMESPACE", "KFP_KUBE_CONTEXT"):
            assert f"env var: {name}" in out, (command, name)


def test_profile_and_params_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml here: CXRFLOW_PARAMS must be read
    monkeypatch.setenv("CXRFLOW_PARAMS", PARAMS)
    monkeypatch.setenv("CXRFLOW_PROFILE", "smoke")
    assert main(["params", "show"]) == 0
    assert json.loads(capsys.readouterr().out)["profile"] == "smoke"
    assert main(["--profile", "demo", "params", "show"]) == 0  # the option wins
    assert json.loads(capsys.readouterr().out)["profile"] == "demo"


def test_format_is_a_fixed_choice(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--params", PARAMS, "params", "show", "--format", "xml"]) == 2
    err = capsys.readouterr().err
    assert "'xml' is not one of 'json', 'yaml'" in err
    assert main(["params", "show", "--help"]) == 0
    assert "<json|yaml>" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (
            ["params", "show", "--set", "train.epochs=3"],
            "--set is a global option: put it before the command: "
            "cxrflow --set train.epochs=3 params show",
        ),
        (
            ["params", "show", "--profile", "smoke"],
            "--profile is a global option: put it before the command: "
            "cxrflow --profile smoke params show",
        ),
        (
            ["params", "show", "--params=p.yaml"],
            "--params is a global option: put it before the command: "
            "cxrflow --params=p.yaml params show",
        ),
        (
            ["pipeline", "compile", "--output", "x.yaml", "--debug"],
            "--debug is a global option: put it before the command: "
            "cxrflow --debug pipeline compile --output x.yaml",
        ),
        (
            ["params", "show", "--set", "data.sources={k: [a b]}"],
            "--set is a global option: put it before the command: "
            "cxrflow --set 'data.sources={k: [a b]}' params show",
        ),
    ],
)
def test_a_global_option_after_the_command_gets_a_one_line_hint(
    args: list[str], hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert capsys.readouterr().err == f"cxrflow: error: {hint}\n"


def test_an_unknown_option_keeps_the_usage_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "show", "--nope"]) == 2
    assert "No such option: --nope" in capsys.readouterr().err


def test_the_pipeline_group_is_an_entry_point_of_the_pipelines_package() -> None:
    (ep,) = [e for e in metadata.entry_points(group="cxrflow.cli") if e.name == "pipeline"]
    assert ep.value == "pipelines.cli:pipeline_app"
    from pipelines.cli import pipeline_app

    assert ep.load() is pipeline_app


def test_a_broken_plugin_leaves_the_rest_working(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cxrflow.cli import program as program

    broken = metadata.EntryPoint("broken", "no_such_module_xyz:app", program.PLUGIN_GROUP)
    monkeypatch.setattr(program.metadata, "entry_points", lambda group: [broken])
    root = typer.Typer()
    assert program.mount_plugins(root) == []
    err = capsys.readouterr().err
    assert err.startswith("cxrflow: warning: commands 'broken' (no_such_module_xyz:app)")
    assert err.count("\n") == 1


def test_help_with_the_plugins_imports_no_heavy_library() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from cxrflow.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    rc = main(['--help'])\n"
        "assert rc == 0 and 'pipeline' in out.getvalue(), out.getvalue()\n"
        "heavy = ('tensorflow', 'mlflow', 'great_expectations', 'kfp')\n"
        "print([m for m in sys.modules if m.split('.')[0] in heavy])\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_shell_completion_completes_commands_of_the_plugins(tmp_path: Path) -> None:
    env = {**os.environ, "_CXRFLOW_COMPLETE": "complete_bash", "COMP_CWORD": "2"}
    res = subprocess.run(
        [sys.executable, "-m", "cxrflow.cli"],
        env={**env, "COMP_WORDS": "cxrflow pipeline s"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert set(res.stdout.split()) == {"submit", "schedule"}


def test_kfp_options_declare_the_variables_pipelines_submit_reads() -> None:
    from pipelines import cli, submit

    assert cli.HOST_ENV == submit.HOST_ENV
    assert cli.NAMESPACE_ENV == submit.NAMESPACE_ENV
    assert cli.SERVICE_ACCOUNT_ENV == submit.SERVICE_ACCOUNT_ENV
    assert cli.KUBE_CONTEXT_ENV == submit.KUBE_CONTEXT_ENV


def test_kfp_variables_keep_the_precedence_of_pipelines_submit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--kube-context`` with KFP_HOST set goes through the context: the environment is
    pipelines.submit's to read, after the arguments."""
    from pipelines import submit

    seen: list[tuple[str | None, str | None, str | None]] = []

    def make_client(host: str | None, namespace: str | None, kube_context: str | None) -> None:
        seen.append((host, namespace, kube_context))
        raise LookupError("stop here")

    monkeypatch.setattr(submit, "make_client", make_client)
    monkeypatch.setenv("KFP_HOST", "http://from-env:8888")
    monkeypatch.setenv("KFP_NAMESPACE", "team-env")
    assert main(["pipeline", "runs", "--kube-context", "lab"]) == 2
    assert main(["pipeline", "runs", "--host", "http://flag:1", "--namespace", "team-a"]) == 2
    assert seen == [(None, None, "lab"), ("http://flag:1", "team-a", None)]
    assert capsys.readouterr().err.count("cxrflow: error: stop here") == 2


def test_tensorflow_start_up_lines_below_the_level_are_dropped(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from cxrflow.cli.tensorflow_log import filtered_stderr, keep_line

    notice = "WARNING: All log messages before absl::InitializeLog() is called are written\n"
    info = "I0000 00:00:1796592385.185166    5751 port.cc:153] oneDNN custom operations are on\n"
    warning = "W0000 00:00:1796592385.185166    5751 foo.cc:1] a warning\n"
    error = "E1206 21:26:32.123456    5751 bar.cc:2] an error\n"
    assert [keep_line(x, 2) for x in (notice, info, warning, error, "plain\n")] == [
        False,
        False,
        False,
        True,
        True,
    ]
    assert all(keep_line(x, 0) for x in (notice, info, warning, error))
    with filtered_stderr(2):
        os.write(2, (notice + info + "python says hi\n" + error).encode())
        print("stdout untouched", flush=True)
    out, err = capfd.readouterr()
    assert err == "python says hi\n" + error
    assert out == "stdout untouched\n"
